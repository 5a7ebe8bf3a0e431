"""What only the Dask engine has: connecting, placing workers, leaving nothing on the cluster.

Runs against the session's Dask scheduler and two one-thread workers on 127.0.0.1
(``dask_cluster`` in tests/conftest.py), in the Dask run only (``--engines=dask``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import nbfuncs as f
import psutil
import pytest
from conftest import CLUSTER_PIDS, clean_env
from proc_util import free_port, semaphore_files, wait_until

import nbpool


def _nbpool_keys(cluster) -> list[str]:
    """nbpool's keys (actors, tasks) the scheduler still knows of."""
    from nbpool._engines import dask as _dask

    client = _dask._CLIENTS[cluster.address]

    def keys(dask_scheduler=None):
        return [str(k) for k in dask_scheduler.tasks if str(k).startswith("nbpool-")]

    return client.run_on_scheduler(keys)


def _hosted_workers(cluster) -> list[int]:
    """nbpool worker processes running under the cluster's Dask workers."""
    out = []
    for pid in cluster.descendants():
        try:
            if "nbpool._engines.local_main" in " ".join(psutil.Process(pid).cmdline()):
                out.append(pid)
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize("how", ["terminate", "close-join", "with"])
def test_nothing_of_the_pool_is_left_on_the_cluster(dask_cluster, how):
    pool = nbpool.Pool(2, address=dask_cluster.address)
    assert pool.map(f.sq, range(10)) == [x * x for x in range(10)]
    assert len(_nbpool_keys(dask_cluster)) == 2 and len(_hosted_workers(dask_cluster)) == 2
    if how == "terminate":
        pool.terminate()
    elif how == "close-join":
        pool.close()
        pool.join()
    else:
        with pool:
            pass
    assert wait_until(lambda: _nbpool_keys(dask_cluster) == [])
    assert wait_until(lambda: _hosted_workers(dask_cluster) == [])


def test_more_workers_than_the_cluster_has_threads_is_refused(dask_cluster):
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"has 2 worker threads") as info:
        nbpool.Pool(3, address=dask_cluster.address)
    assert "processes=3" in str(info.value)
    assert time.monotonic() - t0 < 10
    with nbpool.Pool(address=dask_cluster.address) as pool:  # the default: its free threads
        assert pool._processes == 2
        assert pool.backend == "dask" and pool.address == dask_cluster.address
        # At once: its slots are placed by their bridge threads after Pool() returned, but
        # they count as taken from the start (a pool made right after one got the same threads)
        with pytest.raises(ValueError, match=r"none of them free .* Close another pool on it"):
            nbpool.Pool(1, address=dask_cluster.address)
        assert wait_until(lambda: len(pool._engine.worker_pids()) == 2)
        with pytest.raises(ValueError, match=r"none of them free .* Close another pool on it"):
            nbpool.Pool(1, address=dask_cluster.address)  # this pool holds both threads
        assert pool.map(f.sq, [5]) == [25]
    # and once it is gone, its threads are free again at once
    with nbpool.Pool(address=dask_cluster.address) as pool:
        assert pool._processes == 2


def test_a_client_of_the_callers_own_is_used_as_it_is(dask_cluster):
    from distributed import Client

    client = Client(dask_cluster.address, set_as_default=False)
    try:
        with nbpool.Pool(2, address=client) as pool:
            assert pool.address == dask_cluster.address
            assert pool.map(f.sq, [3]) == [9]
        with client.as_current(), nbpool.Pool(1, backend="dask") as pool:
            assert pool.apply(f.sq, (4,)) == 16
        assert client.status == "running"  # not closed by nbpool: it is the caller's
    finally:
        client.close()


SCRIPT = """
import time, nbpool, nbfuncs
t0 = time.monotonic()
try:
    pool = nbpool.Pool()
except Exception as e:
    print(type(e).__name__, "|", e, "|", round(time.monotonic() - t0, 1))
    raise SystemExit(0)
print(pool.backend, pool.address, pool.map(nbfuncs.sq, [1, 2, 3]), pool._processes)
pool.terminate()
import sys
print("ray imported:", "ray" in sys.modules)
"""


@pytest.mark.parametrize("variable", ["DASK_SCHEDULER_ADDRESS", "NBPOOL_ADDRESS"])
def test_the_environment_switches_a_notebook_to_the_cluster(dask_cluster, variable):
    env = clean_env(**{variable: dask_cluster.address})
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == f"dask {dask_cluster.address} [1, 4, 9] 2"
    assert out.stdout.split("\n")[1] == "ray imported: False"  # one engine never loads another


