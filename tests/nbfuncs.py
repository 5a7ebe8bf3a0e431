"""Importable helpers for the tests (workers import them by reference through sys.path)."""

from __future__ import annotations

import ctypes
import os
import signal
import time


def sq(x):
    return x * x


def add(a, b):
    return a + b


def kw(a, b=0, *, c=0):
    return (a, b, c)


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x * 10


def slow(x, seconds=0.05):
    time.sleep(seconds)
    return x


def pid(_=None):
    return os.getpid()


def cwd_and_env(_=None):
    return os.getcwd(), os.environ.get("NBPOOL_TEST_MARKER")


def identity(x):
    return x


_STATE: dict[str, int] = {}


def init_state(value):
    _STATE["v"] = value


def read_state(_=None):
    return _STATE.get("v")


def bad_initializer():
    raise RuntimeError("initializer exploded")


# ---------------------------------------------------------------- the fault matrix


def boom(how: str) -> None:
    if how == "raise":
        raise ValueError("boom")
    if how == "exit":
        os._exit(7)
    if how == "segfault":
        ctypes.string_at(0)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError(how)


def _load_arg_bomb(how, stage):
    if stage == "arg_unpickle":
        boom(how)
    return ArgBomb(how, "done")


class ArgBomb:
    """An argument that fails while it is pickled (caller) or unpickled (worker)."""

    def __init__(self, how, stage):
        self.how, self.stage = how, stage

    def __reduce__(self):
        if self.stage == "arg_pickle":
            boom(self.how)
        return (_load_arg_bomb, (self.how, self.stage))


def _load_result_bomb(how, stage):
    if stage == "result_unpickle":
        boom(how)
    return ("unreachable", how, stage)


class ResultBomb:
    """A result that fails while it is pickled (worker) or unpickled (caller)."""

    def __init__(self, how, stage):
        self.how, self.stage = how, stage

    def __reduce__(self):
        if self.stage == "result_pickle":
            boom(self.how)
        return (_load_result_bomb, (self.how, self.stage))


def detonate(item):
    """Plain ints pass through (x * 10); a (how, stage) tuple or an ArgBomb acts at its stage."""
    if isinstance(item, int):
        return item * 10
    if isinstance(item, ArgBomb):
        return "arg-survived"
    how, stage = item
    if stage == "run":
        boom(how)
    return ResultBomb(how, stage)


# ---------------------------------------------------------------- robustness helpers


def sleep_then_mark(args):
    """Sleep, then leave a file behind: a file means the item ran to its end."""
    seconds, path = args
    time.sleep(seconds)
    with open(path, "w") as fh:
        fh.write("done")
    return path


def die_once(args):
    """Kill our own worker the first time (per marker file), succeed after that."""
    x, marker = args
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def always_die(x):
    os.kill(os.getpid(), signal.SIGKILL)


def die_at(x, bad=57, seconds=0.0):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    if seconds:
        time.sleep(seconds)
    return x


_HOARD: list[bytearray] = []


def hoard(mb):
    """Keep mb MiB alive in this worker (touching every page so it counts in RSS)."""
    block = bytearray(mb * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _HOARD.append(block)
    time.sleep(0.05)
    return os.getpid()


class HeavyToLoad:
    """An argument whose unpickling takes ``mb`` MiB for 3 s: a worker is over a memory limit
    while it loads its chunk, before any item runs."""

    def __init__(self, mb):
        self.mb = mb

    def __reduce__(self):
        return hog, (self.mb,)


def hog(mb):
    """Allocate mb MiB and hold it long enough to be seen."""
    block = bytearray(mb * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(3)
    return len(block)


def chatty(x, lines=50):
    for i in range(lines):
        print(f"item {x} line {i} " + "x" * 200)
    return x


def c_level_output(x):
    os.write(1, f"fd-level {x}\n".encode())
    os.system(f"echo subprocess {x}")
    print(f"to stderr {x}", file=__import__("sys").stderr)
    return x


def partial_line(x):
    print(f"no newline yet {x}", end="", flush=True)
    time.sleep(1.0)
    return x


def nap(seconds):
    time.sleep(seconds)
    return seconds


def spawn_sleep(args):
    """Start ``sleep 61`` (in our process group, or in a session of its own), write its pid to
    ``path``, then wait for it: a task whose subprocess must not outlive the worker."""
    import subprocess

    path, own_session = args
    child = subprocess.Popen(["sleep", "61"], start_new_session=own_session)
    with open(path + ".tmp", "w") as fh:
        fh.write(str(child.pid))
    os.rename(path + ".tmp", path)
    child.wait()
    return child.pid


def log_things(x):
    """Log at three levels, and an exception with its traceback."""
    import logging

    log = logging.getLogger("nbpool.tests.task")
    log.debug("debug %s", x)
    log.info("info %s", x)
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.exception("failed on %s", x)
    return x


def identity_in_worker(_=None):
    import multiprocessing

    parent = multiprocessing.parent_process()
    return (
        multiprocessing.current_process().name,
        None if parent is None else parent.pid,
        None if parent is None else parent.is_alive(),
    )


def say_without_newline(text):
    print(text, end="")
    return text


def log_worker_only_object(folder):
    """Log a record whose `extra=` holds an object of a class only this worker can import."""
    import importlib
    import logging
    import os
    import sys

    with open(os.path.join(folder, "worker_only_mod.py"), "w") as fh:
        fh.write("class Thing:\n    def __repr__(self):\n        return '<Thing>'\n")
    sys.path.insert(0, folder)
    mod = importlib.import_module("worker_only_mod")
    logging.getLogger("nbpool.tests.task").warning(
        "with extras", extra={"thing": mod.Thing(), "ids": [1, 2], "pair": ("a", 1.5)}
    )
    return 1
