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
