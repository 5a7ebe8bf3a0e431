"""Crash isolation, retries, timeouts, memory limits, worker output, leaks, bad options."""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time

import nbfuncs as f
import psutil
import pytest
from conftest import clean_env

import nbpool


def _collect(it, n, timeout=30):
    out = []
    for _ in range(n):
        try:
            out.append(it.next(timeout))
        except nbpool.NbpoolError as e:
            out.append(e)
    return out


# ---------------------------------------------------------------- crash isolation, retries


@pytest.mark.parametrize(
    "n,bad,seconds",
    [(200_000, 150_000, 0.0), (300, 57, 0.001)],
    ids=["tiny-items-in-big-untracked-chunks", "tracked-items"],
)
def test_crash_fails_only_the_culprit_with_default_chunking(n, bad, seconds):
    """Whether items are tracked one by one or not, only the item that killed the worker fails."""
    with nbpool.Pool(2) as p:
        out = _collect(p.imap(functools.partial(f.die_at, bad=bad, seconds=seconds), range(n)), n)
    failed = [i for i, v in enumerate(out) if isinstance(v, nbpool.WorkerLostError)]
    assert failed == [bad]
    err = out[bad]
    assert err.index == bad and "SIGKILL" in str(err) and f"argument {bad}" in str(err)
    assert out[:bad] == list(range(bad)) and out[bad + 1 :] == list(range(bad + 1, n))


def test_retries_rerun_an_item_whose_worker_died(tmp_path):
    items = [(x, str(tmp_path / f"m{x}")) for x in range(4)]
    with nbpool.Pool(2, retries=1) as p:
        assert p.map(f.die_once, items, 1) == [0, 1, 2, 3]
    with nbpool.Pool(2, retries=2) as p:
        with pytest.raises(nbpool.WorkerLostError, match="on each of 3 tries"):
            p.apply(f.always_die, (1,))
        assert p.apply(f.sq, (3,)) == 9


# ---------------------------------------------------------------- limits


def test_task_timeout_fails_the_item_and_the_job_goes_on():
    with nbpool.Pool(2, task_timeout=0.5) as p:
        t0 = time.monotonic()
        out = _collect(p.imap(f.nap, [0.01, 30, 0.01, 0.01], 1), 4)
        assert time.monotonic() - t0 < 5
        assert out[0] == 0.01 and out[2:] == [0.01, 0.01]
        assert isinstance(out[1], nbpool.TaskTimeoutError) and out[1].index == 1
        assert isinstance(out[1], TimeoutError)
        assert p.map(f.sq, range(3)) == [0, 1, 4]


def test_memory_soft_limit_replaces_the_worker_after_its_item():
    with nbpool.Pool(1, max_memory_per_worker="120MB") as p:
        first = p.apply(f.hoard, (130,))  # now over the soft limit, under the hard one
        deadline = time.monotonic() + 10
        while first in p._engine.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.apply(f.pid) != first


def test_memory_hard_limit_kills_and_fails_the_item():
    with nbpool.Pool(1, max_memory_per_worker="100MB") as p:
        with pytest.raises(nbpool.MemoryLimitError, match="max_memory_per_worker") as info:
            p.apply(f.hog, (400,))
        assert isinstance(info.value, MemoryError) and isinstance(
            info.value, nbpool.WorkerLostError
        )
        assert p.apply(f.sq, (4,)) == 16


def test_memory_hard_limit_while_loading_names_the_stage_not_an_item_number():
    """Killed while it unpickled its arguments: the message used to say "item -2"."""
    with nbpool.Pool(1, max_memory_per_worker="100MB") as p:
        with pytest.raises(nbpool.MemoryLimitError) as info:
            p.apply(f.sq, (f.HeavyToLoad(400),))
        message = str(info.value)
        assert "while loading the function and arguments of item 0" in message, message
        assert "-2" not in message and info.value.index == 0
        # Two items loading: which one is to blame is unknown, so they go back one by one
        # and the culprit fails alone.
        with pytest.raises(nbpool.MemoryLimitError, match=r"arguments of item 0: it was killed"):
            p.map(f.sq, [f.HeavyToLoad(400), 1], chunksize=2)
        assert p.apply(f.sq, (4,)) == 16


# ---------------------------------------------------------------- worker output

_TAG = re.compile(r"^\[w(\d+) pid (\d+)\] (.*)$")


def test_output_is_tagged_ordered_and_never_interleaved(capsys):
    with nbpool.Pool(2) as p:
        p.map(f.chatty, range(4), 1)
        time.sleep(0.3)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 * 50
    seen: dict[int, list[int]] = {}
    for line in lines:
        m = _TAG.match(line)
        assert m, line
        item, i = re.match(r"item (\d+) line (\d+) x{200}$", m.group(3)).groups()
        seen.setdefault(int(item), []).append(int(i))
    assert all(v == list(range(50)) for v in seen.values())


def test_fd_level_subprocess_and_stderr_output_is_captured(capfd):
    with nbpool.Pool(1) as p:
        p.map(f.c_level_output, [7], 1)
        time.sleep(0.3)
    out, err = capfd.readouterr()
    assert re.search(r"^\[w0 pid \d+\] fd-level 7$", out, re.M)
    assert re.search(r"^\[w0 pid \d+\] subprocess 7$", out, re.M)
    assert re.search(r"^\[w0 pid \d+\] to stderr 7$", err, re.M)


