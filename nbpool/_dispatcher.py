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
                                                  partial output lines
                                          schedule: an idle worker pulls the next chunk
                                            ─── RunChunk (+ pickled items) ──────────────►
                                          fill result objects, run callbacks
  AsyncResult.get() ◄── Event / Condition ┘
                                          a dead worker: read which item it was on from its
                                          shared slot, fail (or retry) that item, requeue the
                                          rest, respawn it

Everything that touches a socket, a process or a Job happens in this thread, so none of that
state needs a lock; caller threads only append to ``_commands`` and write a byte to the wake pipe.
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
import time
import weakref

from ._errors import (
    MemoryLimitError,
    PoolClosedError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)
from ._jobs import Job
from ._message import Message
from ._output import PARTIAL_LINE_S, LineBuffer, TerminalOutput
from ._procs import Worker, describe_exit
from ._protocol import (
    FN_CACHE_SIZE,
    TRACK_INDEX,
    TRACK_NONE,
    TRACK_TIME,
    Cancel,
    ChunkDone,
    ChunkLoadFailed,
    FnLoadFailed,
    Hello,
    InitFailed,
    ItemFailure,
    Ready,
    RunChunk,
    Shutdown,
)
from ._serialize import FnPayload, dumps_data, loads_data, short_repr
from ._timers import Timers

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

# After an interrupt, a worker still on the cancelled job's chunk this long is killed.
CANCEL_GRACE_S = 0.2
MEMORY_CHECK_S = 0.5
HARD_MEMORY_FACTOR = 1.5
# Largest chunk (pickled) sent to a worker that is still busy: well under the socket buffer.
PREFETCH_MAX_BYTES = 256 * 1024
# Items faster than this are not tracked one by one (the slot write would cost more than them).
TRACK_MIN_ITEM_S = 5e-6

# Engines alive in this process, terminated at interpreter exit.
_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()


class Submit(Message):
    job: Job


class CancelJob(Message):
    job_id: int
    reason: BaseException


class Close(Message):
    pass


class Terminate(Message):
    pass


class Chunk:
    """Items of a job sent to a worker; kept until they are back (resent if the worker dies)."""

    __slots__ = ("chunk_id", "items", "job", "start")

    def __init__(self, job: Job, chunk_id: int, start: int, items: Any) -> None:
        self.job, self.chunk_id, self.start, self.items = job, chunk_id, start, items

    @property
    def count(self) -> int:
        return len(self.items)


def rebuild_exception(data: bytes, tb: str, type_name: str, message: str, header: str):
    """The worker's exception as its own type, with the remote traceback as ``__cause__``."""
    exc: BaseException
    try:
        exc = loads_data(data) if data else None  # type: ignore[assignment]
        if not isinstance(exc, BaseException):
            raise TypeError("not an exception")
    except Exception as load_error:
        exc = RuntimeError(
            f"{type_name}: {message} (the exception could not be sent back intact: {load_error})"
        )
    exc.__cause__ = RemoteTraceback(f'\n{header}\n"""\n{tb}"""')
    return exc


