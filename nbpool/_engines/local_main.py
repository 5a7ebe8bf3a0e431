"""The worker process: receive chunks, run items, send results. Short and import-light.

Started by the kernel as ``python -c "...; from nbpool._engines.local_main import main; main()"
SOCK SLOT LIFELINE``
(a fresh interpreter, never a fork of the kernel): SOCK is its end of an AF_UNIX socket pair,
SLOT a small shared-memory file in which it writes which item it is on, so that the kernel knows
exactly which item a worker was running when it died or ran past its timeout, without a message
per item. Its stdout and stderr are pipes that the kernel reads, so output survives a crash.

Two threads:
* the main thread reads the socket, runs items and catches everything per item, so a failure
  is data, not a crash. Between chunks it takes every message already waiting, so a Cancel sent
  after a queued chunk is seen before that chunk runs;
* a watchdog blocks on a "lifeline" pipe whose write end only the caller holds and never writes:
  when the caller exits, crashes or is killed, it reads EOF and ends the process at once, busy
  or not, so no worker outlives its caller.

The caller never sends a large message to a worker that is busy (see _driver.dispatcher._capacity),
so
its sends cannot block on a worker that is itself blocked sending a large result.

SIGINT is ignored: Jupyter's interrupt goes to the kernel's whole process group and is the
kernel's to handle.
"""

from __future__ import annotations

import _signal  # not `signal`: its enums cost a worker ~0.4 ms of start-up
import _thread  # not `threading`: one bare thread needs none of it (start-up cost)
import mmap
import os
import sys
from collections import deque

from .._worker.protocol import (
    STAGE_IDLE,
    Cancel,
    Channel,
    Hello,
    InitFailed,
    Release,
    Reuse,
    RunChunk,
    Shutdown,
    readable,
)
from .._worker.runner import Runner, flush_std
from .proctree import exit_with_tree

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from typing import Any


class _SendChannel(Channel):
    """The worker's channel: one sender at a time. The main thread sends results; a record
    that a task logs (in any thread, see _worker.wlog) is sent from the thread that logged it."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self._lock = _thread.allocate_lock()
        self._owner = 0

    def send(self, msg: Any, buffers: list[Any] | tuple[Any, ...] = ()) -> None:
        me = _thread.get_ident()
        if self._owner == me:  # a record logged while this thread sends (a __reduce__ that logs)
            raise RuntimeError("nbpool: cannot send a log record from inside a send")
        with self._lock:
            self._owner = me
            try:
                super().send(msg, buffers)
            finally:
                self._owner = 0


def _watch_parent(lifeline: int) -> None:
    """Block on the lifeline pipe (the caller never writes to it); EOF means the caller is gone.

    This thread never wakes before that, so it costs the worker nothing: no GIL hand-offs,
    unlike a thread that would read the socket (measured: ~10% on round trips here).
    """
    try:
        while os.read(lifeline, 1):
            pass
    finally:
        # Busy or not: nobody will read what we compute. What our tasks started goes too.
        exit_with_tree(0)


def _take(ch: Channel, pending: deque, runner: Runner) -> None:
    """Move messages from the socket to ``pending``: wait while there is nothing to run, then
    take every message already there. Cancels are noted at once, ahead of the chunks queued
    before them. A Cancel can arrive while we wait for work (the kernel sent it before it read
    our last ChunkDone): it is noted and we go on waiting."""
    while True:
        if pending and not readable([ch.fd], 0):
            return
        # Idle with free result segments: they are closed after a while (memory of this
        # machine's, held for results that may never come)
        while not pending and (wait := runner.trim()) and not readable([ch.fd], wait):
            pass
        try:
            msg, buffers = ch.recv()
        except (EOFError, OSError):
            exit_with_tree(0)  # the caller closed our socket or died
        if isinstance(msg, Cancel):
            runner.cancelled.add(msg.job_id)
        elif isinstance(msg, Release):  # (results the caller has mapped: no need to wait)
            runner.release(msg.fds, msg.lent)
        elif isinstance(msg, Reuse):
            runner.reuse(msg.fds)
        else:
            pending.append((msg, buffers))


def main() -> None:
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except Exception:
            pass
    ch = _SendChannel(int(sys.argv[1]))
    lifeline = int(sys.argv[3])
    _thread.start_new_thread(_watch_parent, (lifeline,))
    slot_fd = int(sys.argv[2])
    slot = memoryview(mmap.mmap(slot_fd, 64)).cast("q")  # [job, chunk, stage/index, start ns]
    os.close(slot_fd)
    try:
        hello, buffers = ch.recv()
    except EOFError:
        exit_with_tree(0)
    assert isinstance(hello, Hello)
    runner = Runner(slot, ch.send)
    # (a forkserver's worker is told who the caller is: its parent is the server)
    caller = int(sys.argv[4]) if len(sys.argv) > 4 else os.getppid()
    reply = runner.hello(hello, buffers, os.getpid(), caller, lifeline)
    ch.send(reply)
    if isinstance(reply, InitFailed):
        os._exit(3)

    pending: deque = deque()
    while True:
        _take(ch, pending, runner)
        msg, buffers = pending.popleft()
        if isinstance(msg, Shutdown):
            done, out = runner.exit()  # the worker_exit hook, if any
            ch.send(done, out)
            break
        assert isinstance(msg, RunChunk)
        reply, out = runner.run_chunk(msg, buffers)
        del buffers
        ch.send(reply, out)
        del out
        slot[2] = STAGE_IDLE
        runner.trim()  # (a worker that is never idle trims too)
    flush_std()
