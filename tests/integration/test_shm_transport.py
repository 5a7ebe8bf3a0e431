"""Large arguments and results travel through shared memory on this machine (``nbpool._shm``):
the same values as through the socket, every segment closed once its chunk is back, and
nothing left behind when a worker is killed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time

import pytest
from proc_util import dev_shm_files, wait_until

import nbpool
from nbpool import _shm
from nbpool._worker.runner import MAX_LENT

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
    """Workers' segments this process maps: its results (the arena's own are not counted)."""
    own = f"memfd:nbpool-{os.getpid()}-"
    with open("/proc/self/maps") as fh:
        return sum(bool(SEGMENT.search(line)) and own not in line for line in fh)


def _echo(a):
    return a


def _scaled(a, k):
    return a * k, float(a.sum())


def _segment_names(pid: int = 0) -> set[str]:
    """The names of the nbpool segments a process holds open, or (``pid`` 0) the workers'
    segments this process maps."""
    names = set()
    if pid:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                names.update(SEGMENT_NAME.findall(os.readlink(f"/proc/{pid}/fd/{fd}")))
    else:
        with open("/proc/self/maps") as fh:
            names.update(SEGMENT_NAME.findall(fh.read()))
        names = {n for n in names if not n.startswith(f"nbpool-{os.getpid()}-")}
    return names


SEGMENT_NAME = re.compile(r"memfd:(nbpool-\d+-\d+)")


def _keep_first(state, a):
    """Keeps its first argument in the worker's state; says whether that array still holds
    what it held when it came."""
    if "kept" not in state:
        state["kept"] = (a, a.copy())
    kept, copy = state["kept"]
    return bool(np.array_equal(kept, copy)), float(a.sum())


def _negate_and_sum(a):
    a *= -1.0  # (written in the worker: copied on write there, never seen by anyone else)
    return float(a.sum())


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
        # argument segments are closed when their chunks are back, or kept for later
        # arguments (_shm.Arena: a few fds at most) ...
        assert _open_segments() - before <= 2 * _shm.Arena.MAX_FREE
        # ... and each worker keeps a few of its result segments open, for later results
        pids = pool._engine.worker_pids()
        assert wait_until(lambda: all(_open_segments(p) <= 2 * MAX_LENT for p in pids))
        # the results the caller keeps are mapped (no copy) and hold no fd, so thousands of
        # them cannot meet the fd limit
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


def test_argument_memory_is_reused_once_the_worker_holds_none_of_it(engine):
    arrays = [np.full(300_000, float(k)) for k in range(8)]  # 2.4 MB each
    sums = [float(a.sum()) for a in arrays]
    with nbpool.Pool(1, **engine) as pool:
        assert pool.map(_negate_and_sum, arrays, 1) == [-x for x in sums]
        first = _segment_names(os.getpid())
        # the same memory carries the next arguments: what a task wrote to its copy is gone
        assert pool.map(_negate_and_sum, arrays, 1) == [-x for x in sums]
        assert first and _segment_names(os.getpid()) == first
        assert all(a[0] == k for k, a in enumerate(arrays))  # the caller's arrays: untouched
    assert _open_segments() == 0
    # a task that keeps an argument keeps its memory: later arguments go elsewhere
    with nbpool.Pool(1, use_worker_state=True, **engine) as pool:
        out = pool.map(_keep_first, arrays + arrays, 1)
        assert out == [(True, x) for x in sums + sums]
    assert _open_segments() == 0


def test_result_memory_is_reused_once_the_caller_dropped_the_result(engine):
    import gc

    n = 400_000  # 3.2 MB
    with nbpool.Pool(1, **engine) as pool:
        r = pool.apply(np.full, (n, 1.0))
        first = _segment_names()
        assert len(first) == 1 and r.sum() == n
        del r
        gc.collect()
        assert _segment_names() == set()
        kept = pool.apply(np.full, (n, 2.0))  # the same memory again ...
        assert _segment_names() == first
        other = pool.apply(np.full, (n, 3.0))  # ... but not while the caller maps it
        assert len(_segment_names()) == 2
        assert float(kept.sum()) == 2.0 * n and float(other.sum()) == 3.0 * n
    del kept, other
    gc.collect()
    assert _segment_names() == set()


def test_memory_kept_for_reuse_is_freed_when_unused(engine, monkeypatch):
    import gc

    monkeypatch.setenv("NBPOOL_SHM_KEEP_S", "0.5")  # (read by the pool and its workers)
    with nbpool.Pool(1, **engine) as pool:
        (pid,) = pool._engine.worker_pids()
        r = pool.apply(np.full, (400_000, 1.0))  # a large argument, and a large result
        assert pool.apply(_negate_and_sum, (r,)) == -400_000.0
        del r
        gc.collect()
        assert wait_until(lambda: _open_segments() == 0 and _open_segments(pid) == 0, 10)


def _ones_when_told(args):
    """Item 0 at once; the others once ``flag`` exists (5 s at most)."""
    i, flag = args
    deadline = time.monotonic() + 5
    while i and not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.005)
    return np.ones(400_000)


def test_results_nobody_reads_are_freed_in_the_worker(engine, monkeypatch, tmp_path):
    import gc

    monkeypatch.setenv("NBPOOL_SHM_KEEP_S", "0.5")
    flag = str(tmp_path / "go")
    with nbpool.Pool(1, **engine) as pool:
        (pid,) = pool._engine.worker_pids()
        it = pool.imap(_ones_when_told, [(i, flag) for i in range(4)], 1)
        first = next(it)
        del it  # cancels the rest: item 1 is running, and ends within the grace ...
        gc.collect()
        open(flag, "w").close()
        # ... so its results come back for a job nobody reads: the worker must not keep them
        time.sleep(0.3)
        del first
        gc.collect()
        assert wait_until(lambda: _open_segments(pid) == 0, 10)
        assert pool.apply(float, (3,)) == 3.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # (fork with threads, 3.12+)
def test_a_result_a_forked_child_still_maps_is_never_reused(engine):
    import gc

    n = 400_000
    with nbpool.Pool(1, **engine) as pool:
        r = pool.apply(np.full, (n, 1.0))
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its copy of r must keep what it held
            try:
                os.close(wfd)
                os.read(rfd, 1)
                os._exit(0 if bool((r == 1.0).all()) else 7)
            finally:
                os._exit(9)
        os.close(rfd)
        try:
            del r  # unmapped here, but not in the child
            gc.collect()
            other = pool.apply(np.full, (n, 2.0))
            assert float(other.sum()) == 2.0 * n
        finally:
            os.write(wfd, b"x")
            os.close(wfd)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
