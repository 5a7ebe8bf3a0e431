"""The worker process: receive chunks, run items, send results. Short and import-light.

Started by the kernel as ``python -c "...; from nbpool._worker import main; main()" SOCK SLOT``
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

The caller never sends a large message to a worker that is busy (see _dispatcher._capacity), so
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
import time
from collections import OrderedDict, deque

from ._functions import load_fn
from ._proctree import exit_with_tree
from ._protocol import (
    FN_CACHE_SIZE,
    STAGE_IDLE,
    STAGE_LOADING,
    STAGE_PICKLING,
    STAGE_RUNNING,
    TRACK_INDEX,
    TRACK_NONE,
    Cancel,
    Channel,
    ChunkDone,
    ChunkLoadFailed,
    FnLoadFailed,
    Hello,
    InitFailed,
    ItemFailure,
    LogRecord,
    Ready,
    RunChunk,
    Shutdown,
    readable,
)
from ._remote_errors import pack_exception
from ._serialize import dumps_data, loads_data, short_repr
from ._whooks import set_identity
from ._wlog import apply_levels as apply_log_levels
from ._wlog import install_hook as install_log_hook

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from typing import Any


def _tb_text(exc: BaseException) -> str:
    return pack_exception(exc, __name__)[1]


def _failure(index: int, exc: BaseException) -> ItemFailure:
    data, text, lost = pack_exception(exc, __name__)
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the failure
        message = short_repr(exc, 200)
    if len(message) > 200:
        message = message[:197] + "..."
    return ItemFailure(index, data, text, type(exc).__qualname__, message, lost)


def _run_items(
    fn: Any, kind: str, items: Any, start: int, slot: Any, track: int
) -> tuple[list, list[ItemFailure]]:
    results: list[Any] = []
    failures: list[ItemFailure] = []
    append = results.append
    it = iter(items)
    now = time.monotonic_ns
    # The tight inner loops run until an item raises; the failing item is len(results), and the
    # same iterator then resumes with the next item. Much cheaper than a try block per item.
    # slot[2] = index (and slot[3] = start time) costs ~60 ns an item, so the kernel asks for
    # it only where items are slow enough for that not to matter (RunChunk.track).
    while True:
        i = start + len(results)
        try:
            if track == TRACK_NONE:
                slot[2] = STAGE_RUNNING
                if kind == "map":
                    for x in it:
                        append(fn(x))
                elif kind == "star":
                    for x in it:
                        append(fn(*x))
                else:
                    for args, kwds in it:
                        append(fn(*args, **kwds))
            else:
                timed = track != TRACK_INDEX
                for j, x in enumerate(it, i):
                    if timed:
                        slot[3] = now()
                    slot[2] = j
                    if kind == "map":
                        append(fn(x))
                    elif kind == "star":
                        append(fn(*x))
                    else:
                        append(fn(*x[0], **x[1]))
            break
        except BaseException as exc:
            failures.append(_failure(start + len(results), exc))
            append(None)
    return results, failures


def _pack_results(results: list, failures: list[ItemFailure], start: int) -> tuple[Any, list]:
    try:
        data, buffers = dumps_data(results, to_caller=True)
        return data, buffers
    except Exception:
        pass
    # Slow path: find the results that cannot be pickled, fail just those, ship the rest.
    from ._errors import SerializationError

    for i, r in enumerate(results):
        try:
            dumps_data(r, to_caller=True)
        except Exception as exc:
            err = SerializationError(
                f"the result of item {start + i} is a {type(r).__name__} that cannot be pickled "
                f"({exc}); return plain data (numbers, strings, lists, dicts, arrays) instead"
            )
            failures.append(_failure(start + i, err))
            results[i] = None
    data, buffers = dumps_data(results, to_caller=True)
    return data, buffers


class _SendChannel(Channel):
    """The worker's channel: one sender at a time. The main thread sends results; a record
    that a task logs (in any thread, see _wlog) is sent from the thread that logged it."""

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


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a task may have replaced or closed them
            pass


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


def _take(ch: Channel, pending: deque, cancelled: set[int]) -> None:
    """Move messages from the socket to ``pending``: wait while there is nothing to run, then
    take every message already there. Cancels are noted at once, ahead of the chunks queued
    before them. A Cancel can arrive while we wait for work (the kernel sent it before it read
    our last ChunkDone): it is noted and we go on waiting."""
    while True:
        if pending and not readable([ch.fd], 0):
            return
        try:
            msg, buffers = ch.recv()
        except (EOFError, OSError):
            exit_with_tree(0)  # the caller closed our socket or died
        if isinstance(msg, Cancel):
            cancelled.add(msg.job_id)
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
    wid = hello.worker_id
    set_identity(wid, os.getppid(), lifeline)
    install_log_hook(lambda record: ch.send(LogRecord(wid, record)))
    apply_log_levels(hello.log_levels)
    own_path = sys.path[0]
    sys.path[:] = list(hello.sys_path) + ([own_path] if own_path not in hello.sys_path else [])

    if hello.initializer is not None:
        try:
            init = load_fn(hello.initializer)
            initargs = loads_data(buffers[0], buffers[1:])
            init(*initargs)
        except BaseException as exc:
            data, text, lost = pack_exception(exc, __name__)
            _flush_std()
            ch.send(InitFailed(wid, data, text, lost))
            os._exit(3)
    _flush_std()  # what the initializer printed is in the pipes before Ready (see _inbox)
    ch.send(Ready(wid, os.getpid()))

    pending: deque = deque()
    cancelled: set[int] = set()
    fns: OrderedDict[bytes, Any] = OrderedDict()

    while True:
        _take(ch, pending, cancelled)
        msg, buffers = pending.popleft()
        if isinstance(msg, Shutdown):
            break
        assert isinstance(msg, RunChunk)
        # The function and the log levels are applied even for a cancelled job's chunk: the
        # kernel keeps a mirror of what this worker holds (_scheduling.fn_for) and will not send
        # them again.
        slot[0], slot[1], slot[2] = msg.job_id, msg.chunk_id, STAGE_LOADING
        if msg.log_levels is not None:
            apply_log_levels(msg.log_levels)
        if msg.fn is not None:
            try:
                fns[msg.fn_digest] = load_fn(msg.fn)
            except BaseException as exc:
                fns.pop(msg.fn_digest, None)
                ch.send(
                    FnLoadFailed(wid, msg.job_id, msg.chunk_id, pack_exception(exc, __name__)[1])
                )
                continue
            if len(fns) > FN_CACHE_SIZE:
                fns.popitem(last=False)
        fn = fns.get(msg.fn_digest)
        if fn is None:  # its load failed earlier; the kernel fails the job on our word
            ch.send(FnLoadFailed(wid, msg.job_id, msg.chunk_id, "function not loaded"))
            continue
        fns.move_to_end(msg.fn_digest)
        if msg.job_id in cancelled:
            slot[2] = STAGE_IDLE
            ch.send(ChunkDone(wid, msg.job_id, msg.chunk_id, 0.0, skipped=True))
            continue
        t0 = time.perf_counter()
        try:
            items = loads_data(buffers[0], buffers[1:])
        except BaseException as exc:
            ch.send(
                ChunkLoadFailed(wid, msg.job_id, msg.chunk_id, pack_exception(exc, __name__)[1])
            )
            continue
        del buffers
        results, failures = _run_items(fn, msg.kind, items, msg.start, slot, msg.track)
        del items
        slot[2] = STAGE_PICKLING
        data, out = _pack_results(results, failures, msg.start)
        del results
        elapsed = time.perf_counter() - t0
        _flush_std()  # a partial line too: the kernel reads the pipes when ChunkDone comes
        ch.send(ChunkDone(wid, msg.job_id, msg.chunk_id, elapsed, tuple(failures)), [data, *out])
        slot[2] = STAGE_IDLE
    _flush_std()
