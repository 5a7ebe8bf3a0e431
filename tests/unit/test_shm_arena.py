"""The caller's arena of shared-memory segments (``nbpool._shm.Arena``): which free segment a
buffer gets, what is kept, and ``NBPOOL_SHM_KEEP_S``."""

from __future__ import annotations

import os

import pytest

from nbpool import _shm

pytestmark = pytest.mark.skipif(not _shm.available(), reason="memfd and /proc")


def _segments(*sizes: int) -> list[bytes]:
    return [bytes([k % 256]) * n for k, n in enumerate(sizes)]


def test_a_free_segment_is_reused_only_by_a_buffer_it_fits_without_waste():
    arena = _shm.Arena(cap=64 << 20)
    mib = 1 << 20
    out, segs = _shm.share(_segments(4 * mib), arena)
    assert out == [b""] and segs is not None
    ((seg, _),) = segs.segs.values()
    segs.recycle(arena)
    assert arena.free == [seg] and arena.size == 4 * mib
    # too large, or less than half of it: a fresh one
    for n in (5 * mib, 2 * mib - 1):
        _, other = _shm.share(_segments(n), arena)
        assert other is not None and next(iter(other.segs.values()))[0] is not seg
        other.close()
    _, again = _shm.share([b"\x07" * (3 * mib)], arena)  # fits: reused, its new bytes in place
    assert again is not None and next(iter(again.segs.values()))[0] is seg
    assert os.pread(seg.fd, 3 * mib, 0) == b"\x07" * (3 * mib)
    again.close()
    assert arena.free == [] and arena.size == 0
    arena.close()


def test_the_free_segments_are_bounded_and_closed_when_unused(monkeypatch):
    mib = 1 << 20
    arena = _shm.Arena(cap=3 * mib)
    _, segs = _shm.share(_segments(mib, mib, mib, mib), arena)
    assert segs is not None
    fds = [seg.fd for seg, _ in segs.segs.values()]
    segs.recycle(arena)
    assert len(arena.free) == 3 and arena.size == 3 * mib  # the oldest went
    closed = [fd for fd in fds if not os.path.exists(f"/proc/self/fd/{fd}")]
    assert closed == fds[:1]
    arena.keep_s = 0.0
    assert arena.trim() is False and arena.free == [] and arena.size == 0


@pytest.mark.parametrize(
    ("value", "keep"),
    [("0", 0.0), ("2.5", 2.5), ("3600", 3600.0), ("-1", 10.0), ("inf", 10.0), ("x", 10.0)],
)
def test_keep_s_comes_from_the_environment_within_bounds(monkeypatch, value, keep):
    monkeypatch.setenv("NBPOOL_SHM_KEEP_S", value)
    assert _shm.Arena(cap=1).keep_s == keep
