"""nbpool.Pool side by side with multiprocessing.Pool (spawn): same results, same errors."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import operator
import os
import threading
import time

import nbfuncs as f
import pytest

import nbpool


@pytest.fixture(scope="module")
def std():
    p = multiprocessing.get_context("spawn").Pool(2)
    yield p
    # close + join, not terminate: the stdlib's terminate() can deadlock in
    # _help_stuff_finish when a worker holds the task queue's read lock (seen here).
    p.close()
    p.join()


@pytest.fixture
def nb():
    with nbpool.Pool(2) as p:
        yield p


CALLS = [
    ("map", lambda p: p.map(f.sq, range(100))),
    ("map chunksize", lambda p: p.map(f.sq, list(range(50)), 7)),
    ("map empty", lambda p: p.map(f.sq, [])),
    ("map generator", lambda p: p.map(f.sq, (i for i in range(30)))),
    ("map_async", lambda p: p.map_async(f.sq, range(20)).get(30)),
    ("starmap", lambda p: p.starmap(f.add, [(1, 2), (3, 4), (5, 6)])),
    ("starmap_async", lambda p: p.starmap_async(operator.mul, [(2, 3)] * 5, 2).get(30)),
    ("apply", lambda p: p.apply(f.kw, (1,), {"b": 2, "c": 3})),
    ("apply_async", lambda p: p.apply_async(f.add, (2, 3)).get(30)),
    ("apply builtin", lambda p: p.apply(pow, (2, 10))),
    ("imap", lambda p: list(p.imap(f.sq, range(25)))),
    ("imap chunksize", lambda p: list(p.imap(f.sq, iter(range(25)), 4))),
    ("imap_unordered", lambda p: sorted(p.imap_unordered(f.sq, range(25)))),
    ("imap_unordered chunks", lambda p: sorted(p.imap_unordered(f.sq, range(25), 3))),
    ("imap empty", lambda p: list(p.imap(f.sq, []))),
]


@pytest.mark.smoke
@pytest.mark.parametrize("name,call", CALLS, ids=[c[0] for c in CALLS])
def test_same_results(std, nb, name, call):
    expected = call(std)
    got = call(nb)
    assert got == expected
    assert type(got) is type(expected)


def test_async_result_api(std, nb):
    for p in (std, nb):
        r = p.apply_async(f.slow, (1, 0.3))
        with pytest.raises(ValueError):
            r.successful()  # not ready yet
        assert not r.ready()
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(0.01)
        r.wait(30)
        assert r.ready() and r.successful() and r.get() == 1


def test_callbacks(nb):
    got, errors, done = [], [], threading.Event()
    nb.map_async(f.sq, range(5), callback=got.append).get(30)
    assert got == [[0, 1, 4, 9, 16]]
    r = nb.apply_async(f.fail_on, (3,), error_callback=lambda e: (errors.append(e), done.set()))
    with pytest.raises(ValueError):
        r.get(30)
    assert done.wait(5) and isinstance(errors[0], ValueError)
    assert not r.successful()


def test_worker_exception_type_and_cause(std, nb):
    for p in (std, nb):
        with pytest.raises(ValueError, match="bad value 3") as info:
            p.map(f.fail_on, range(6), 1)
        cause = info.value.__cause__
        assert cause is not None and "bad value 3" in str(cause)
        assert "fail_on" in str(cause)  # the remote traceback names the failing function
    with pytest.raises(ValueError) as info:
        nb.apply(f.fail_on, (3,))
    head = str(info.value.__cause__)
    assert "Worker " in head and "(pid " in head and "item 0" in head
    assert isinstance(info.value.__cause__, nbpool.RemoteTraceback)


def test_imap_continues_after_a_failing_item(nb):
    it = nb.imap(f.fail_on, range(6), 1)
    assert [next(it) for _ in range(3)] == [0, 10, 20]
    with pytest.raises(ValueError):
        next(it)
    assert list(it) == [40, 50]


def test_iterable_exception_reaches_caller_unchanged(std, nb):
    marker = KeyError("from the iterable")

    def gen():
        yield 1
        yield 2
        raise marker

    for p in (std, nb):
        with pytest.raises(KeyError) as info:
            p.map(f.sq, gen())
        assert info.value is marker
        it = p.imap(f.sq, gen())
        assert next(it) == 1 and next(it) == 4
        with pytest.raises(KeyError):
            next(it)


def test_imap_next_timeout(nb):
    it = nb.imap(f.slow, [0.5], 1)
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.01)
    assert it.next(timeout=30) == 0.5


@pytest.mark.smoke
def test_argument_errors():
    ctx = multiprocessing.get_context("spawn")
    for make in (ctx.Pool, nbpool.Pool):
        with pytest.raises(ValueError):
            make(0)
        with pytest.raises(ValueError):
            make(1, maxtasksperchild=0)
        with pytest.raises(TypeError):
            make(1, initializer=5)
    with pytest.raises(ValueError, match="serializer"):
        nbpool.Pool(1, serializer="json")
    with nbpool.Pool(1) as p:
        with pytest.raises(ValueError, match="Chunksize"):
            p.map(f.sq, range(3), 0)
        with pytest.raises(TypeError):
            p.map(f.sq, 5)
        with pytest.raises(TypeError, match="callable"):
            p.apply(5)


@pytest.mark.smoke
def test_state_rules():
    ctx = multiprocessing.get_context("spawn")
    for make in (ctx.Pool, nbpool.Pool):
        p = make(1)
        with pytest.raises(ValueError):
            p.join()  # still running
        p.close()
        for call in (
            lambda p=p: p.map(f.sq, [1]),
            lambda p=p: p.apply(f.sq, (1,)),
            lambda p=p: p.imap(f.sq, [1]),
            lambda p=p: p.apply_async(f.sq, (1,)),
        ):
            with pytest.raises(ValueError):
                call()
        p.join()
        p.terminate()
    with pytest.raises(nbpool.PoolClosedError, match="Pool not running"):
        p.map(f.sq, [1])


def test_close_join_finishes_work():
    p = nbpool.Pool(2)
    r = p.map_async(f.slow, [0.2] * 4, 1)
    p.close()
    p.join()
    assert r.get(0) == [0.2] * 4


def test_terminate_fails_pending_results():
    p = nbpool.Pool(1)
    r = p.map_async(f.slow, [0.2] * 20, 1)
    time.sleep(0.3)
    p.terminate()
    with pytest.raises(nbpool.PoolClosedError):
        r.get(10)
    p.join()


def test_context_manager_terminates():
    with nbpool.Pool(2) as p:
        pids = p._engine.worker_pids()
        assert p.map(f.pid, range(4), 1)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    """Running: a forked worker that exited stays a zombie until the fork server reaps it (it
    does so once the caller has read its exit code), which is not running."""
    from proc_util import alive

    return alive(pid)


def test_initializer_and_initargs():
    with nbpool.Pool(2, initializer=f.init_state, initargs=(42,)) as p:
        assert p.map(f.read_state, range(4), 1) == [42] * 4


def test_initializer_failure_fails_items_not_pool():
    with nbpool.Pool(1, initializer=f.bad_initializer) as p:
        with pytest.raises(RuntimeError, match="initializer exploded"):
            p.map(f.sq, range(3))


def test_maxtasksperchild_counts_items():
    with nbpool.Pool(1, maxtasksperchild=2) as p:
        pids = p.map(f.pid, range(6), 1)
    assert len(set(pids)) == 3
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]


def test_workers_see_cwd_env_and_sys_path(tmp_path, monkeypatch):
    (tmp_path / "nextdoor.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBPOOL_TEST_MARKER", "here")
    monkeypatch.syspath_prepend(str(tmp_path))
    import nextdoor

    with nbpool.Pool(1) as p:
        assert p.apply(f.cwd_and_env) == (str(tmp_path), "here")
        assert p.map(nextdoor.triple, [1, 2]) == [3, 6]


def test_fork_context_is_ignored_with_a_warning():
    with pytest.warns(RuntimeWarning, match="never forks"):
        p = nbpool.Pool(1, context=multiprocessing.get_context("fork"))
    with p:
        assert p.apply(f.pid) != os.getpid()
    with nbpool.Pool(1, context=multiprocessing.get_context("spawn")) as p:
        assert p.apply(f.sq, (3,)) == 9


def test_garbage_collected_pool_stops_its_workers():
    import gc

    p = nbpool.Pool(2)
    pids = p._engine.worker_pids()
    engine = p._engine
    with pytest.warns(ResourceWarning):
        del p
        gc.collect()
    engine.join(10)
    assert not engine.is_alive()
    assert not any(_alive(pid) for pid in pids)


def test_many_concurrent_apply_async(nb):
    results = [nb.apply_async(f.add, (i, i)) for i in range(500)]
    assert [r.get(30) for r in results] == [2 * i for i in range(500)]


def test_large_numpy_arrays_round_trip(nb):
    np = pytest.importorskip("numpy")
    arrays = [np.full(3_000_000, i, dtype=np.float64) for i in range(3)]
    out = nb.map(f.identity, arrays, 1)
    for a, b in zip(arrays, out, strict=True):
        assert np.array_equal(a, b)
        assert b.flags.writeable