def test_output_arrives_promptly(capsys):
    with nbpool.Pool(1) as p:
        r = p.apply_async(f.partial_line, (1,))
        time.sleep(0.5)  # the item is still sleeping; its unfinished line is already out
        assert "no newline yet 1" in capsys.readouterr().out
        r.get(10)


def test_output_of_a_crashing_worker_is_not_lost(capfd):
    code = "import os\nprint('last words', flush=True)\nos.kill(os.getpid(), 9)\n"
    with nbpool.Pool(1) as p:
        with pytest.raises(nbpool.WorkerLostError):
            p.apply(exec, (code,))
        time.sleep(0.2)
    assert "last words" in capfd.readouterr().out


# ---------------------------------------------------------------- leaks and soak


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_fd_thread_or_process_left_after_every_way_of_stopping():
    fds = _fds()
    for stop in ("terminate", "close-join", "context", "gc"):
        p = nbpool.Pool(2)
        assert p.map(f.sq, range(10)) == [x * x for x in range(10)]
        engine = p._engine
        if stop == "terminate":
            p.terminate()
        elif stop == "close-join":
            p.close()
            p.join()
        elif stop == "context":
            with p:
                pass
        else:
            with pytest.warns(ResourceWarning):
                del p
                gc.collect()
            engine.join(10)
        assert not engine.is_alive()
    assert _fds() == fds


def test_interpreter_exit_leaves_no_worker(tmp_path):
    code = (
        "import nbpool, nbfuncs\n"
        "p = nbpool.Pool(2)\n"
        "p.map(nbfuncs.sq, range(4))\n"
        "print(*p._engine.worker_pids())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert out.returncode == 0, out.stderr
    pids = [int(x) for x in out.stdout.split()]
    assert not _still_running(pids), out.stderr
    assert "Traceback" not in out.stderr


def _still_running(pids: list[int], within: float = 2.0) -> list[int]:
    """PIDs still running after ``within`` s (a zombie waiting for init to reap it is gone)."""
    deadline = time.monotonic() + within
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def test_soak_memory_stays_bounded():
    """1,000,000 tiny items and 10,000 apply_async: the caller's and workers' RSS stay flat."""
    me = psutil.Process()
    with nbpool.Pool(2) as p:
        p.map(f.sq, range(100_000))
        for _ in range(1000):
            p.apply_async(f.add, (1, 2)).get(10)
        base = me.memory_info().rss
        workers_base = sum(psutil.Process(pid).memory_info().rss for pid in p._engine.worker_pids())
        assert sum(p.map(f.identity, range(1_000_000))) == 499999500000
        rs = [p.apply_async(f.add, (i, 1)) for i in range(10_000)]
        assert [r.get(30) for r in rs] == list(range(1, 10_001))
        del rs
        gc.collect()
        grown = me.memory_info().rss - base
        workers = sum(psutil.Process(pid).memory_info().rss for pid in p._engine.worker_pids())
    print(f"caller grew {grown / 2**20:.1f} MiB, workers {(workers - workers_base) / 2**20:.1f}")
    assert grown < 60 * 2**20
    assert workers - workers_base < 60 * 2**20


def test_local_engine_opens_no_tcp_port():
    with nbpool.Pool(2) as p:
        p.map(f.sq, range(10))
        procs = [psutil.Process(), *(psutil.Process(pid) for pid in p._engine.worker_pids())]
        for proc in procs:
            inet = [c for c in proc.net_connections(kind="inet")]
            assert inet == [], (proc.pid, inet)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        ({"processes": "2"}, TypeError, "processes"),
        ({"processes": -1}, ValueError, "processes"),
        ({"maxtasksperchild": -3}, ValueError, "maxtasksperchild"),
        ({"initializer": "f"}, TypeError, "initializer"),
        ({"serializer": "pickle"}, ValueError, "serializer"),
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": 1.5}, TypeError, "retries"),
        ({"task_timeout": 0}, ValueError, "task_timeout"),
        ({"task_timeout": "1s"}, TypeError, "task_timeout"),
        ({"max_memory_per_worker": "lots"}, ValueError, "max_memory_per_worker"),
        ({"max_memory_per_worker": -5}, ValueError, "max_memory_per_worker"),
        ({"max_memory_per_worker": [1]}, TypeError, "max_memory_per_worker"),
    ],
)
def test_bad_options_are_named(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        nbpool.Pool(**{"processes": 1, **kwargs})


def test_unpicklable_initializer_fails_fast_and_names_it():
    lock = threading.Lock()

    def init():
        return lock

    t0 = time.monotonic()
    with pytest.raises(nbpool.SerializationError, match=r"initializer `.*init`"):
        nbpool.Pool(1, initializer=init)
    assert time.monotonic() - t0 < 1


def test_bad_initargs_are_named():
    with pytest.raises(TypeError, match="initargs"):
        nbpool.Pool(1, initializer=f.init_state, initargs=5)
    # Without an initializer, initargs is never used: accepted, as the stdlib does.
    multiprocessing.get_context("spawn").Pool(1, initargs=5).terminate()
    with nbpool.Pool(1, initargs=5) as pool:
        assert pool.apply(abs, (-2,)) == 2
    with pytest.raises(nbpool.SerializationError, match=r"initargs\[0\]"):
        nbpool.Pool(1, initializer=f.init_state, initargs=(threading.Lock(),))
