"""mpire's worker features on every engine: worker id, worker state, shared objects,
``current_worker()``, ``n_jobs``, ``map_unordered``, ``iterable_len``. The same tests run on the
local engine (core run) and on Ray and Dask (their runs), with notebook-style functions."""

from __future__ import annotations

import collections
import itertools
import os
import re
import time

import nbfuncs as f
import pytest
from conftest import on_cluster
from proc_util import dev_shm_files

import nbpool


def test_worker_id_shared_objects_and_state_come_before_the_item_in_mpires_order(engine):
    def task(worker_id, shared, state, x):
        state["seen"] = state.get("seen", 0) + 1  # kept across items and calls
        me = nbpool.current_worker()
        return worker_id, me.id, me.pid, shared["scale"] * x, state["seen"]

    shared = {"scale": 10}
    with nbpool.Pool(
        2, pass_worker_id=True, shared_objects=shared, use_worker_state=True, **engine
    ) as pool:
        first = pool.map(task, range(8), 1)
        again = pool.map(task, range(4), 1)
        star = pool.starmap(lambda wid, sh, st, a, b: (wid, a + b), [(1, 2)])
        applied = pool.apply(lambda wid, sh, st, a, *, b: (sh is not None, a * b), (3,), {"b": 4})
    assert [r[3] for r in first] == [10 * x for x in range(8)]
    assert all(r[0] == r[1] and r[0] in (0, 1) for r in first + again)
    # the state counts every item a worker ran, across both calls
    for wid in (0, 1):
        counts = [r[4] for r in first + again if r[0] == wid]
        assert counts == list(range(1, len(counts) + 1))
    assert star[0][1] == 3 and star[0][0] in (0, 1)
    assert applied == (True, 12)


def test_only_the_options_given_are_passed(engine):
    with nbpool.Pool(2, use_worker_state=True, **engine) as pool:
        assert pool.map(lambda state, x: (type(state).__name__, x), [5]) == [("dict", 5)]
    with nbpool.Pool(1, pass_worker_id=True, **engine) as pool:
        assert pool.map(lambda wid, x: wid + x, [5]) == [5]


def test_shared_objects_are_unpickled_once_per_worker(engine):
    """Every item of a worker gets the same object (by identity), over several calls."""
    with nbpool.Pool(2, shared_objects=[1, 2, 3], pass_worker_id=True, **engine) as pool:
        ids = pool.map(lambda wid, shared, x: (wid, id(shared)), range(10), 1)
        ids += pool.map(lambda wid, shared, x: (wid, id(shared)), range(10), 1)
    for wid in {w for w, _ in ids}:
        assert len({i for w, i in ids if w == wid}) == 1


def test_a_replacement_worker_keeps_its_slots_id_and_starts_a_new_state(engine):
    with nbpool.Pool(
        2, maxtasksperchild=2, pass_worker_id=True, use_worker_state=True, **engine
    ) as pool:
        got = pool.map(lambda wid, st, x: (wid, f.pid(), st.setdefault("n", x)), range(8), 1)
    assert {wid for wid, _, _ in got} <= {0, 1}
    by_pid: dict[int, set[int]] = {}
    for wid, pid, _ in got:
        by_pid.setdefault(pid, set()).add(wid)
    assert len(by_pid) == 4 and all(len(w) == 1 for w in by_pid.values())
    # each new worker's state started empty: n is the first item that very process ran
    for pid in by_pid:
        ran = [x for x, (_, p, _) in enumerate(got) if p == pid]
        assert {n for _, p, n in got if p == pid} == {min(ran)}


def test_current_worker_is_none_in_the_caller(engine):
    assert nbpool.current_worker() is None
    with nbpool.Pool(1, **engine) as pool:
        me = pool.apply(nbpool.current_worker)
    assert me.id == 0 and me.pid > 0 and me.host


def test_n_jobs_map_unordered_and_iterable_len(engine):
    with nbpool.Pool(n_jobs=2, **engine) as pool:
        assert pool._processes == 2
        assert sorted(pool.map_unordered(f.sq, range(20))) == [x * x for x in range(20)]
        gen = (x for x in itertools.count())  # endless: iterable_len bounds it
        assert sorted(pool.imap_unordered(f.sq, gen, iterable_len=5)) == [0, 1, 4, 9, 16]
        assert list(pool.imap(f.sq, iter(range(3)), iterable_len=10)) == [0, 1, 4]
        assert pool.map_unordered(f.sq, [1, 2, 3], iterable_len=1) == [1]


