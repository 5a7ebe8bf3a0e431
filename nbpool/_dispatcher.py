"""The local engine: one dispatcher thread that owns every worker.

::

  caller threads (Pool methods)         dispatcher thread (one per pool)            workers
  ─────────────────────────────         ────────────────────────────────            ───────
  validate, pickle fn (pre-flight)
  Job ──► commands deque ──► wake pipe ─► select(timeout = next timer) over
  KeyboardInterrupt ─► Cancel ─┘          · wake pipe  (submit, cancel, close, terminate)
                                          · sockets    ◄── Ready / ChunkDone / failures ──
                                          · pidfds     ◄── (process exit)
                                          · stdout/err ◄── lines ──► [w1 pid 4711] ...
                                          timers: task_timeout, memory check, cancel grace,
                                                  partial output lines, progress tick
                                          progress tick (_progress): snapshot ──► view thread
                                            (_views: widget / tqdm, never waited on)
                                          schedule: an idle worker pulls the next chunk
                                            ─── RunChunk (+ pickled items) ──────────────►
                                          fill result objects, run callbacks
  AsyncResult.get() ◄── Event / Condition ┘
                                          a dead worker: read which item it was on from its
                                          shared slot, fail (or retry) that item, requeue the
                                          rest, respawn it

The thread's code is this module (loop, commands, spawning, scheduling) and three mixins of
``Engine``: ``_inbox`` (messages and output from workers), ``_faults`` (cancel, timeouts,
memory limits, dead workers) and ``_progress`` (snapshots for the dashboard). Everything that
touches a socket, a process or a Job happens in this thread, so none of that state needs a lock;
caller threads only append to ``_commands`` and write a byte to the wake pipe.
A worker's death is seen in the same ``select()`` as its results: its socket reaches EOF and its
pidfd becomes readable. No polling loop, no sleep: ``select()`` wakes for I/O or the next timer.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import selectors
import sys
import threading
import weakref

from ._errors import PoolClosedError, SerializationError
from ._faults import MEMORY_CHECK_S, FaultsMixin
from ._inbox import InboxMixin
from ._jobs import Chunk, Job
from ._message import Message
from ._output import LineBuffer, TerminalOutput
from ._procs import Worker
from ._progress import ProgressMixin
from ._protocol import (
    FN_CACHE_SIZE,
    TRACK_INDEX,
    TRACK_NONE,
    TRACK_TIME,
    Hello,
    RunChunk,
    Shutdown,
)
from ._serialize import FnPayload, dumps_data, short_repr
from ._timers import Timers

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# Largest chunk (pickled) sent to a worker that is still busy: well under the socket buffer.
PREFETCH_MAX_BYTES = 256 * 1024
# Items faster than this are not tracked one by one (the slot write would cost more than them).
TRACK_MIN_ITEM_S = 5e-6
# Items at least this slow also get their start time in the slot (~50 ns more an item): the
# dashboard then shows exactly how long a worker has been on its item.
TIME_MIN_ITEM_S = 1e-3

# Engines alive in this process, terminated at interpreter exit.
_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()


class Submit(Message):
    job: Job


class CancelJob(Message):
    job_id: int
    reason: BaseException


class Watch(Message):
    progress: Any  # a _progress.JobProgress for the whole pool


class Close(Message):
    pass


class Terminate(Message):
    pass


class Engine(InboxMixin, FaultsMixin, ProgressMixin):
    """Owns the worker processes and the dispatcher thread of one local pool."""

    def __init__(
        self,
        processes: int,
        initializer: FnPayload | None,
        initargs: tuple[Any, ...],
        maxtasksperchild: int | None,
        max_memory: int | None = None,
        output: Any = None,
        lifeline: tuple[int, int] | None = None,
        started: Sequence[Worker] = (),
    ) -> None:
        self.nworkers = processes
        self._initializer = initializer
        self._initargs = dumps_data(tuple(initargs)) if initializer is not None else None
        self._maxtasks = maxtasksperchild
        self._max_memory = max_memory
        self.output = output or TerminalOutput()
        self._commands: collections.deque[Any] = collections.deque()
        # Guards the wake pipe's write end: once the dispatcher has closed it, a late command
        # (a finalizer, atexit) must not write to that fd number, which may belong to someone
        # else by then. Seen here: a stale write corrupted another pool's pipe.
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Every worker holds the read end; only we hold the write end and never write: when this
        # process ends, however it ends, the workers read EOF and exit (see _worker).
        self._lifeline_r, self._lifeline_w = lifeline if lifeline else os.pipe()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._timers = Timers()
        self._slots: list[Worker | None] = [None] * processes
        self._all: set[Worker] = set()  # every worker process not yet reaped (retiring ones too)
        self._startup_failures = [0] * processes
        self._jobs: dict[int, Job] = {}
        self._pending: collections.deque[Job] = collections.deque()
        self._closing = False
        self._terminating = False
        self._views = None  # the progress view thread (_views), started on first use
        self._tick_gen = 0
        self._tick_due: float | None = None
        self._restarted_at: dict[int, tuple[float, str]] = {}
        self._pool_view = None
        self._slot_done = [0] * processes
        self._failed_total = 0
        for i in range(processes):
            self._spawn(i, started[i] if i < len(started) else None)
        if max_memory is not None:
            self._timers.call_later(MEMORY_CHECK_S, self._check_memory)
        self._thread = threading.Thread(target=self._run, name="nbpool-dispatcher", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # ------------------------------------------------------------------ caller side

    def submit(self, job: Job) -> None:
        self._command(Submit(job))

    def cancel(self, job_id: int, reason: BaseException) -> None:
        self._command(CancelJob(job_id, reason))

    def watch(self, progress: Any) -> None:
        self._command(Watch(progress))

    def close(self) -> None:
        self._command(Close())

    def terminate(self) -> None:
        self._command(Terminate())

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._slots if w is not None and not w.dead]

    def _command(self, cmd: Any) -> None:
        with self._wake_lock:
            if self._wake_w < 0:  # the dispatcher is gone: nobody would ever answer
                if isinstance(cmd, Submit):
                    cmd.job.sink._abort(PoolClosedError("the pool's workers were shut down"))
                return
            self._commands.append(cmd)
            # A full pipe (BlockingIOError) already means "wake up": nothing is lost.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"x")

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            while True:
                self._drain_commands()
                if self._terminating:
                    break
                self._respawn()
                self._schedule()
                if self._closing and not self._jobs:
                    if not self._all:
                        break
                    for w in list(self._all):
                        if not w.retiring:
                            w.retiring = True
                            self._send(w, Shutdown(w.wid))
                for key, _ in self._sel.select(self._timers.timeout()):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        continue
                    kind, w, *extra = key.data
                    if w.dead:
                        continue
                    if kind == "out":
                        self._read_output(w, extra[0])
                    elif kind == "pidfd":
                        self._drain(w)
                        self._on_death(w)
                    elif not self._read(w):
                        self._on_death(w)
                self._timers.run_due()
        except BaseException:  # a bug here must not leave callers waiting forever
            import traceback  # only on this path: it costs ~5 ms to import

            traceback.print_exc()
            err = RuntimeError("nbpool's dispatcher failed; see the traceback printed above")
            for job in list(self._jobs.values()):
                job.sink._abort(err)
        finally:
            self._teardown()

    def _drain_commands(self) -> None:
        while self._commands:
            cmd = self._commands.popleft()
            if isinstance(cmd, Submit):
                self._jobs[cmd.job.id] = cmd.job
                self._pending.append(cmd.job)
                self._progress_submitted(cmd.job)
            elif isinstance(cmd, CancelJob):
                self._cancel(cmd.job_id, cmd.reason)
            elif isinstance(cmd, Watch):
                self._watch(cmd.progress)
            elif isinstance(cmd, Close):
                self._closing = True
            elif isinstance(cmd, Terminate):
                self._terminating = True

    # ------------------------------------------------------------------ workers

    def _spawn(self, slot: int, w: Worker | None = None) -> None:
        """Start a worker for ``slot`` (or adopt one the Pool started early) and greet it."""
        if w is None:
            w = Worker(slot, self._lifeline_r)
        if self._maxtasks is not None:
            w.budget = self._maxtasks
        self._slots[slot] = w
        self._all.add(w)
        self._sel.register(w.ch.fileno(), selectors.EVENT_READ, ("sock", w))
        if w.pidfd is not None:
            self._sel.register(w.pidfd, selectors.EVENT_READ, ("pidfd", w))
        w.line_bufs = {}  # type: ignore[attr-defined]
        for fd in w.out_fds:
            os.set_blocking(fd, False)
            w.line_bufs[fd] = LineBuffer()  # type: ignore[attr-defined]
            self._sel.register(fd, selectors.EVENT_READ, ("out", w, fd))
        buffers: list[Any] = []
        if self._initializer is not None:
            assert self._initargs is not None
            data, oob = self._initargs
            buffers = [data, *oob]
            w.globals = {name: digest for name, digest, _ in self._initializer.globals}
        self._send(w, Hello(slot, tuple(sys.path), self._initializer), buffers)

    def _respawn(self) -> None:
        work_waiting = any(job.has_work() for job in self._pending)
        for i, w in enumerate(self._slots):
            if w is not None or self._terminating:
                continue
            if self._closing and not self._jobs:
                continue
            # A worker that died while starting is replaced only when there is work for it:
            # a broken environment must not turn into a respawn loop that burns a core.
            if self._startup_failures[i] and not work_waiting:
                continue
            self._spawn(i)

    def _send(self, w: Worker, msg: Any, buffers: list[Any] | tuple[Any, ...] = ()) -> bool:
        try:
            w.ch.send(msg, buffers)
            return True
        except OSError:
            return False  # the worker is gone; its socket EOF / pidfd reports the death

    def _retire(self, w: Worker) -> None:
        """Let it finish what it has and exit; a fresh worker takes its slot now."""
        w.retiring = True
        self._send(w, Shutdown(w.wid))
        if self._slots[w.wid] is w:
            self._slots[w.wid] = None

    # ------------------------------------------------------------------ scheduling

    def _schedule(self) -> None:
        while self._pending:
            job = self._pending[0]
            if not job.has_work():
                self._pending.popleft()
                self._maybe_finish(job)
                continue
            candidates = [w for w in self._slots if w is not None and self._capacity(w, job)]
            if not candidates:
                return
            self._dispatch(job, min(candidates, key=lambda w: len(w.inflight)))

    def _capacity(self, w: Worker, job: Job) -> bool:
        if w.dead or w.retiring or w.budget == 0:
            return False
        if not w.inflight:
            return True
        # A second chunk in flight hides the round trip, but only
        # * for short chunks: a queued long item would wait behind its neighbour while another
        #   worker sits idle;
        # * for small ones: the worker reads its socket only between chunks, so a large send to
        #   a busy worker would block this thread while that worker may be blocked sending us a
        #   large result (a deadlock);
        # * of the same job, whose chunks we have measured.
        if len(w.inflight) == 1:
            (c,) = w.inflight.values()
            est = job.est
            return (
                c.job is job
                and est is not None
                and est * c.count < 0.1
                and job.last_bytes < PREFETCH_MAX_BYTES
                and job.task_timeout is None
            )
        return False

    def _dispatch(self, job: Job, w: Worker) -> None:
        start, items = job.cut(self.nworkers, w.budget)
        src = job.source
        if src.error is not None and src.exhausted and not job.length_sent:
            # The input iterable raised: that exception is the result at its position.
            job.deliver(src.pos, [None], {src.pos: src.error})
            job.sink._set_length(src.pos + 1)
            job.length_sent = True
        if not len(items):
            self._maybe_finish(job)
            return
        try:
            data, oob = dumps_data(items)
        except Exception:
            self._split_unpicklable(job, start, items)
            return
        job.last_bytes = len(data) + sum(memoryview(b).nbytes for b in oob)
        if job.task_timeout is not None:
            track = TRACK_TIME
            self._timers.call_later(job.task_timeout, lambda: self._check_timeout(w))
        elif job.est is not None and job.est < TRACK_MIN_ITEM_S:
            track = TRACK_NONE
        elif job.est is not None and job.est < TIME_MIN_ITEM_S:
            track = TRACK_INDEX
        else:  # slow items, or not measured yet (probe chunks are small)
            track = TRACK_TIME
        payload = self._fn_for(job, w)
        job.next_chunk_id += 1
        chunk = Chunk(job, job.next_chunk_id, start, items, track)
        msg = RunChunk(
            job.id, chunk.chunk_id, start, len(items), job.kind, payload, job.fn.digest, track
        )
        w.inflight[(job.id, chunk.chunk_id)] = chunk
        job.inflight += 1
        if w.budget is not None:
            w.budget -= len(items)
        self._send(w, msg, [data, *oob])

    def _fn_for(self, job: Job, w: Worker) -> FnPayload | None:
        """The function payload to send: nothing if the worker holds it with the same globals."""
        same = {name for name, digest, _ in job.fn.globals if w.globals.get(name) == digest}
        if job.fn.digest in w.fns and len(same) == len(job.fn.globals):
            w.fns.move_to_end(job.fn.digest)
            return None
        for name, digest, _ in job.fn.globals:
            w.globals[name] = digest
        w.fns[job.fn.digest] = None
        w.fns.move_to_end(job.fn.digest)
        if len(w.fns) > FN_CACHE_SIZE:
            w.fns.popitem(last=False)
        return job.fn.without_globals(same) if same else job.fn

    def _requeue(self, job: Job, start: int, items: Any) -> None:
        if len(items) and not job.cancelled:
            job.retry.appendleft((start, items))
            if job not in self._pending:
                self._pending.appendleft(job)

    def _split_unpicklable(self, job: Job, start: int, items: Any) -> None:
        if len(items) > 1:
            for i in reversed(range(len(items))):
                self._requeue(job, start + i, items[i : i + 1])
            return
        try:
            dumps_data(items)
        except Exception as exc:
            arg = items[0]
            err = SerializationError(
                f"item {start} (argument {short_repr(arg)}, a {type(arg).__name__}) cannot be "
                f"pickled: {exc}. Pass data the worker can rebuild (paths, numbers, arrays), or "
                "create such objects in the worker (in the function or an `initializer`)."
            )
            err.__cause__ = exc
            job.deliver(start, [None], {start: err})
        self._maybe_finish(job)

    def _maybe_finish(self, job: Job) -> None:
        if not job.done() or job.id not in self._jobs:
            return
        del self._jobs[job.id]
        src = job.source
        if not job.length_sent:
            job.sink._set_length(src.pos + (1 if src.error is not None else 0))
            job.length_sent = True
        self._failed_total += job.failed
        if job.progress is not None:
            failed = job.failed_fn or job.failed or src.error is not None
            self._progress_ended(job, "failed" if failed else "finished")

    def _teardown(self) -> None:
        _LIVE.discard(self)
        err = PoolClosedError("the pool was terminated before this result was ready")
        for job in list(self._jobs.values()):
            job.failed_fn = True  # nothing more is delivered to its result
            job.sink._abort(err)
            self._progress_ended(job, "stopped")
        self._progress_ended(None, "stopped")
        if self._views is not None:
            self._views.stop(timeout=2)
        workers = list(self._all)
        for w in workers:
            if w.proc.poll() is None:
                w.kill()
        for w in workers:
            self._on_death(w)
        self._jobs.clear()
        self._sel.close()
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
            os.close(self._lifeline_r)
            os.close(self._lifeline_w)
            for cmd in self._commands:  # submitted after our last look: fail, don't strand
                if isinstance(cmd, Submit):
                    cmd.job.sink._abort(err)
            self._commands.clear()


def _terminate_all_at_exit() -> None:
    for engine in list(_LIVE):
        engine.terminate()
        engine.join(5)


atexit.register(_terminate_all_at_exit)
