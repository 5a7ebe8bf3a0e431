"""One Pool, every engine: the same tests on the local engine and on a real Ray cluster.

The core run (``make test``'s first pytest) runs them on the local engine only; the Ray run
(``pytest tests/parity tests/ray --engines=ray``) on a Ray head started on 127.0.0.1.
"""

from __future__ import annotations

import collections
import functools
import os
import signal
import threading
import time

import nbfuncs as f
import pytest
from conftest import on_cluster

import nbpool
from nbpool._progress import JobProgress


class Boom(Exception):
    """An exception type of the caller's own (this module is shipped by value)."""


def _raise_boom(x):
    if x == 2:
        raise Boom(f"bad item {x}")
    return x


def test_every_pool_method(engine):
    with nbpool.Pool(2, **engine) as pool:
        assert pool.map(f.sq, range(50)) == [x * x for x in range(50)]
        assert pool.map(f.sq, range(50), 7) == [x * x for x in range(50)]
        assert pool.map_async(f.sq, range(10)).get(60) == [x * x for x in range(10)]
        assert pool.starmap(f.add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.starmap_async(f.add, [(5, 6)]).get(60) == [11]
        assert pool.apply(f.kw, (1,), {"b": 2, "c": 3}) == (1, 2, 3)
        assert pool.apply_async(pow, (2, 10)).get(60) == 1024
        assert list(pool.imap(f.sq, iter(range(20)), 3)) == [x * x for x in range(20)]
        assert sorted(pool.imap_unordered(f.sq, range(20))) == [x * x for x in range(20)]
        seen = []
        r = pool.apply_async(abs, (-4,), callback=seen.append)
        assert r.get(60) == 4 and seen == [4]
        errors = []
        r = pool.map_async(_raise_boom, range(4), error_callback=errors.append)
        with pytest.raises(Boom):
            r.get(60)
        assert isinstance(errors[0], Boom)


def test_notebook_code_lambdas_closures_and_classes(engine):
    k = 3

    class Point:
        def __init__(self, x):
            self.x = x

        def norm(self):
            return abs(self.x) * k

    with nbpool.Pool(2, **engine) as pool:
        assert pool.map(lambda x: x + k, [1, 2]) == [4, 5]
        assert pool.map(Point.norm, [Point(-1), Point(2)]) == [3, 6]
        got = pool.map(Point, [7])
        assert type(got[0]).__name__ == "Point" and got[0].x == 7


def test_initializer_runs_per_worker_and_sets_what_tasks_see(engine):
    with nbpool.Pool(2, initializer=f.init_state, initargs=(42,), **engine) as pool:
        assert pool.map(f.read_state, range(6), 1) == [42] * 6


def test_maxtasksperchild_counts_items_and_a_new_worker_runs_the_initializer(engine):
    with nbpool.Pool(
        2, maxtasksperchild=2, initializer=f.init_state, initargs=(7,), **engine
    ) as pool:
        got = pool.map(lambda x: (f.pid(), f.read_state()), range(8), 1)
    pids = collections.Counter(pid for pid, _ in got)
    assert sorted(pids.values()) == [2, 2, 2, 2]  # four workers, two items each
    assert {state for _, state in got} == {7}


def test_a_task_exception_keeps_its_type_and_the_remote_traceback(engine):
    with nbpool.Pool(2, **engine) as pool:
        with pytest.raises(Boom, match="bad item 2") as info:
            pool.map(_raise_boom, range(4), 1)
        cause = str(info.value.__cause__)
        assert "raised while running item 2" in cause
        assert "_raise_boom" in cause and "raise Boom" in cause
        pid = next(p for p in pool._engine.worker_pids() if f"pid {p}" in cause)
        assert pid
        if on_cluster(engine):
            assert " on 127.0.0.1" in cause


def test_a_dead_worker_fails_only_its_item_and_the_pool_goes_on(engine, tmp_path):
    with nbpool.Pool(2, **engine) as pool:
        pool.map(f.sq, range(2))  # both workers up (an actor's pid is known once it is)
        before = set(pool._engine.worker_pids())
        r = pool.map_async(functools.partial(f.die_at, bad=3), range(8), 1)
        with pytest.raises(nbpool.WorkerLostError) as info:
            r.get(60)
        err = info.value
        assert err.index == 3 and "item 3" in str(err)
        assert f"pid {err.pid}" in str(err) and err.pid in before
        assert err.host == ("127.0.0.1" if on_cluster(engine) else "")
        assert pool.map(f.sq, range(4)) == [0, 1, 4, 9]
        assert set(pool._engine.worker_pids()) != before  # the dead one was replaced
        # in a chunk of several items too (on Ray the items then run again one by one: which
        # one was running is known for sure only from a fresh poll)
        r = pool.map_async(functools.partial(f.die_at, bad=5, seconds=0.05), range(12), 4)
        with pytest.raises(nbpool.WorkerLostError) as info:
            r.get(60)
        assert info.value.index == 5
    with nbpool.Pool(2, retries=1, **engine) as pool:
        items = [(i, str(tmp_path / f"marker{i}")) for i in range(2)]
        assert pool.map(f.die_once, items, 1) == [0, 1]  # each died once, ran again


def test_task_timeout_fails_the_item_and_replaces_the_worker(engine):
    with nbpool.Pool(2, task_timeout=1.0, **engine) as pool:
        r = pool.map_async(f.nap, [0.01, 30, 0.01], 1)
        with pytest.raises(nbpool.TaskTimeoutError, match=r"task_timeout=1\.0"):
            r.get(60)
        assert pool.map(f.sq, [5]) == [25]


def test_an_interrupt_stops_running_items_and_the_pool_goes_on(engine):
    with nbpool.Pool(2, **engine) as pool:
        pool.map(f.sq, range(2))
        before = set(pool._engine.worker_pids())
        r = pool.map_async(f.nap, [20.0] * 4, 1)
        time.sleep(1.0)
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
        t0 = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            r.get(60)
        assert time.monotonic() - t0 < 2.5
        timer.join()
        assert pool.map(f.sq, [3]) == [9]  # warm again: the stopped workers were replaced
        assert not (set(pool._engine.worker_pids()) & before)


def test_worker_output_reaches_the_caller_tagged_with_worker(engine, capfd):
    with nbpool.Pool(2, **engine) as pool:
        assert pool.map(f.chatty, [1, 2], 1) == [1, 2]
        pids = pool._engine.worker_pids()
    out = capfd.readouterr().out
    lines = [line for line in out.splitlines() if " line 0 " in line]
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("[w") and any(f"pid {p}" in line for p in pids)
        if on_cluster(engine):
            assert "on 127.0.0.1]" in line
    assert out.count("item 1 line 49 ") == 1  # once, not once more through Ray's own logs


def test_dashboard_rows_show_each_worker(engine):
    with nbpool.Pool(2, **engine) as pool:
        pool.map(f.sq, range(10))
        deadline = time.monotonic() + 30  # both workers up (an actor's pid comes with it)
        while len(pool._engine.worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        snap = pool._engine._snapshot(
            None, time.monotonic(), "running", JobProgress(True, "text", None, "t")
        )
        rows = snap["workers"]
        assert len(rows) == 2
        assert {r["pid"] for r in rows} == set(pool._engine.worker_pids())
        assert all(r["host"] == ("127.0.0.1" if on_cluster(engine) else "") for r in rows)