def test_worker_lifespan_counts_items(engine):
    with nbpool.Pool(2, worker_lifespan=3, **engine) as pool:
        pids = collections.Counter(pool.map(f.pid, range(12), 1))
    # at most 3 items a process (a worker with items left over simply stays), so >= 4 of them
    assert max(pids.values()) == 3 and len(pids) >= 4


def test_max_tasks_active_bounds_the_items_in_flight(engine, tmp_path):
    """With max_tasks_active=1 only one item is out at a time, although two workers wait:
    no two items' run times overlap. With 3, a lazy input is pulled at most 3 items ahead of
    the results (the items in flight), whatever chunksize asks for."""

    def span(x):
        t0 = time.monotonic()
        time.sleep(0.02)
        return x, t0, time.monotonic()

    with nbpool.Pool(2, max_tasks_active=1, **engine) as pool:
        spans = sorted(pool.map(span, range(12)), key=lambda s: s[1])
    assert [s[0] for s in sorted(spans)] == list(range(12))
    assert all(a[2] <= b[1] for a, b in itertools.pairwise(spans))

    # Each task appends a line to a file when it ends; the input counts them as it is pulled.
    done_file = tmp_path / "done"
    done_file.touch()

    def mark(x):
        with open(done_file, "a") as fh:
            fh.write(".")
        return x * x

    ahead = []

    def items():
        for i in range(30):
            # after this one is sent: i + 1 items out, of which at least this many ended
            ahead.append(i + 1 - len(done_file.read_text()))
            yield i

    with nbpool.Pool(2, max_tasks_active=3, **engine) as pool:
        assert list(pool.imap(mark, items(), chunksize=10)) == [x * x for x in range(30)]
    assert max(ahead) <= 3  # (without the bound: 10 and more, a chunk of 10 at a time)


def test_insights_record_each_workers_times_and_the_slowest_items(engine, capsys):
    def sleepy(x):
        time.sleep(0.3 if x == "slow" else 0.01)
        return x

    items = ["a", "b", "slow", *"cdefghijk"]
    with nbpool.Pool(
        2, enable_insights=True, initializer=time.sleep, initargs=(0.1,), **engine
    ) as pool:
        assert pool.map(sleepy, items, 2) == items
        assert pool.apply(sleepy, ("z",)) == "z"
        r = pool.get_insights()
        pool.print_insights()
    assert [w["id"] for w in r["workers"]] == [0, 1]
    assert r["total"]["items"] == len(items) + 1 == sum(w["items"] for w in r["workers"])
    for w in r["workers"]:
        assert w["workers_started"] == 1 and w["pid"]
        assert w["start_up_s"] >= 0.1  # the initializer is part of start-up
    assert r["total"]["working_s"] >= 0.3 + 0.01 * len(items)
    assert abs(sum(r["ratios"].values()) - 1) < 1e-6
    top = r["slowest"][0]
    assert top["args"] == "'slow'" and top["item"] == 2 and top["call"].endswith("sleepy`)")
    assert 0.3 <= top["seconds"] < 2 and top["worker"] in (0, 1)
    assert len(r["slowest"]) == 5
    assert [s["seconds"] for s in r["slowest"]] == sorted(
        (s["seconds"] for s in r["slowest"]), reverse=True
    )
    out = capsys.readouterr().out
    assert "nbpool insights: 2 worker slots, 13 items" in out
    assert "item 2 of map(`" in out and "sleepy`) on w" in out and ": 'slow'" in out
    with nbpool.Pool(1, **engine) as pool, pytest.raises(ValueError, match="enable_insights=True"):
        pool.get_insights()


def _visible(wid, _x):
    import os

    return wid, os.environ.get("CUDA_VISIBLE_DEVICES")


