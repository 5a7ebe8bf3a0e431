"""The local engine: one dispatcher thread that owns every worker.

::

  caller threads (Pool methods)          dispatcher thread (one per pool)         workers
  ─────────────────────────────          ────────────────────────────────         ───────
  validate, pickle fn (pre-flight)
  Job ──► commands deque ──► wake pipe ─► select() over
                                            · wake pipe (new job, close, terminate)
                                            · each worker's socket  ◄──── Ready / ChunkDone /
                                            · each worker's pidfd   ◄──── (exit)   failures
                                          schedule: idle worker pulls the next chunk
                                            ──── RunChunk (+ pickled items) ────► run items
                                          fill result objects, run callbacks
  AsyncResult.get() ◄── Event / Condition ◄┘
                                          a dead worker: fail its items with WorkerLostError,
                                          respawn it; close: drain, Shutdown; terminate: kill

Everything that touches a socket, a process or a Job happens in this thread, so none of that
state needs a lock; caller threads only append to ``_commands`` and write a byte to the wake pipe.
A worker's death is seen in the same ``select()`` as its results: its socket reaches EOF and its
pidfd becomes readable. There is no polling loop and no sleep.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import traceback
import weakref
from dataclasses import dataclass
from typing import Any

from ._errors import PoolClosedError, RemoteTraceback, SerializationError, WorkerLostError
from ._jobs import Job
from ._protocol import (
    Channel,
    ChunkDone,
    ChunkLoadFailed,
    FnLoadFailed,
    Hello,
    InitFailed,
    ItemFailure,
    Ready,
    RunChunk,
    Shutdown,
    channel_pair,
)
from ._serialize import FnPayload, dumps_data, loads_data, short_repr
from ._worker import FN_CACHE_SIZE

_NBPOOL_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOOT = "import sys; sys.path.insert(0, {path!r}); from nbpool._worker import main; main()"
# Engines alive in this process, terminated at interpreter exit.
_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()


@dataclass(frozen=True)
class Submit:
    job: Job


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Terminate:
    pass


@dataclass
class Chunk:
    job: Job
    chunk_id: int
    start: int
    items: Any  # kept until the chunk is back: resent one by one if the worker can't load it

    @property
    def count(self) -> int:
        return len(self.items)


class Worker:
    """The dispatcher's handle on one worker process."""

    def __init__(self, wid: int, proc: subprocess.Popen, ch: Channel, pidfd: int | None) -> None:
        self.wid = wid
        self.proc = proc
        self.pid = proc.pid
        self.ch = ch
        self.pidfd = pidfd
        self.ready = False
        self.retiring = False
        self.dead = False
        self.inflight: dict[tuple[int, int], Chunk] = {}
        self.fns: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.globals: dict[str, bytes] = {}  # mirror of the worker's _serialize._APPLIED
        self.budget: int | None = None  # items left before maxtasksperchild retires it
        self.init_error: BaseException | None = None

    def capacity(self) -> int:
        if self.dead or self.retiring or self.budget == 0:
            return 0
        if not self.inflight:
            return 1
        # A second chunk in flight hides the round trip, but only for short chunks: a queued
        # long item would wait behind its neighbour while another worker sits idle.
        if len(self.inflight) == 1:
            (c,) = self.inflight.values()
            est = c.job.est
            if est is not None and est * c.count < 0.1:
                return 1
        return 0


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {
            "SIGKILL": " (the Linux OOM killer sends SIGKILL when memory runs out)",
            "SIGSEGV": " (a crash in C code)",
            "SIGBUS": " (a crash in C code)",
            "SIGABRT": " (a C library aborted)",
        }.get(name, "")
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


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
    ) -> None:
        self.nworkers = processes
        self._initializer = initializer
        self._initargs = dumps_data(tuple(initargs)) if initializer is not None else None
        self._maxtasks = maxtasksperchild
        self._commands: collections.deque[Any] = collections.deque()
        # Guards the wake pipe's write end: once the dispatcher has closed it, a late command
        # (a finalizer, atexit) must not write to that fd number, which may belong to someone
        # else by then. Seen here: a stale write corrupted another pool's pipe.
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._slots: list[Worker | None] = [None] * processes
        self._all: set[Worker] = set()  # every worker process not yet reaped (retiring ones too)
        self._startup_failures = [0] * processes
        self._jobs: dict[int, Job] = {}
        self._pending: collections.deque[Job] = collections.deque()
        self._closing = False
        self._terminating = False
        for i in range(processes):
            self._spawn(i)
        self._thread = threading.Thread(target=self._run, name="nbpool-dispatcher", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # ------------------------------------------------------------------ caller side

    def submit(self, job: Job) -> None:
        self._command(Submit(job))

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

    # ------------------------------------------------------------------ dispatcher thread

    def _run(self) -> None:
        try:
            while True:
                self._drain_commands()
                if self._terminating:
                    break
                self._respawn()
                self._schedule()
                if self._closing and not self._jobs:
                    live = list(self._all)
                    if not live:
                        break
                    for w in live:
                        if not w.retiring:
                            w.retiring = True
                            self._send(w, Shutdown(w.wid))
                for key, _ in self._sel.select():
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    else:
                        kind, w = key.data
                        if kind == "pidfd":
                            self._drain(w)
                            self._on_death(w)
                        elif not self._read(w):
                            self._on_death(w)
        except BaseException:  # a bug here must not leave callers waiting forever
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
            elif isinstance(cmd, Close):
                self._closing = True
            elif isinstance(cmd, Terminate):
                self._terminating = True

    def _spawn(self, slot: int) -> None:
        ch, child = channel_pair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT.format(path=_NBPOOL_PARENT), str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        pidfd = None
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(proc.pid)
        w = Worker(slot, proc, ch, pidfd)
        if self._maxtasks is not None:
            w.budget = self._maxtasks
        self._slots[slot] = w
        self._all.add(w)
        self._sel.register(ch.fileno(), selectors.EVENT_READ, ("sock", w))
        if pidfd is not None:
            self._sel.register(pidfd, selectors.EVENT_READ, ("pidfd", w))
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

    def _schedule(self) -> None:
        while self._pending:
            job = self._pending[0]
            if not job.has_work():
                self._pending.popleft()
                self._maybe_finish(job)
                continue
            candidates = [w for w in self._slots if w is not None and w.capacity()]
            if not candidates:
                return
            w = min(candidates, key=lambda w: len(w.inflight))
            self._dispatch(job, w)

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
        payload = self._fn_for(job, w)
        job.next_chunk_id += 1
        chunk = Chunk(job, job.next_chunk_id, start, items)
        msg = RunChunk(job.id, chunk.chunk_id, start, len(items), job.kind, payload, job.fn.digest)
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

    def _split_unpicklable(self, job: Job, start: int, items: Any) -> None:
        if len(items) > 1:
            job.retry.extendleft(reversed([(start + i, [x]) for i, x in enumerate(items)]))
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

    def _read(self, w: Worker) -> bool:
        try:
            msg, buffers = w.ch.recv()
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
        if w.dead:
            return
        # The process is gone, so the data is all in the socket buffer; the timeout only
        # matters if a grandchild inherited the socket and keeps it open.
        w.ch.sock.settimeout(0.5)
        while self._read(w):
            pass

    def _pop_chunk(self, w: Worker, job_id: int, chunk_id: int) -> Chunk | None:
        chunk = w.inflight.pop((job_id, chunk_id), None)
        if chunk is not None:
            chunk.job.inflight -= 1
        return chunk

    def _header(self, w: Worker, index: int) -> str:
        return f"Worker {w.wid} (pid {w.pid}) raised while running item {index}:"

    def _on_chunk_done(self, w: Worker, msg: ChunkDone, buffers: list[bytearray]) -> None:
        chunk = self._pop_chunk(w, msg.job_id, msg.chunk_id)
        if chunk is None:
            return
        job = chunk.job
        job.record_time(chunk.count, msg.elapsed)
        failures: dict[int, BaseException] = {}
        try:
            values = loads_data(buffers[0], buffers[1:])
        except Exception as exc:
            values = [None] * chunk.count
            for i in range(chunk.start, chunk.start + chunk.count):
                err = SerializationError(
                    f"the results of items {chunk.start}..{chunk.start + chunk.count - 1} from "
                    f"worker {w.wid} could not be unpickled in the caller: {exc}"
                )
                err.__cause__ = exc
                failures[i] = err
        for f in msg.failures:
            failures[f.index] = self._rebuild(w, f)
        if not job.failed_fn:
            job.sink._deliver(chunk.start, values, failures)
        self._maybe_finish(job)
        if w.budget == 0 and not w.inflight and not w.retiring:
            self._retire(w)

    def _rebuild(self, w: Worker, f: ItemFailure) -> BaseException:
        return rebuild_exception(f.error, f.tb, f.type_name, f.message, self._header(w, f.index))

    def _on_chunk_load_failed(self, chunk: Chunk, msg: ChunkLoadFailed) -> None:
        job = chunk.job
        if chunk.count > 1:
            # Find the culprit: resend the items one by one (none of them ran).
            singles = [(chunk.start + i, chunk.items[i : i + 1]) for i in range(chunk.count)]
            job.retry.extendleft(reversed(singles))
            if job not in self._pending:
                self._pending.appendleft(job)
            return
        err = SerializationError(
            f"the argument of item {chunk.start} could not be unpickled in worker "
            f"{msg.worker_id}: {msg.tb.strip().splitlines()[-1]}"
        )
        err.__cause__ = RemoteTraceback(msg.tb)
        job.sink._deliver(chunk.start, [None], {chunk.start: err})
        self._maybe_finish(job)

    def _on_fn_load_failed(self, w: Worker, msg: FnLoadFailed) -> None:
        chunk = self._pop_chunk(w, msg.job_id, msg.chunk_id)
        job = self._jobs.get(msg.job_id)
        if job is None:
            return
        w.fns.pop(job.fn.digest, None)
        for name, _digest, _data in job.fn.globals:  # unknown which ones it applied: resend all
            w.globals.pop(name, None)
        if not job.failed_fn:
            job.failed_fn = True
            err = SerializationError(
                f"the {job.fn.name} could not be loaded in worker {w.wid} (pid {w.pid}): "
                f"{msg.tb.strip().splitlines()[-1]}. If it uses a module of yours, make sure "
                "the worker can import it (it sees the caller's sys.path and working directory)."
            )
            err.__cause__ = RemoteTraceback(msg.tb)
            job.sink._abort(err)
        del chunk
        self._maybe_finish(job)

    def _maybe_finish(self, job: Job) -> None:
        if not job.done() or job.id not in self._jobs:
            return
        del self._jobs[job.id]
        src = job.source
        if not job.length_sent:
            job.sink._set_length(src.pos + (1 if src.error is not None else 0))
            job.length_sent = True

    def _retire(self, w: Worker) -> None:
        """maxtasksperchild reached: let it finish and exit; a fresh worker takes its slot."""
        w.retiring = True
        self._send(w, Shutdown(w.wid))
        self._forget(w)

    def _forget(self, w: Worker) -> None:
        if self._slots[w.wid] is w:
            self._slots[w.wid] = None

    def _on_death(self, w: Worker) -> None:
        if w.dead:
            return
        w.dead = True
        self._all.discard(w)
        for fileobj in (w.ch.fileno(), w.pidfd):
            if fileobj is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(fileobj)
        w.ch.close()
        if w.pidfd is not None:
            os.close(w.pidfd)
        try:
            code = w.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            code = w.proc.wait()
        if not w.ready and not w.retiring:
            self._startup_failures[w.wid] += 1
        how = describe_exit(code)
        chunks = list(w.inflight.values())
        # A worker runs its chunks in the order sent and reports each before starting the next
        # (and we drained its socket above), so only the oldest chunk was running; the others
        # never started and go back to their jobs untouched.
        for chunk in chunks[1:]:
            self._pop_chunk(w, chunk.job.id, chunk.chunk_id)
            chunk.job.retry.appendleft((chunk.start, chunk.items))
            if chunk.job not in self._pending:
                self._pending.appendleft(chunk.job)
        for chunk in chunks[:1]:
            self._pop_chunk(w, chunk.job.id, chunk.chunk_id)
            failures: dict[int, BaseException] = {}
            for i in range(chunk.start, chunk.start + chunk.count):
                if w.init_error is not None:
                    failures[i] = w.init_error
                else:
                    failures[i] = WorkerLostError(
                        f"worker {w.wid} (pid {w.pid}) died while running item {i}: {how}. "
                        "The pool replaced the worker and goes on with the other items.",
                        worker_id=w.wid,
                        pid=w.pid,
                        exitcode=code,
                        index=i,
                    )
            if not chunk.job.failed_fn:
                chunk.job.sink._deliver(chunk.start, [None] * chunk.count, failures)
            self._maybe_finish(chunk.job)
        self._forget(w)

    def _teardown(self) -> None:
        _LIVE.discard(self)
        err = PoolClosedError("the pool was terminated before this result was ready")
        for job in list(self._jobs.values()):
            job.failed_fn = True  # nothing more is delivered to its result
            job.sink._abort(err)
        workers = list(self._all)
        for w in workers:
            if w.proc.poll() is None:
                with contextlib.suppress(OSError):
                    w.proc.terminate()
        for w in workers:
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            self._on_death(w)
        self._jobs.clear()
        self._sel.close()
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
            for cmd in self._commands:  # submitted after our last look: fail, don't strand
                if isinstance(cmd, Submit):
                    cmd.job.sink._abort(err)
            self._commands.clear()


def _terminate_all_at_exit() -> None:
    for engine in list(_LIVE):
        engine.terminate()
        engine.join(5)


import atexit  # noqa: E402  (registered once, at import)

atexit.register(_terminate_all_at_exit)