class Engine:
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
        started: list[Worker] = (),  # type: ignore[assignment]
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
            elif isinstance(cmd, CancelJob):
                self._cancel(cmd.job_id, cmd.reason)
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
            job.sink._deliver(src.pos, [None], {src.pos: src.error})
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
        else:
            track = TRACK_INDEX
        payload = self._fn_for(job, w)
        job.next_chunk_id += 1
        chunk = Chunk(job, job.next_chunk_id, start, items)
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
            job.sink._deliver(start, [None], {start: err})
        self._maybe_finish(job)

    def _maybe_finish(self, job: Job) -> None:
        if not job.done() or job.id not in self._jobs:
            return
        del self._jobs[job.id]
        src = job.source
        if not job.length_sent:
            job.sink._set_length(src.pos + (1 if src.error is not None else 0))
            job.length_sent = True

    # ------------------------------------------------------------------ messages

    def _read(self, w: Worker, timeout: float | None = None) -> bool:
        try:
            msg, buffers = w.ch.recv(timeout)
        except (EOFError, OSError):
            return False
        if isinstance(msg, ChunkDone):
            self._on_chunk_done(w, msg, buffers)
        elif isinstance(msg, Ready):
            w.ready = True
            self._startup_failures[w.wid] = 0
        elif isinstance(msg, ChunkLoadFailed):
            chunk = self._pop_chunk(w, msg.job_id, msg.chunk_id)
            if chunk is not None:
                self._on_chunk_load_failed(chunk, msg)
        elif isinstance(msg, FnLoadFailed):
            self._on_fn_load_failed(w, msg)
        elif isinstance(msg, InitFailed):
            w.init_error = rebuild_exception(
                msg.error,
                msg.tb,
                "Exception",
                "initializer failed",
                f"The initializer raised in worker {w.wid} (pid {w.pid}):",
            )
        return True

    def _drain(self, w: Worker) -> None:
        """Read what a dead worker sent before it died: results it finished are not lost."""
        # The process is gone, so the data is all in the socket buffer; the timeout only
        # matters if a grandchild inherited the socket and keeps it open.
        while self._read(w, timeout=0.5):
            pass

    def _pop_chunk(self, w: Worker, job_id: int, chunk_id: int) -> Chunk | None:
        chunk = w.inflight.pop((job_id, chunk_id), None)
        if chunk is not None:
            chunk.job.inflight -= 1
        return chunk

    def _on_chunk_done(self, w: Worker, msg: ChunkDone, buffers: list[bytearray]) -> None:
        chunk = self._pop_chunk(w, msg.job_id, msg.chunk_id)
        if chunk is None:
            return
        job = chunk.job
        if not msg.skipped and not job.cancelled and not job.failed_fn:
            job.record_time(chunk.count, msg.elapsed)
            failures: dict[int, BaseException] = {}
            try:
                values = loads_data(buffers[0], buffers[1:])
            except Exception as exc:
                values = [None] * chunk.count
                for i in range(chunk.start, chunk.start + chunk.count):
                    err = SerializationError(
                        f"the results of items {chunk.start}..{chunk.start + chunk.count - 1} "
                        f"from worker {w.wid} could not be unpickled in the caller: {exc}"
                    )
                    err.__cause__ = exc
                    failures[i] = err
            for f in msg.failures:
                failures[f.index] = self._rebuild(w, f)
            job.sink._deliver(chunk.start, values, failures)
        self._maybe_finish(job)
        if w.budget == 0 and not w.inflight and not w.retiring:
            self._retire(w)

    def _rebuild(self, w: Worker, f: ItemFailure) -> BaseException:
        header = f"Worker {w.wid} (pid {w.pid}) raised while running item {f.index}:"
        return rebuild_exception(f.error, f.tb, f.type_name, f.message, header)

    def _on_chunk_load_failed(self, chunk: Chunk, msg: ChunkLoadFailed) -> None:
        job = chunk.job
        if chunk.count > 1:  # find the culprit: resend the items one by one (none of them ran)
            for i in reversed(range(chunk.count)):
                self._requeue(job, chunk.start + i, chunk.items[i : i + 1])
            return
        err = SerializationError(
            f"the argument of item {chunk.start} could not be unpickled in worker "
            f"{msg.worker_id}: {msg.tb.strip().splitlines()[-1]}"
        )
        err.__cause__ = RemoteTraceback(msg.tb)
        if not job.cancelled:
            job.sink._deliver(chunk.start, [None], {chunk.start: err})
        self._maybe_finish(job)

    def _on_fn_load_failed(self, w: Worker, msg: FnLoadFailed) -> None:
        self._pop_chunk(w, msg.job_id, msg.chunk_id)
        job = self._jobs.get(msg.job_id)
        if job is None:
            return
        w.fns.pop(job.fn.digest, None)
        for name, _digest, _data in job.fn.globals:  # unknown which ones it applied: resend all
            w.globals.pop(name, None)
        if not job.failed_fn and not job.cancelled:
            job.failed_fn = True
            err = SerializationError(
                f"the {job.fn.name} could not be loaded in worker {w.wid} (pid {w.pid}): "
                f"{msg.tb.strip().splitlines()[-1]}. If it uses a module of yours, make sure "
                "the worker can import it (it sees the caller's sys.path and working directory)."
            )
            err.__cause__ = RemoteTraceback(msg.tb)
            job.sink._abort(err)
        self._maybe_finish(job)

    # ------------------------------------------------------------------ output

    def _read_output(self, w: Worker, fd: int) -> str:
        """Read what is there: 'data', 'empty' (nothing now) or 'eof' (pipe closed)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return "empty"
        except OSError:
            data = b""
        buf: LineBuffer = w.line_bufs[fd]  # type: ignore[attr-defined]
        stream = w.out_fds[fd]
        if not data:  # EOF: the worker (and any child holding the pipe) is gone
            self._flush_output(w, fd)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(fd)
            os.close(fd)
            del w.out_fds[fd]
            return "eof"
        had_partial = bool(buf.partial)
        for line in buf.feed(data):
            self.output.write(w.wid, w.pid, stream, line)
        if buf.partial and not had_partial:
            tail = buf.partial

            def flush_if_still_waiting() -> None:
                if buf.partial.startswith(tail):
                    self._flush_output(w, fd)

            self._timers.call_later(PARTIAL_LINE_S, flush_if_still_waiting)
        return "data"

    def _flush_output(self, w: Worker, fd: int) -> None:
        text = w.line_bufs[fd].flush()  # type: ignore[attr-defined]
        if text is not None:
            self.output.write(w.wid, w.pid, w.out_fds.get(fd, "stdout"), text)

    # ------------------------------------------------------------------ cancel, limits

    def _cancel(self, job_id: int, reason: BaseException) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.cancelled:
            return
        job.cancelled = True
        job.retry.clear()
        job.sink._abort(reason)
        for w in list(self._all):
            if not any(c.job is job for c in w.inflight.values()):
                continue
            self._send(w, Cancel(w.wid, job_id))
            first = next(iter(w.inflight.values()))
            if first.job is job:  # it is on this job now: give it a moment, then stop it
                self._timers.call_later(CANCEL_GRACE_S, self._stopper(w, (job.id, first.chunk_id)))
        self._maybe_finish(job)

    @staticmethod
    def _stopper(w: Worker, key: tuple[int, int]) -> Any:
        def stop() -> None:
            if key in w.inflight:
                w.kill()

        return stop

    def _check_timeout(self, w: Worker) -> None:
        if w.dead or w.kill_reason is not None:
            return
        running = w.running()
        timed = [c for c in w.inflight.values() if c.job.task_timeout is not None]
        if running is None or not timed:
            return
        chunk, stage = running
        limit = chunk.job.task_timeout
        now = time.monotonic()
        if limit is not None and stage >= 0:
            deadline = w.slot[3] / 1e9 + limit
            if now >= deadline:
                w.kill(
                    TaskTimeoutError(
                        f"item {stage} ran longer than task_timeout={limit} s in worker "
                        f"{w.wid} (pid {w.pid}); the worker was replaced and the job goes on",
                        index=stage,
                    )
                )
                return
            self._timers.call_at(deadline + 0.001, lambda: self._check_timeout(w))
        else:
            self._timers.call_later(timed[0].job.task_timeout, lambda: self._check_timeout(w))

    def _check_memory(self) -> None:
        import psutil

        assert self._max_memory is not None
        soft, hard = self._max_memory, int(self._max_memory * HARD_MEMORY_FACTOR)
        for w in list(self._all):
            if w.dead or w.kill_reason is not None:
                continue
            try:
                rss = psutil.Process(w.pid).memory_info().rss
            except psutil.Error:
                continue
            if rss > hard:
                running = w.running()
                index = running[1] if running else None
                w.kill(
                    MemoryLimitError(
                        f"worker {w.wid} (pid {w.pid}) used {rss / 2**20:.0f} MiB, over the hard "
                        f"limit of {hard / 2**20:.0f} MiB (1.5 x max_memory_per_worker), while "
                        f"running item {index}: it was killed and replaced",
                        worker_id=w.wid,
                        pid=w.pid,
                        index=index if isinstance(index, int) and index >= 0 else None,
                    )
                )
            elif rss > soft and not w.retiring:
                if w.inflight:
                    w.budget = 0  # no more work: replaced as soon as its chunk is back
                else:
                    self._retire(w)
        if not self._terminating:
            self._timers.call_later(MEMORY_CHECK_S, self._check_memory)

    # ------------------------------------------------------------------ death

    def _on_death(self, w: Worker) -> None:
        if w.dead:
            return
        w.dead = True
        self._all.discard(w)
        for fd in list(w.out_fds):  # what it printed before dying still reaches the user
            while self._read_output(w, fd) == "data":
                pass
            if fd in w.out_fds:  # a grandchild still holds the pipe: keep what we have
                self._flush_output(w, fd)
        for fileobj in (w.ch.fileno(), w.pidfd, *w.out_fds):
            if fileobj is not None and fileobj >= 0:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(fileobj)
        running = w.running()
        code = w.reap()
        if not w.ready and not w.retiring:
            self._startup_failures[w.wid] += 1
        if self._slots[w.wid] is w:
            self._slots[w.wid] = None
        chunks = list(w.inflight.values())
        for chunk in chunks:
            self._pop_chunk(w, chunk.job.id, chunk.chunk_id)
        # A worker runs its chunks in the order sent and reports each before starting the next
        # (and we drained its socket above), so only the first was under way; the others go
        # back to their jobs untouched.
        for chunk in reversed(chunks[1:]):
            self._requeue(chunk.job, chunk.start, chunk.items)
        if chunks:
            assert running is not None
            self._lost(w, chunks[0], running[1], code)
        for chunk in chunks:
            self._maybe_finish(chunk.job)

    def _lost(self, w: Worker, chunk: Chunk, stage: int, code: int) -> None:
        """The chunk its worker was on when it died: fail (or retry) the item that killed it."""
        job, start, items = chunk.job, chunk.start, chunk.items
        if job.cancelled or job.failed_fn:
            return
        if w.init_error is not None:
            indices = range(start, start + len(items))
            job.sink._deliver(start, [None] * len(items), dict.fromkeys(indices, w.init_error))
            return
        if start <= stage < start + len(items):
            culprit = stage
        elif len(items) == 1:
            culprit = start
        else:
            # It died loading, pickling, or running untracked tiny items: which one is unknown.
            # The items go back one by one; the culprit will fail again, alone.
            for i in reversed(range(len(items))):
                self._requeue(job, start + i, items[i : i + 1])
            return
        k = culprit - start
        # Items after it never ran; items before it ran but their results died with the worker.
        self._requeue(job, culprit + 1, items[k + 1 :])
        self._requeue(job, start, items[:k])
        reason = w.kill_reason
        if reason is None and job.attempts.get(culprit, 0) < job.retries:
            job.attempts[culprit] = job.attempts.get(culprit, 0) + 1
            self._requeue(job, culprit, items[k : k + 1])
            return
        if reason is None:
            tries = job.attempts.get(culprit, 0)
            reason = WorkerLostError(
                f"worker {w.wid} (pid {w.pid}) died while running item {culprit} "
                f"(argument {short_repr(items[k], 60)}): {describe_exit(code)}"
                + (f", on each of {tries + 1} tries" if tries else "")
                + ". The pool replaced the worker and goes on with the other items.",
                worker_id=w.wid,
                pid=w.pid,
                exitcode=code,
                index=culprit,
            )
        job.sink._deliver(culprit, [None], {culprit: reason})

    def _teardown(self) -> None:
        _LIVE.discard(self)
        err = PoolClosedError("the pool was terminated before this result was ready")
        for job in list(self._jobs.values()):
            job.failed_fn = True  # nothing more is delivered to its result
            job.sink._abort(err)
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