def test_gpus_give_each_worker_its_own_cuda_visible_devices(monkeypatch):
    """Local engine only (a cluster places work on its own GPUs). No GPU is needed: what is
    checked is what each worker sees, replacement workers included (worker_lifespan=2)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with nbpool.Pool(2, gpus=[0, 1, 2, 3], pass_worker_id=True, worker_lifespan=2) as pool:
        assert set(pool.map(_visible, range(8), 1)) == {(0, "0,1"), (1, "2,3")}
    with nbpool.Pool(2, gpus=3, pass_worker_id=True) as pool:
        assert set(pool.map(_visible, range(4), 1)) == {(0, "0,1"), (1, "2")}
    with nbpool.Pool(3, gpus=["GPU-aa", "GPU-bb"], pass_worker_id=True) as pool:
        assert set(pool.map(_visible, range(9), 1)) == {(0, "GPU-aa"), (1, "GPU-bb"), (2, "GPU-aa")}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7,9")  # gpus=N takes the first N of these
    with nbpool.Pool(2, gpus=2, pass_worker_id=True) as pool:
        assert set(pool.map(_visible, range(4), 1)) == {(0, "5"), (1, "7")}
    with pytest.raises(ValueError, match="makes 3 visible here"):
        nbpool.Pool(1, gpus=4)
    with pytest.raises(ValueError, match="gpus must be 1 or more"):
        nbpool.Pool(1, gpus=0)
    with pytest.raises(ValueError, match="gpus is an empty list"):
        nbpool.Pool(1, gpus=[])
    with pytest.raises(ValueError, match="GPU id must be 0 or more"):
        nbpool.Pool(1, gpus=[-1])
    with pytest.raises(TypeError, match="gpus must be a number of GPUs"):
        nbpool.Pool(1, gpus="0,1")


def test_gpus_are_this_machines_option(engine, monkeypatch):
    """Taken on this machine; on a cluster (which places work on its own GPUs) refused, saying
    so."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if on_cluster(engine):
        with pytest.raises(ValueError, match="gpus= hands out this machine's GPUs; on a"):
            nbpool.Pool(1, gpus=1, **engine)
        for method in ("forkserver", "threading"):
            with pytest.raises(ValueError, match=f"start_method='{method}' is for this machine"):
                nbpool.Pool(1, start_method=method, **engine)
        return
    with nbpool.Pool(1, gpus=1, pass_worker_id=True) as pool:
        assert pool.map(_visible, [0]) == [(0, "0")]


def test_resources_place_each_worker_where_the_cluster_has_them(engine):
    """The test clusters have one "gpuish" resource, on one node (Ray: the head; Dask: the
    first worker): a pool asking for it gets one worker, there, that holds it while it lives;
    more workers, or a resource nobody has, are refused at once with what to do."""
    if not on_cluster(engine):
        with pytest.raises(ValueError, match="resources= is for a Ray or Dask cluster"):
            nbpool.Pool(1, resources={"GPU": 1})
        return
    with nbpool.Pool(resources={"gpuish": 1}, **engine) as pool:
        assert pool._processes == 1  # the default: as many as the resource allows
        node = pool.apply(lambda: nbpool.current_worker().node)
        assert pool.map(f.sq, range(4)) == [0, 1, 4, 9]
        with pytest.raises(ValueError, match="none of them free"):
            nbpool.Pool(1, resources={"gpuish": 1}, **engine)  # this pool holds it
    if "address" in engine:  # Dask: on the worker started with it
        from distributed import Client

        with Client(engine["address"], set_as_default=False) as client:
            info = client.scheduler_info(n_workers=-1)["workers"]
        assert info[node]["resources"] == {"gpuish": 1}
    with nbpool.Pool(resources={"gpuish": 1}, **engine) as pool:  # free again
        assert pool.apply(f.sq, (3,)) == 9
    with pytest.raises(ValueError, match=r"processes=2, but .* room for 1 .*workers"):
        nbpool.Pool(2, resources={"gpuish": 1}, **engine)
    with pytest.raises(ValueError, match="'GPU' resource"):
        nbpool.Pool(1, resources={"GPU": 1}, **engine)
    with pytest.raises(ValueError, match=r"resources\['gpuish'\] must be > 0"):
        nbpool.Pool(1, resources={"gpuish": 0}, **engine)
    with pytest.raises(TypeError, match="resources must be a non-empty dict"):
        nbpool.Pool(1, resources=["GPU"], **engine)


def _affinity(wid, _x):
    import os

    return wid, sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU pinning needs Linux")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_cpu_ids_pin_each_worker_or_all_of_them(engine):
    a, b = sorted(os.sched_getaffinity(0))[:2]
    with nbpool.Pool(2, cpu_ids=[a, b], pass_worker_id=True, **engine) as pool:
        got = set(map(tuple, (tuple([w, tuple(c)]) for w, c in pool.map(_affinity, range(6), 1))))
    assert got <= {(0, (a,)), (1, (b,))} and len(got) == 2
    with nbpool.Pool(2, cpu_ids=[[a, b]], pass_worker_id=True, **engine) as pool:
        assert {tuple(c) for _, c in pool.map(_affinity, range(4), 1)} == {(a, b)}


