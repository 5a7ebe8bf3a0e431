"""``start_method="forkserver"``: workers forked from a server that was itself spawned.

The parity suite (``tests/parity``) runs on it as the ``forkserver`` engine; these are its own
properties: what the server and its workers are, exit codes through the server, the caller's
current directory and environment at fork time, and nothing left when the caller ends.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest
from conftest import clean_env
from proc_util import alive, wait_gone

import nbpool


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (its own fork server), which must exit with 0."""
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out


# For the scripts below: a task that says who forked or spawned its worker, and a wait for the
# fork server that the default starts once a first worker has ended.
HELPERS = """
import os, time
from nbpool._engines.forkserver import ForkServer

def parent(_x=0):
    return os.getppid()

def wait_server():
    deadline = time.monotonic() + 30
    while ForkServer.running() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return ForkServer.running()
"""


def _who(_x):
    import multiprocessing

    return os.getpid(), os.getppid(), multiprocessing.parent_process().pid, os.getcwd()


def test_workers_are_forked_from_a_spawned_server_never_from_the_caller(tmp_path, monkeypatch):
    with nbpool.Pool(2, start_method="forkserver") as pool:
        pid, ppid, parent, cwd = pool.apply(_who, (0,))
    server = psutil.Process(ppid)
    # the server is a fresh interpreter the caller started (fork + exec), not a fork of it
    assert server.ppid() == os.getpid()
    assert "nbpool._engines.forkserver" in " ".join(server.cmdline())
    assert pid != os.getpid() and parent == os.getpid()  # the worker's parent_process(): us
    assert cwd == os.getcwd()
    # a later pool reuses the server, and its workers see the caller's cwd and environment
    # as they are now
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBPOOL_TEST_VAR", "set after the server started")
    with nbpool.Pool(1, start_method="forkserver") as pool:
        _, ppid2, _, cwd2 = pool.apply(_who, (0,))
        env = pool.apply(os.environ.get, ("NBPOOL_TEST_VAR",))
    assert ppid2 == ppid and cwd2 == str(tmp_path) and env == "set after the server started"


def test_exit_codes_come_back_through_the_server():
    with nbpool.Pool(1, start_method="forkserver") as pool:
        with pytest.raises(nbpool.WorkerLostError, match="exited with code 7"):
            pool.apply(os._exit, (7,))
        with pytest.raises(nbpool.WorkerLostError, match="killed by SIGKILL") as info:
            pool.apply(_kill_self)
        assert info.value.exitcode == -9
        assert pool.map(abs, [-1, -2]) == [1, 2]  # replaced, and on it goes


def _kill_self():
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


SCRIPT = """
import nbpool, os, psutil
pool = nbpool.Pool(2, start_method="forkserver")
pids = pool._engine.worker_pids()
server = psutil.Process(pids[0]).ppid()
print(server, *pids, flush=True)
os._exit(0)  # no close, no terminate, no atexit: as a killed kernel
"""


def test_the_server_and_its_workers_end_with_the_caller():
    pids = [int(p) for p in _run(SCRIPT, timeout=60).stdout.split()]
    assert len(pids) == 3
    assert wait_gone(pids, timeout=10) == []


DEFAULT = (
    HELPERS
    + """
import psutil, nbpool

def kind(ppid):
    if ppid == os.getpid():
        return "caller"
    cmdline = " ".join(psutil.Process(ppid).cmdline())
    return "server" if "nbpool._engines.forkserver" in cmdline else "?"

with nbpool.Pool(2, worker_lifespan=1) as pool:
    first = pool.map(parent, range(2), 1)  # spawned: no server yet
    wait_server()  # started once a worker ended; up when its imports are done
    later = pool.map(parent, range(4), 1)  # replacements (lifespan 1): forked
with nbpool.Pool(2) as pool:
    second = pool.map(parent, range(2), 1)  # a second pool: forked
with nbpool.Pool(1, start_method="spawn") as pool:
    spawned = pool.apply(parent)
print(kind(first[0]), kind(first[1]), kind(later[-1]), kind(second[0]), kind(spawned))
"""
)


def test_by_default_workers_are_spawned_until_the_fork_server_is_up_then_forked():
    """The first pool of a process does not wait for the server: its workers are spawned, and
    the server starts once one of them has ended (here: retired after its item). Later workers
    (replacements, other pools) are forked from it. start_method="spawn" always spawns."""
    assert _run(DEFAULT).stdout.split() == ["caller", "caller", "server", "server", "caller"]


def test_start_method_values_are_checked():
    with pytest.raises(ValueError, match="start_method must be None or one of 'spawn', 'fork"):
        nbpool.Pool(1, start_method="fork")


LOST_SERVER = (
    HELPERS
    + """
import signal, nbpool

with nbpool.Pool(1) as pool:
    pool.apply(parent)
server = wait_server()
os.kill(server.pid, signal.SIGKILL)
server.proc.wait(10)
with nbpool.Pool(2) as pool:  # the server is gone: spawned, and nothing fails
    spawned = pool.map(parent, range(2), 1)
again = wait_server()  # started again when those workers ended
with nbpool.Pool(1) as pool:
    forked = pool.apply(parent)
print(spawned == [os.getpid()] * 2, again.pid != server.pid, forked == again.pid)
"""
)


def test_a_lost_fork_server_costs_nothing_but_a_spawn():
    out = _run(LOST_SERVER)
    assert out.stdout.split() == ["True", "True", "True"]
    assert out.stderr == ""


EXIT_EARLY = """
import nbpool
from nbpool._engines.forkserver import ForkServer
with nbpool.Pool(1) as pool:
    pool.apply(abs, (-1,))
print(ForkServer._instance.pid, flush=True)  # started when the worker ended: not ready yet
"""


def test_a_server_still_starting_does_not_outlive_the_caller():
    """The caller exits within the server's start-up delay: the server is stopped with it, and
    prints nothing (it used to print a BrokenPipeError into the terminal later)."""
    out = _run(EXIT_EARLY, timeout=60)
    assert not alive(int(out.stdout))  # at once, not after its delay (0.3 s) and start-up
    assert out.stderr == ""