def test_an_unreachable_scheduler_fails_fast_naming_it(dask_cluster):
    address = f"tcp://127.0.0.1:{free_port()}"
    env = clean_env(DASK_SCHEDULER_ADDRESS=address)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    kind, message, seconds = out.stdout.strip().split(" | ")
    assert kind == "ClusterConnectionError"
    assert address in message
    assert float(seconds) < 10


def test_a_dask_worker_that_leaves_fails_only_its_item_and_the_pool_goes_on(dask_cluster):
    """The Dask worker process itself dies (not nbpool's worker under it): its item fails with
    WorkerLostError naming it (with retries=1 it runs again elsewhere), the slot is placed
    again once the nanny has restarted that Dask worker, and nothing is left behind."""
    from nbpool._engines import dask as _dask

    client = _dask._CLIENTS[dask_cluster.address]
    with nbpool.Pool(
        2, address=dask_cluster.address, retries=1, initializer=f.init_state, initargs=(7,)
    ) as pool:
        pool.map(f.sq, range(4), 1)
        r = pool.map_async(f.nap, [3.0, 3.0], 1)
        time.sleep(1.0)
        victim = next(iter(client.run(os.getpid).values()))  # a Dask worker's PID
        os.kill(victim, signal.SIGKILL)
        assert r.get(60) == [3.0, 3.0]  # the lost item ran again on the other worker
        assert pool.map(f.sq, range(6), 1) == [x * x for x in range(6)]
        assert wait_until(lambda: len(pool._engine.worker_pids()) == 2, 30)
        # the slot placed again (on the restarted Dask worker) ran the initializer too
        assert pool.map(f.read_state, range(8), 1) == [7] * 8
    with nbpool.Pool(1, address=dask_cluster.address) as pool:  # without retries: it fails
        r = pool.map_async(f.nap, [5.0], 1)
        time.sleep(1.0)
        host = next(iter(client.run(os.getpid).items()))
        os.kill(host[1], signal.SIGKILL)
        with pytest.raises(
            nbpool.WorkerLostError, match=r"on 127\.0\.0\.1\) died while running item 0"
        ):
            r.get(60)
    assert wait_until(lambda: _nbpool_keys(dask_cluster) == [])
    assert wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, 30)


def _scheduler_has(cluster, keys: list[str]) -> list[str]:
    from nbpool._engines import dask as _dask

    def has(dask_scheduler=None, keys=()):
        return [k for k in keys if k in dask_scheduler.tasks]

    return _dask._CLIENTS[cluster.address].run_on_scheduler(has, keys=keys)


def _sum_all(shared, extra):
    time.sleep(0.1)  # (so that both slots take items)
    return nbpool.current_worker().node, float(shared["a"].sum() + extra.sum())


def test_scattered_objects_reach_every_slot_even_when_dask_loses_them(dask_cluster):
    """Shared objects and put() objects are scattered once; each slot's Dask worker fetches
    them from Dask (never from the caller). When every Dask worker that held one dies, the pool
    scatters it again: the results are the same. Closing the pool releases them."""
    np = pytest.importorskip("numpy")
    from nbpool._engines import dask as _dask

    client = _dask._CLIENTS[dask_cluster.address]
    big = np.arange(500_000.0)  # 4 MB: the Dask workers' hosts put it in shared memory
    expect = float(big.sum()) + 300_000.0
    sent = _dask.SENT_BY_CALLER
    with nbpool.Pool(2, address=dask_cluster.address, shared_objects={"a": big}, retries=1) as pool:
        ref = pool.put(np.ones(300_000))
        got = pool.starmap(_sum_all, [(ref,)] * 4, 1)
        assert [x for _, x in got] == [expect] * 4 and len({node for node, _ in got}) == 2
        futures = [future for future, _ in _dask._STORED.values()]
        keys = [future.key for future in futures]
        assert len(futures) == 2
        # One copy of the shared objects left (Dask drops a fetched copy on its own, at times),
        # then its Dask worker killed: the other one outlives it and keeps its pickle.
        client.replicate([futures[0]], n=1)
        assert wait_until(lambda: len(client.who_has(futures)[keys[0]]) == 1)
        holders = client.who_has(futures)[keys[0]]
        pids = client.run(os.getpid, workers=list(holders))
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        lost = futures[0]
        assert wait_until(lambda: lost.status != "finished", 30)  # Dask lost it
        assert wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, 30)
        got = pool.starmap(_sum_all, [(ref,)] * 8, 1)
        # both Dask workers ran items, one of them restarted, each with its objects
        assert [x for _, x in got] == [expect] * 8 and len({node for node, _ in got}) == 2
        assert sent == _dask.SENT_BY_CALLER  # every slot got them from Dask
        keys = [future.key for future, _ in _dask._STORED.values()]
        del ref
    assert _dask._STORED == {}
    assert wait_until(lambda: _scheduler_has(dask_cluster, keys) == [])
    assert wait_until(lambda: _nbpool_keys(dask_cluster) == [])

    def pickled_here() -> list[str]:  # a Dask worker's pickles of stored objects, by key
        from nbpool._engines import host

        return sorted(host._PICKLED)

    assert wait_until(lambda: not any(client.run(pickled_here).values()))  # forgotten too