def test_bad_values_name_the_option():
    with pytest.raises(TypeError, match="n_jobs"):
        nbpool.Pool(2, n_jobs=2)
    with pytest.raises(TypeError, match="n_jobs must be an int"):
        nbpool.Pool(n_jobs="2")
    with pytest.raises(ValueError, match="at least 1"):
        nbpool.Pool(n_jobs=0)
    with pytest.raises(TypeError, match="pass_worker_id must be True or False"):
        nbpool.Pool(1, pass_worker_id=1)
    with pytest.raises(TypeError, match="use_worker_state must be True or False"):
        nbpool.Pool(1, use_worker_state="yes")
    with pytest.raises(nbpool.SerializationError, match="shared_objects cannot be pickled"):
        nbpool.Pool(1, shared_objects=open(__file__))  # noqa: SIM115
    with pytest.raises(TypeError, match="worker_lifespan"):
        nbpool.Pool(1, maxtasksperchild=2, worker_lifespan=2)
    with pytest.raises(ValueError, match="worker_lifespan must be a positive int"):
        nbpool.Pool(1, worker_lifespan=-1)
    with pytest.raises(ValueError, match="this machine has no CPU 4096"):
        nbpool.Pool(1, cpu_ids=[4096])
    with pytest.raises(ValueError, match="cpu_ids has 3 entries"):
        nbpool.Pool(2, cpu_ids=[0, 0, 0])
    with pytest.raises(TypeError, match="cpu_ids must be a list"):
        nbpool.Pool(1, cpu_ids=0)
    with pytest.raises(TypeError, match="worker_init must be a callable"):
        nbpool.Pool(1, worker_init=3)
    with pytest.raises(ValueError, match="worker_exit_timeout"):
        nbpool.Pool(1, worker_exit_timeout=-1)
    with pytest.raises(TypeError, match="enable_insights must be True or False"):
        nbpool.Pool(1, enable_insights=1)
    with pytest.raises(ValueError, match="start_method must be None or one of 'spawn', 'fork"):
        nbpool.Pool(1, start_method="threads")
    with pytest.raises(ValueError, match="max_tasks_active must be >= 1"):
        nbpool.Pool(1, max_tasks_active=0)
    with pytest.raises(TypeError, match="max_tasks_active must be an int"):
        nbpool.Pool(1, max_tasks_active=2.5)
    with nbpool.Pool(1) as pool:
        with pytest.raises(ValueError, match="iterable_len must be 0 or more"):
            pool.imap(f.sq, [1], iterable_len=-1)
        with pytest.raises(TypeError, match="iterable_len must be an int"):
            pool.map_unordered(f.sq, [1], iterable_len=1.5)


def test_worker_init_and_exit_hooks_get_what_a_task_gets(engine):
    def init(wid, state):
        state["init"] = wid

    def task(wid, state, x):
        state["n"] = state.get("n", 0) + 1
        return state["init"] == wid

    def bye(wid, state):
        return wid, state.get("n", 0)

    pool = nbpool.Pool(
        2, pass_worker_id=True, use_worker_state=True, worker_init=init, worker_exit=bye, **engine
    )
    assert all(pool.map(task, range(10), 1))
    with pytest.raises(ValueError, match="after close"):
        pool.get_exit_results()
    pool.close()
    pool.join()
    got = sorted(pool.get_exit_results())
    assert [wid for wid, _ in got] == [0, 1]
    assert sum(n for _, n in got) == 10


def test_worker_exit_runs_when_a_worker_retires_and_its_errors_surface(engine):
    pool = nbpool.Pool(1, worker_lifespan=2, worker_exit=f.pid, **engine)
    pids = pool.map(f.pid, range(6), 1)
    pool.close()
    pool.join()
    exits = pool.get_exit_results()
    # each worker that ran items reported once; so did the fresh one started for the slot
    # after the last retirement (it ran none), if it started before close() reached the pool
    assert set(pids) <= set(exits) and len(exits) == len(set(exits))
    assert len(exits) - len(set(pids)) in (0, 1)
    pool = nbpool.Pool(1, worker_exit=lambda: 1 / 0, **engine)
    pool.map(f.sq, [1])
    pool.close()
    pool.join()
    with pytest.raises(ZeroDivisionError) as info:
        pool.get_exit_results()
    assert "worker_exit raised" in str(info.value.__cause__)


