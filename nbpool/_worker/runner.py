"""The worker side that every engine shares: greet, load functions, run chunks, report.

A local worker process (``_engines.local_main``) and a Ray actor (``_engines.ray``) both hold one
``Runner`` and
hand it the messages of ``_worker.protocol``; it answers with messages. What differs between them is
only how messages arrive and leave (a socket, actor calls) and how output and the item slot
reach the caller (pipes and shared memory, or polled by the driver). Because this code is the
same, so are the semantics: functions shipped by value into a per-worker namespace
(``_worker.functions``), the initializer, exceptions shipped back as data with their remote
traceback
(``_worker.remote_errors``), per-item tracking in the slot, a cancelled job's chunks skipped.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from functools import partial

from .functions import load_fn
from .protocol import (
    FN_CACHE_SIZE,
    SLOWEST_PER_CHUNK,
    STAGE_IDLE,
    STAGE_LOADING,
    STAGE_PICKLING,
    STAGE_RUNNING,
    TRACK_INDEX,
    TRACK_INSIGHTS,
    TRACK_NONE,
    ChunkDone,
    ChunkLoadFailed,
    ExitDone,
    FnLoadFailed,
    Hello,
    InitFailed,
    ItemFailure,
    LogRecord,
    Ready,
    RunChunk,
)
from .remote_errors import pack_exception
from .serialize import dumps_data, loads_data, short_repr
from .whooks import set_identity
from .wlog import apply_levels as apply_log_levels
from .wlog import install_hook as install_log_hook

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["Runner", "flush_std"]

# Result segments: at most this many kept open while the caller maps them (each holds an fd)
MAX_LENT = 8


class ThreadStopped(BaseException):
    """Raised inside a threading-engine worker that is being stopped (a timeout, an
    interrupt, terminate): it ends the worker's thread, it is no item's failure."""


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
            if isinstance(exc, ThreadStopped):  # a threading-engine worker being stopped
                raise
            failures.append(_failure(start + len(results), exc))
            append(None)
    return results, failures


def _run_items_timed(
    fn: Any, kind: str, items: Any, start: int, slot: Any
) -> tuple[list, list[ItemFailure], tuple[tuple[int, float], ...]]:
    """``_run_items`` with every item timed (``enable_insights``): also the chunk's slowest
    items, as (index, seconds). Clear and slower by a clock read and a try block an item."""
    import heapq

    results: list[Any] = []
    failures: list[ItemFailure] = []
    times: list[tuple[float, int]] = []
    now = time.monotonic_ns
    for i, x in enumerate(items, start):
        t0 = now()
        slot[3] = t0
        slot[2] = i
        try:
            if kind == "map":
                results.append(fn(x))
            elif kind == "star":
                results.append(fn(*x))
            else:
                results.append(fn(*x[0], **x[1]))
        except BaseException as exc:
            if isinstance(exc, ThreadStopped):
                raise
            failures.append(_failure(i, exc))
            results.append(None)
        times.append(((now() - t0) / 1e9, i))
    slowest = heapq.nlargest(SLOWEST_PER_CHUNK, times)
    return results, failures, tuple((i, seconds) for seconds, i in slowest)


def _take_refs(msg: RunChunk, buffers: list[Any]) -> None:
    from . import refs

    refs.forget(msg.drop)
    # n buffers of its pickle each; -1: one buffer that is the object itself (Ray resolved it
    # from its object store, see _engines.ray.Stored)
    first = at = len(buffers) - sum(max(n, 1) for _, n in msg.refs)
    for ref_id, n in msg.refs:
        if n < 0:
            refs.receive_object(ref_id, buffers[at])
        else:
            refs.receive(ref_id, buffers[at], buffers[at + 1 : at + n])
        at += max(n, 1)
    del buffers[first:]


def _pack_results(results: list, failures: list[ItemFailure], start: int) -> tuple[Any, list]:
    try:
        data, buffers = dumps_data(results, to_caller=True)
        return data, buffers
    except Exception:
        pass
    # Slow path: find the results that cannot be pickled, fail just those, ship the rest.
    from .._mp_errors import UnpicklableResultError
    from .serialize import short_repr

    for i, r in enumerate(results):
        try:
            dumps_data(r, to_caller=True)
        except Exception as exc:
            err = UnpicklableResultError(
                f"the result of item {start + i} is a {type(r).__name__} that cannot be pickled "
                f"({exc}); return plain data (numbers, strings, lists, dicts, arrays) instead",
                repr(exc),
                short_repr(r),
            )
            failures.append(_failure(start + i, err))
            results[i] = None
    data, buffers = dumps_data(results, to_caller=True)
    return data, buffers


def flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a task may have replaced or closed them
            pass


def _pin(cpus: tuple[int, ...]) -> None:
    """Pin this process to ``cpus``; an id this node does not have is a ValueError naming it
    (on a cluster node, whose CPUs the caller could not check)."""
    import os

    have = os.sched_getaffinity(0)
    missing = [c for c in cpus if c not in have]
    if missing:
        raise ValueError(
            f"cpu_ids: this node has no CPU {missing[0]} for this worker (it has {sorted(have)})"
        )
    os.sched_setaffinity(0, cpus)


class Runner:
    """One worker's state: its id, the functions it holds, the jobs cancelled under it.

    ``slot`` is where it writes which item it is on: ``[job, chunk, stage or index, start ns]``
    (shared memory in a local worker, a plain array that the driver polls in an actor).
    ``send_log`` ships a ``LogRecord`` from whichever thread logged it.
    """

    def __init__(
        self, slot: Any, send_log: Callable[[LogRecord], None], thread: bool = False
    ) -> None:
        # thread: a threading-engine worker (_engines.threads), in the caller's own process:
        # nothing process-wide is touched (identity, logging, sys.path), nothing is pickled
        self.thread = thread
        self.slot = slot
        self.caller = 0  # the caller's pid (Hello): whose /proc fds hold shared memory
        self.results_shm = False  # Hello.results_shm: large result buffers in shared memory
        self.arena_cap = 0  # Hello.arena_cap: bytes of free result segments kept
        # result segments (_shm): those the caller may map, those it maps (until its Reuse),
        # and free ones for later results (an Arena, made with the first)
        self._held: dict[tuple[int, str], Any] = {}  # (fd, name) -> _shm._Seg
        self._lent: dict[tuple[int, str], Any] = {}
        self._arena: Any = None
        self.wid = -1
        self.fns: OrderedDict[bytes, Any] = OrderedDict()
        self.cancelled: set[int] = set()
        self._send_log = send_log
        self.prefix: tuple[Any, ...] = ()  # what each task gets before its item (Hello)
        self._exit_hook: Any = None  # Hello.worker_exit, loaded when it runs

    def hello(
        self,
        hello: Hello,
        buffers: list[Any],
        pid: int,
        parent: int,
        lifeline: int,
        host: str = "",
        node: str = "",
    ) -> InitFailed | Ready:
        """Set up from the first message; run the initializer. ``InitFailed``: exit after it."""
        from .current import WorkerInfo, set_current

        wid = self.wid = hello.worker_id
        self.caller = parent
        self.results_shm = hello.results_shm
        self.arena_cap = hello.arena_cap
        host, node = host or hello.host, node or hello.node
        if self.thread:
            import socket

            set_current(WorkerInfo(wid, pid, socket.gethostname(), node), thread=True)
        else:
            set_identity(wid, parent, lifeline)
            set_current(WorkerInfo(wid, pid, host, node))
            install_log_hook(lambda record: self._send_log(LogRecord(wid, record)))
            apply_log_levels(hello.log_levels)
        if hello.sys_path and not self.thread:
            own_path = sys.path[0]
            sys.path[:] = list(hello.sys_path) + (
                [own_path] if own_path not in hello.sys_path else []
            )
        n = hello.init_buffers
        if hello.env:  # before the initializer or a task can initialise CUDA
            import os

            os.environ.update(hello.env)
        try:
            if hello.shm:  # large buffers of the shared objects: mapped, not copied
                from .._shm import attach

                attach(buffers, hello.shm, parent)
            if hello.cpu_ids:
                _pin(hello.cpu_ids)
            if hello.worker_args:
                # Shared objects are unpickled once, here: every item gets the same object.
                shared = None
                if hello.stored_shared:  # resolved by Ray from its object store
                    shared = buffers[n]
                elif "shared" in hello.worker_args:
                    shared = loads_data(buffers[n], buffers[n + 1 :])
                got: dict[str, Any] = {"id": wid, "shared": shared, "state": {}}
                self.prefix = tuple(got[a] for a in hello.worker_args)
            if hello.initializer is not None:
                init = load_fn(hello.initializer)
                initargs = loads_data(buffers[0], buffers[1:n])
                init(*initargs)
            if hello.worker_init is not None:
                load_fn(hello.worker_init)(*self.prefix)
            self._exit_hook = hello.worker_exit
        except BaseException as exc:
            data, text, lost = pack_exception(exc, __name__)
            flush_std()
            return InitFailed(wid, data, text, lost)
        flush_std()  # what the initializer printed is out before Ready (see _driver.inbox)
        return Ready(wid, pid, host, node)

    def exit(self) -> tuple[ExitDone, list[Any]]:
        """The answer to ``Shutdown``: run the ``worker_exit`` hook, if any, and ship what it
        returned (or raised)."""
        payload, self._exit_hook = self._exit_hook, None
        if payload is None:
            return ExitDone(self.wid), []
        try:
            result = load_fn(payload)(*self.prefix)
            data, out = dumps_data(result, to_caller=True)
        except BaseException as exc:
            error, text, lost = pack_exception(exc, __name__)
            flush_std()
            return ExitDone(self.wid, True, error, text, lost), []
        flush_std()
        return ExitDone(self.wid, True), [data, *out]

    def run_chunk(self, msg: RunChunk, buffers: list[Any]) -> tuple[Any, list[Any]]:
        """The reply to a ``RunChunk`` and its buffers (the pickled results)."""
        wid, slot, fns = self.wid, self.slot, self.fns
        # The function and the log levels are applied even for a cancelled job's chunk: the
        # kernel keeps a mirror of what this worker holds (_driver.scheduling.fn_for) and will not
        # send
        # them again.
        slot[0], slot[1], slot[2] = msg.job_id, msg.chunk_id, STAGE_LOADING
        mapped: list[Any] = []  # (weak references to the mappings of its arguments)
        forked = 0
        if msg.shm:
            from .._shm import attach, forks

            forked = forks()
            own = len(buffers) - sum(max(n, 1) for _, n in msg.refs)  # (not the put objects')
            mapped = [ref for i, ref in attach(buffers, msg.shm, self.caller) if i < own]
        if msg.refs or msg.drop:  # also for a skipped chunk: the kernel mirrors what we hold
            _take_refs(msg, buffers)  # (their buffers leave the list: the items' are left)
        if msg.log_levels is not None and not self.thread:
            apply_log_levels(msg.log_levels)
        if msg.fn is not None:
            try:
                fns[msg.fn_digest] = load_fn(msg.fn)
            except BaseException as exc:
                fns.pop(msg.fn_digest, None)
                slot[2] = STAGE_IDLE
                tb = pack_exception(exc, __name__)[1]
                return FnLoadFailed(wid, msg.job_id, msg.chunk_id, tb), []
            if len(fns) > FN_CACHE_SIZE:
                fns.popitem(last=False)
        fn = fns.get(msg.fn_digest)
        if fn is None:  # its load failed earlier; the kernel fails the job on our word
            slot[2] = STAGE_IDLE
            return FnLoadFailed(wid, msg.job_id, msg.chunk_id, "function not loaded"), []
        fns.move_to_end(msg.fn_digest)
        if self.prefix:  # worker id, shared objects, worker state (see Hello.worker_args)
            fn = partial(fn, *self.prefix)
        if msg.job_id in self.cancelled:
            slot[2] = STAGE_IDLE
            return ChunkDone(wid, msg.job_id, msg.chunk_id, 0.0, skipped=True), []
        t0 = time.perf_counter()
        try:
            items = loads_data(buffers[0], buffers[1:])
        except BaseException as exc:
            slot[2] = STAGE_IDLE
            tb = pack_exception(exc, __name__)[1]
            return ChunkLoadFailed(wid, msg.job_id, msg.chunk_id, tb), []
        del buffers[:]
        slowest: tuple[tuple[int, float], ...] = ()
        if msg.track == TRACK_INSIGHTS:
            results, failures, slowest = _run_items_timed(fn, msg.kind, items, msg.start, slot)
        else:
            results, failures = _run_items(fn, msg.kind, items, msg.start, slot, msg.track)
        del items
        slot[2] = STAGE_PICKLING
        data, out = _pack_results(results, failures, msg.start)
        del results
        shm: tuple[tuple[int, int, int, str], ...] = ()
        if self.results_shm and out:
            out, shm = self._share(out)
        elapsed = time.perf_counter() - t0
        flush_std()  # a partial line too: the kernel reads the output when ChunkDone comes
        # (slot[2] stays STAGE_PICKLING until the transport has sent the results)
        # Nothing here holds the arguments' memory any more (the task kept no array of it, and
        # started no process that may have): the caller may write other arguments there
        unmapped = False
        if mapped:
            from .._shm import forks

            unmapped = forks() == forked and all(ref() is None for ref in mapped)
        done = ChunkDone(
            wid, msg.job_id, msg.chunk_id, elapsed, tuple(failures), False, slowest, shm, unmapped
        )
        return done, [data, *out]

    def _share(self, out: list[Any]) -> tuple[list[Any], tuple[tuple[int, int, int, str], ...]]:
        """Large result buffers into shared memory (``nbpool._shm``), which the caller maps:
        one copy here, none through the socket. Each memfd stays open until the caller's
        ``Release`` (it maps them when it reads ChunkDone); if this process dies first, the
        caller runs the chunk again."""
        from .. import _shm

        if self._arena is None:
            self._arena = _shm.Arena(self.arena_cap, mapped=False)
        out, segments = _shm.share(out, self._arena)
        if segments is None:
            return out, ()
        for seg, _ in segments.segs.values():
            self._held[seg.fd, seg.name] = seg
        described = _shm.describe(segments, offset=1)
        segments.segs = {}  # (ours to close now: release)
        return out, described

    def release(self, fds: tuple[tuple[int, str], ...], lent: bool) -> None:
        """The caller has mapped these result segments (``lent``: and will say when it no
        longer does), or could not, or will not (it was not lent: close them), or no longer
        maps them but cannot say nobody does (a lent one, not lent: close it)."""
        for key in fds:
            seg = self._held.pop(key, None)
            if seg is None:
                seg, lent = self._lent.pop(key, None), False
            if seg is None:
                continue
            if not lent:
                seg.close()
                continue
            self._lent[key] = seg
            # (a few only: each holds an fd while the caller keeps its result, maybe for hours;
            # the one lent longest ago is the likeliest to be kept)
            if len(self._lent) > MAX_LENT:
                self._lent.pop(next(iter(self._lent))).close()

    def reuse(self, fds: tuple[tuple[int, str], ...]) -> None:
        for key in fds:
            seg = self._lent.pop(key, None)
            if seg is not None:
                self._arena.give(seg)

    def trim(self) -> float:
        """Close the free result segments unused for a while. While some are left: how long to
        wait before the next trim (0.0 when none is)."""
        if self._arena is None or not self._arena.trim():
            return 0.0
        return float(self._arena.keep_s)