LOSE = """
import sys, time, nbpool
def slow(x):
    time.sleep(0.5)
    return x
pool = nbpool.Pool(2, address=sys.argv[1], progress=False)
print("warm", pool.map(slow, range(2)), flush=True)
t0 = time.monotonic()
try:
    pool.map(slow, range(200), 1)
except nbpool.ClusterConnectionError as e:
    print("failed after", round(time.monotonic() - t0, 1), "|", e, flush=True)
t0 = time.monotonic()
pool.terminate()
print("terminate", round(time.monotonic() - t0, 1), flush=True)
"""


def test_losing_the_scheduler_fails_the_job_at_once(dask_cluster, tmp_path):
    """The scheduler dies mid-job (its workers live on): the job fails with
    ClusterConnectionError within seconds and terminate() returns at once."""
    from dask_cluster import start_dask_cluster, stop_dask_cluster

    semaphores = semaphore_files()
    doomed = start_dask_cluster(workers=2)
    CLUSTER_PIDS.append(doomed)
    try:
        with open(tmp_path / "stderr", "w") as err:
            child = subprocess.Popen(
                [sys.executable, "-c", LOSE, doomed.address],
                env=clean_env(), stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
        try:
            assert child.stdout.readline().startswith("warm")
            time.sleep(1.0)
            doomed.scheduler.send_signal(signal.SIGKILL)
            out, _ = child.communicate(timeout=90)
        finally:
            child.kill()
            child.wait(30)
        assert child.returncode == 0, (tmp_path / "stderr").read_text()[-3000:]
        lines = dict((line + " ").split(" ", 1) for line in out.strip().splitlines())
        seconds, message = lines["failed"].strip().removeprefix("after ").split(" | ")
        assert float(seconds) < 15
        assert f"lost the Dask cluster at {doomed.address}" in message
        assert float(lines["terminate"].strip()) < 5
    finally:
        stop_dask_cluster(doomed, graceful=False)
        CLUSTER_PIDS.remove(doomed)
    # The harness's own hygiene: nannies killed outright left their multiprocessing
    # semaphores in /dev/shm, six a run, for good.
    assert semaphore_files() - semaphores == set()
    assert not os.path.exists(doomed.tmp)


def test_dask_workers_without_this_kernels_nbpool_are_refused_by_name(tmp_path):
    """Two nodes unlike the kernel: one with an older nbpool first on its path, one that cannot
    import nbpool at all. Pool() names both and what to install, before any actor starts."""
    from cluster_checks import unlike_the_kernel
    from dask_cluster import start_dask_cluster, stop_dask_cluster

    envs = [unlike_the_kernel(tmp_path, "old"), unlike_the_kernel(tmp_path, "none")]
    cluster = start_dask_cluster(workers=2, worker_env=envs)
    try:
        with pytest.raises(nbpool.ClusterConnectionError) as info:
            nbpool.Pool(1, address=cluster.address)
        message = str(info.value)
        assert re.search(r"tcp://127\.0\.0\.1:\d+ has nbpool 0\.0\.1", message), message
        assert re.search(r"tcp://127\.0\.0\.1:\d+ has no nbpool", message), message
        assert f"pip install nbpool=={nbpool.__version__}" in message
        assert isinstance(info.value, ConnectionError)
        assert _nbpool_keys(cluster) == []  # no actor was started
        with pytest.raises(nbpool.ClusterConnectionError, match=r"has nbpool 0\.0\.1"):
            nbpool.Pool(1, address=cluster.address)  # (asked again: it did not pass)
    finally:
        from nbpool._engines import dask as _dask

        with contextlib.suppress(KeyError):
            _dask._CLIENTS.pop(cluster.address).close()
        stop_dask_cluster(cluster)
