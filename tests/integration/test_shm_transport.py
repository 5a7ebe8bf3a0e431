"""Large arguments and results travel through shared memory on this machine (``nbpool._shm``):
the same values as through the socket, every segment closed once its chunk is back, and
nothing left behind when a worker is killed."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from proc_util import dev_shm_files, wait_until

import nbpool

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")

SEGMENT = re.compile(r"memfd:nbpool-\d")  # (not the workers' slots: memfd:nbpool-slot)


def _open_segments(pid: int = 0) -> int:
    """nbpool shared-memory segments a process holds open (fds)."""
    pid = pid or os.getpid()
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += bool(SEGMENT.search(os.readlink(f"/proc/{pid}/fd/{fd}")))
        except OSError:
            pass
    return n


def _mapped_segments() -> int:
    with open("/proc/self/maps") as fh:
        return sum(bool(SEGMENT.search(line)) for line in fh)


def _echo(a):
    return a


def _scaled(a, k):
    return a * k, float(a.sum())


def _sleep_then_sum(a):
    time.sleep(30)
    return float(a.sum())


def test_large_arguments_and_results_are_the_same_and_every_segment_is_closed(engine):
    arrays = [np.arange(i, i + 400_000, dtype=np.float64) for i in range(6)]  # 3.2 MB each
    small = [np.arange(10.0)] * 3  # under the threshold: through the socket
    before = _open_segments()
    with nbpool.Pool(2, **engine) as pool:
        out = pool.map(_echo, arrays + small, 1)
        for got, sent in zip(out, arrays + small, strict=True):
            assert got.dtype == sent.dtype and np.array_equal(got, sent)
        pairs = pool.starmap(_scaled, [(a, 2.0) for a in arrays], 2)
        assert all(np.array_equal(p[0], a * 2.0) for p, a in zip(pairs, arrays, strict=True))
        assert [p[1] for p in pairs] == [float(a.sum()) for a in arrays]
        # results are private copies: writing one changes nothing else
        out[0][0] = -1.0
        assert out[1][0] == 1.0 and arrays[0][0] == 0.0
        # argument segments are closed when their chunks are back ...
        assert _open_segments() == before
        # ... and each worker closes its result segments once the caller has mapped them
        pids = pool._engine.worker_pids()
        assert wait_until(lambda: all(_open_segments(p) == 0 for p in pids))
        # the results the caller keeps are mapped (no copy) and hold no fd (asserted above),
        # so thousands of them cannot meet the fd limit
        assert _mapped_segments() >= len(arrays)
        del out, pairs
        import gc

        gc.collect()
        assert _mapped_segments() == 0
    assert _open_segments() == before


def test_a_worker_killed_with_a_large_argument_leaves_no_segment(engine):
    before = _open_segments()
    shm_files = dev_shm_files()
    pool = nbpool.Pool(1, **engine)
    try:
        r = pool.apply_async(_sleep_then_sum, (np.ones(500_000),))
        # the argument's segment, open until its chunk is back
        assert wait_until(lambda: pool._engine.worker_pids() and _open_segments() == before + 1)
        time.sleep(0.5)  # (it is running the item)
        os.kill(pool._engine.worker_pids()[0], signal.SIGKILL)
        with pytest.raises(nbpool.WorkerLostError):
            r.get(30)
        assert _open_segments() == before
        assert pool.apply(float, (2,)) == 2.0  # the replacement works
    finally:
        pool.terminate()
        pool.join()
    assert _open_segments() == before
    assert dev_shm_files() - shm_files == set()


def test_results_outlive_the_pool_that_made_them_and_are_unmapped_when_dropped(engine):
    with nbpool.Pool(1, **engine) as pool:
        big = pool.apply(np.ones, (600_000,))  # 4.8 MB: mapped from the worker's memfd
        many = pool.map(np.zeros, [200_000] * 50, 5)  # 1.6 MB each: no fd held for any
        assert _open_segments() == 0 and _mapped_segments() >= 51
    # the pool and its worker are gone; the mappings keep the memory
    assert big.shape == (600_000,) and float(big.sum()) == 600_000.0
    big[0] = 5.0  # writable (copy-on-write)
    assert float(big.sum()) == 600_004.0 and not any(a.any() for a in many)
    del big, many
    import gc

    gc.collect()
    assert _mapped_segments() == 0
