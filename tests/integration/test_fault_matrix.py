"""Faults at every stage of an item's life: the expected error, in seconds, pool still usable.

Stages in the worker (argument unpickling, running, result pickling) get every kind of fault.
Stages in the caller (argument pickling, result unpickling) get ``raise`` only: an ``os._exit``
or a segfault there kills the caller itself, which is covered by test_parent_death below.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import nbfuncs as f
import psutil
import pytest
from conftest import clean_env

import nbpool

HOWS = ["raise", "exit", "segfault", "sigkill"]
WORKER_STAGES = ["arg_unpickle", "run", "result_pickle"]
CALLER_STAGES = ["arg_pickle", "result_unpickle"]
CASES = [(h, s) for s in WORKER_STAGES for h in HOWS] + [("raise", s) for s in CALLER_STAGES]


def bomb(how, stage):
    return f.ArgBomb(how, stage) if stage.startswith("arg") else (how, stage)


def expected(how, stage):
    if how == "raise":
        # an argument that cannot be pickled fails with what pickling raised (the stdlib's rule)
        return ValueError if stage in ("run", "arg_pickle") else nbpool.SerializationError
    return nbpool.WorkerLostError


@pytest.fixture
def pool():
    with nbpool.Pool(2) as p:
        yield p


@pytest.mark.parametrize("how,stage", CASES, ids=[f"{h}-{s}" for h, s in CASES])
def test_fault_fails_only_its_item(pool, how, stage):
    items = [0, 1, bomb(how, stage), 3, 4]
    t0 = time.monotonic()
    it = pool.imap(f.detonate, items, 1)
    got = []
    for i in range(len(items)):
        if i == 2:
            with pytest.raises(expected(how, stage)) as info:
                it.next(timeout=30)
            got.append(info.value)
        else:
            got.append(it.next(timeout=30))
    assert got[:2] == [0, 10] and got[3:] == [30, 40]
    err = got[2]
    if isinstance(err, nbpool.WorkerLostError):
        assert err.index == 2 and err.pid and err.worker_id is not None
        sig = {"sigkill": "SIGKILL", "segfault": "SIGSEGV"}.get(how)
        assert (sig in str(err)) if sig else ("exited with code 7" in str(err))
    elif isinstance(err, nbpool.SerializationError):
        assert "item 2" in str(err) or "items 2" in str(err)
    elif stage == "arg_pickle":  # its own type, and a note naming the item
        assert "item 2 (argument" in " ".join(err.__notes__)
    assert time.monotonic() - t0 < 20
    # the pool is still usable, with its full complement of workers
    assert pool.map(f.sq, range(10)) == [x * x for x in range(10)]


@pytest.mark.parametrize("how,stage", CASES, ids=[f"{h}-{s}" for h, s in CASES])
def test_fault_with_default_chunking_never_hangs(pool, how, stage):
    items = [*range(20), bomb(how, stage), *range(20)]
    with pytest.raises(expected(how, stage)):
        pool.map_async(f.detonate, items).get(timeout=30)
    assert pool.apply(f.sq, (7,)) == 49


def test_unpicklable_function_is_named_fast(pool):
    import threading

    lock = threading.Lock()
    big = list(range(2_000_000))  # (a failed pickle of it is retried once, not again and again)
    t0 = time.monotonic()
    with pytest.raises(nbpool.SerializationError, match="function"):
        pool.map(lambda x: (lock, big, x), [1])
    assert time.monotonic() - t0 < 3


def test_unpicklable_argument_is_named(pool):
    import threading

    # what pickling raised, of its own type as in the stdlib, with a note naming the item
    with pytest.raises(TypeError, match=r"cannot pickle '_thread\.lock' object") as info:
        pool.map(f.identity, [1, threading.Lock(), 3], 1)
    (note,) = info.value.__notes__
    assert note.startswith("nbpool: item 1 (argument <unlocked _thread.lock object")
    assert "create such objects in the worker" in note
    # and the other items of the same map are not lost
    it = pool.imap(f.identity, [1, threading.Lock(), 3])
    assert next(it) == 1
    with pytest.raises(TypeError):
        next(it)
    assert next(it) == 3


def test_unpicklable_result_is_named(pool):
    import multiprocessing.pool

    with pytest.raises(nbpool.SerializationError, match="result of item 0") as info:
        pool.apply(_make_lock)
    # the stdlib's error type too, with its attributes
    assert isinstance(info.value, multiprocessing.pool.MaybeEncodingError)
    assert "_thread.lock" in info.value.exc and "lock" in info.value.value


def _make_lock():
    import threading

    return threading.Lock()


def test_idle_worker_death_is_replaced(pool):
    before = set(pool._engine.worker_pids())
    victim = next(iter(before))
    psutil.Process(victim).kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = set(pool._engine.worker_pids())
        if victim not in pids and len(pids) == 2:
            break
        time.sleep(0.05)
    assert victim not in pool._engine.worker_pids()
    assert pool.map(f.sq, range(4), 1) == [0, 1, 4, 9]


PARENT = """
import os, sys, time, nbpool, nbfuncs
pool = nbpool.Pool(2)
pool.map(nbfuncs.sq, range(4))
r = pool.map_async(nbfuncs.slow, [30, 30], 1) if sys.argv[1] == "busy" else None
time.sleep(0.5)
print(" ".join(map(str, pool._engine.worker_pids())), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("state", ["busy", "idle"])
def test_parent_death_takes_workers_down(state):
    """The caller is SIGKILLed: its workers (busy or idle) exit within 2 s."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, state], stdout=subprocess.PIPE, text=True, env=clean_env()
    )
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
            time.sleep(0.02)
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        assert not alive
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