def test_hook_timeouts_stop_the_worker_and_say_so(engine):
    def slow_init():
        time.sleep(30)

    with nbpool.Pool(1, worker_init=slow_init, worker_init_timeout=0.5, **engine) as pool:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"worker_init_timeout=0\.5"):
            pool.map(f.sq, [1, 2], 1)
        assert time.monotonic() - t0 < 20
    pool = nbpool.Pool(1, worker_exit=slow_init, worker_exit_timeout=0.5, **engine)
    pool.map(f.sq, [1])
    pool.close()
    t0 = time.monotonic()
    pool.join()
    assert time.monotonic() - t0 < 10
    with pytest.raises(TimeoutError, match=r"worker_exit_timeout=0\.5"):
        pool.get_exit_results()


def _memfd_links(pid: int = 0) -> list[str]:
    """nbpool's shared-memory segments a process holds open (fds) or mapped."""
    pid = pid or os.getpid()
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    with open(f"/proc/{pid}/maps") as fh:
        maps = [line.strip() for line in fh]
    segment = re.compile(r"memfd:nbpool-\d")  # (not the workers' slots: memfd:nbpool-slot)
    return [x for x in links + maps if segment.search(x)]


def _array_task(wid, shared, x):
    import os

    a = shared["a"]
    first = float(a[0])
    try:
        a[0] = 100.0 + wid  # private to this worker (copy on write), never seen elsewhere
    except ValueError:  # Ray: arrays from its object store are read-only
        return wid, os.getpid(), first, float(a[1:].sum()), "read-only"
    return wid, os.getpid(), first, float(a[1:].sum()), float(a[0])


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")
def test_large_arrays_in_shared_objects_and_put_are_shared_not_copied(engine):
    """On this machine the large buffers of shared objects and put() objects are in shared
    memory (memfd, mapped by each worker, never a file in /dev/shm); on Ray they are in its
    object store, on Dask scattered to each Dask worker, which maps them into its processes.
    Either way: the same values, and a task's writes stay in its worker."""
    np = pytest.importorskip("numpy")
    big = np.arange(1_000_000, dtype=np.float64)  # 8 MB
    before = _memfd_links()
    shm_files = dev_shm_files()
    with nbpool.Pool(2, shared_objects={"a": big}, pass_worker_id=True, **engine) as pool:
        got = pool.map(_array_task, range(6), 1)
        total = float(big[1:].sum())
        assert all(s == total for _, _, _, s, _ in got)
        if "ray_address" in engine:  # one copy per node in Ray's object store, read-only
            assert {r[4] for r in got} == {"read-only"} and {r[2] for r in got} == {0.0}
        else:
            for wid in (0, 1):  # each worker sees its own writes only, the caller none
                firsts = [first for w, _, first, _, _ in got if w == wid]
                assert firsts[0] == 0.0 and set(firsts[1:]) <= {100.0 + wid}
        assert big[0] == 0.0
        ones = pool.put(np.ones(500_000))
        assert pool.starmap(lambda wid, sh, a: float(a.sum()), [(ones,)] * 2) == [500_000.0] * 2
        store = None
        if on_cluster(engine):  # both in the cluster's store, once (Ray's, Dask's memory)
            from nbpool._engines import dask, ray

            store = ray if "ray_address" in engine else dask
            assert ones.id in store._STORED and any(k < 0 for k in store._STORED)
        else:
            assert len(_memfd_links()) == len(before) + 2  # the caller holds two segments
        if "ray_address" not in engine:
            for _wid, pid, *_ in got[:1]:
                # it maps the caller's segments (on Dask: those its Dask worker made of the
                # scattered object, once for all of that worker's processes)
                assert _memfd_links(pid)
        ref_id = ones.id
        del ones
        import gc

        gc.collect()
        from proc_util import wait_until

        assert wait_until(lambda: ref_id not in pool._engine.refs)
        if not on_cluster(engine):
            assert len(_memfd_links()) == len(before) + 1  # the put segment is closed
    assert _memfd_links() == before  # and the shared objects' with the pool
    if store is not None:
        assert store._STORED == {}  # released from the cluster's store
    assert dev_shm_files() - shm_files == set()
