"""``start_method="threading"``: the pool's API on threads of the caller (``_engines.threads``).

Nothing is pickled: tasks get the caller's objects themselves (unpicklable ones too) and the
notebook's live globals; the dispatcher's features (worker features, insights, cancel,
timeouts) are the same as on processes. What threads cannot do is refused up front.
"""

from __future__ import annotations

import threading
import time

import pytest

import nbpool

LOG: list[int] = []


def _append(x):
    LOG.append(x)  # the caller's own list: no copy in a worker
    return threading.current_thread().name, nbpool.current_worker().id


def test_tasks_get_the_callers_objects_themselves():
    lock = threading.Lock()  # unpicklable: fine, nothing is pickled
    data = {"k": [1, 2]}
    LOG.clear()
    with nbpool.Pool(3, start_method="threading") as pool:
        got = pool.map(_append, range(9), 1)
        assert sorted(LOG) == list(range(9))
        assert {wid for _, wid in got} == {0, 1, 2}
        assert all(name.startswith("nbpool-thread-worker-") for name, _ in got)
        assert pool.apply(lambda d, lk: d is data and lk is lock, (data, lock))
        assert pool.map(lambda lk: lk, [lock])[0] is lock  # results are not copied either
        assert pool.starmap(lambda a, b: a + b, [(1, 2), (3, 4)]) == [3, 7]
        assert sorted(pool.imap_unordered(abs, [-1, -2, -3])) == [1, 2, 3]
        assert pool.submit(lambda: 5).result(10) == 5
        assert pool.put(data) is data  # one process: the object is its own reference
        with pytest.raises(ZeroDivisionError) as info:
            pool.apply(lambda: 1 / 0)
        assert "1 / 0" in str(info.value.__cause__)  # where it was raised
        assert pool.map_reduce(lambda x: x, range(100), lambda a, b: a + b) == 4950
    assert nbpool.current_worker() is None  # the caller's own thread is no worker


def test_worker_features_on_threads():
    shared = object()
    with nbpool.Pool(
        2,
        start_method="threading",
        pass_worker_id=True,
        use_worker_state=True,
        shared_objects=shared,
        worker_init=lambda wid, sh, st: st.update(n=0),
        worker_exit=lambda wid, sh, st: (wid, st["n"]),
        enable_insights=True,
        max_tasks_active=1,
    ) as pool:

        def count(wid, sh, st, x):
            st["n"] += 1
            time.sleep(0.005)
            return sh is shared

        assert all(pool.map(count, range(20), 1))
        insights = pool.get_insights()
        pool.close()
        pool.join()
        exits = sorted(pool.get_exit_results())
    assert [w for w, _ in exits] == [0, 1] and sum(n for _, n in exits) == 20
    assert insights["total"]["items"] == 20 and len(insights["slowest"]) == 5


def test_worker_lifespan_starts_new_threads():
    with nbpool.Pool(1, start_method="threading", worker_lifespan=2) as pool:
        names = pool.map(lambda x: threading.current_thread().name, range(6), 1)
    assert len(set(names)) == 3 and all(n.startswith("nbpool-thread-worker-0-") for n in names)


def _spin():
    while True:
        pass


def test_a_timeout_or_a_cancel_stops_a_running_python_task():
    t0 = time.monotonic()
    with nbpool.Pool(1, start_method="threading", task_timeout=0.5) as pool:
        with pytest.raises(nbpool.TaskTimeoutError, match=r"thread nbpool-thread-worker-0"):
            pool.apply(_spin)
        assert pool.apply(abs, (-3,)) == 3  # a new thread took its place
    assert time.monotonic() - t0 < 10
    with nbpool.Pool(1, start_method="threading") as pool:
        r = pool.apply_async(_spin)
        time.sleep(0.3)
        r.cancel()
        with pytest.raises(nbpool.CancelledError):
            r.get(5)
        assert pool.apply(abs, (-4,)) == 4
    with nbpool.Pool(2, start_method="threading") as pool:  # terminate() stops them too
        pool.map_async(lambda x: _spin(), range(2), 1)
        time.sleep(0.3)
    # (the leftover check of every test: no worker thread is left running)


def test_what_threads_cannot_do_is_refused():
    for option in ({"max_memory_per_worker": "1GB"}, {"cpu_ids": [0]}, {"gpus": 1}):
        name = next(iter(option))
        with pytest.raises(ValueError, match=f"{name}= needs worker processes"):
            nbpool.Pool(1, start_method="threading", **option)


def test_the_dashboard_has_a_row_per_worker_thread():
    from nbpool._progress import JobProgress

    with nbpool.Pool(2, start_method="threading") as pool:
        r = pool.map_async(lambda x: time.sleep(0.3), range(2), 1)
        time.sleep(0.15)
        snap = pool._engine._snapshot(
            None, time.monotonic(), "running", JobProgress(True, "text", None, "t")
        )
        r.get(10)
    rows = snap["workers"]
    assert [row["id"] for row in rows] == [0, 1]
    assert [row["state"] for row in rows] == ["busy", "busy"]
    assert {row["item"] for row in rows} == {0, 1}
    assert all(row["cpu"] is None and row["rss"] is None for row in rows)  # one process


def test_a_hook_past_its_timeout_is_stopped_on_threads_too():
    """worker_init_timeout stops the thread that runs the hook (not only the items)."""
    with nbpool.Pool(
        1, start_method="threading", worker_init=lambda: _spin(), worker_init_timeout=0.5
    ) as pool:
        with pytest.raises(TimeoutError, match="worker_init_timeout"):
            pool.apply(abs, (1,))
    # (the leftover check: the spinning thread is gone)


def test_what_a_task_prints_is_routed_and_tagged(capsys):
    import sys

    def chatty(x):
        print("out", x)
        print("err", x, file=sys.stderr)
        return x

    with nbpool.Pool(2, start_method="threading") as pool:
        assert pool.map(chatty, range(4), 1) == [0, 1, 2, 3]
        print("the caller's own line")
    got = capsys.readouterr()
    out = sorted(line.split("] ", 1)[1] for line in got.out.splitlines() if "thread]" in line)
    assert out == [f"out {i}" for i in range(4)]
    assert sorted(line for line in got.err.splitlines() if "thread]" in line) != []
    assert "the caller's own line" in got.out.splitlines()  # untouched, untagged
