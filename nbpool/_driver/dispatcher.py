"""The local engine: one dispatcher thread that owns every worker.

::

  caller threads (Pool methods)         dispatcher thread (one per pool)            workers
  ─────────────────────────────         ────────────────────────────────            ───────
  validate, pickle fn (pre-flight),
  note stdout/stderr/cell (_driver.output)
  Job ──► commands deque ──► wake pipe ─► select(timeout = next timer) over
  KeyboardInterrupt ─► Cancel ─┘          · wake pipe  (submit, cancel, close, terminate)
  dropped imap iterator ─► Cancel ┘       · sockets    ◄── Ready / ChunkDone / LogRecord ──
                                          · pidfds     ◄── (process exit)
                                          · stdout/err ◄── bytes ──► lines ──► the job's
                                                                     stream / cell (_driver.output)
                                          timers: task_timeout, memory check, cancel grace,
                                                  partial output lines, progress tick
                                          progress tick (_driver.progress): snapshot ──► view thread
                                            (_notebook.views: one dashboard per cell / tqdm, never
                                            waited on)
                                          schedule: an idle worker pulls the next chunk
                                            ─── RunChunk (+ pickled items) ──────────────►
                                          fill result objects ───────────────┐
  AsyncResult.get() ◄── Event / Condition ◄─ callback thread (_events): callback, then
                                             ready; log records to the caller's logging
                                          a dead worker: read which item it was on from its
                                          shared slot, fail (or retry) that item, requeue the
                                          rest, respawn it (its process group and
                                          descendants are killed: _engines.proctree)

The thread's code is this module (loop, commands, spawning, shutdown) and four mixins of
``Engine``: ``scheduling`` (chunks to workers), ``inbox`` (messages and output from workers),
``faults`` (cancel, timeouts, memory limits, dead workers) and ``progress`` (snapshots for the
dashboard). Everything that touches a worker, its channel or a Job happens in this thread, so
none of that state needs a lock; caller threads only append to ``_commands`` and write a byte to
the wake pipe. No user code runs here but pickling and the input iterator: callbacks and log
handlers run in the callback thread, so a callback that blocks (or calls the pool) cannot stop
this one. A worker's death is seen in the same ``select()`` as its results: its socket reaches
EOF and (local workers) its pidfd becomes readable. No polling loop, no sleep: ``select()``
wakes for I/O or the next timer.

Engines: the workers above are ``WorkerHandle``s (``handle``). A local one is a process
(``_engines.local``); a Ray one is an actor behind a bridge thread that gives this loop the same
socket, output fds and slot (``_engines.ray``). This thread does the same for both; the
diagram of the seam is in docs/architecture.md ("Engines").
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import os
import selectors
import sys
import threading
import weakref

from .._engines.local import Worker as LocalWorker
from .._errors import PoolClosedError
from .._events import EventThread
from .._jobs import Job
from .._shm import Arena, Segments, forks
from .._shm import describe as describe_shm
from .._worker.functions import FnPayload
from .._worker.message import Message
from .._worker.protocol import (
    Hello,
    Release,
    Reuse,
    Shutdown,
)
from .._worker.serialize import InProcess, dumps_data
from .faults import MEMORY_CHECK_S, FaultsMixin
from .handle import WorkerHandle as Worker
from .inbox import InboxMixin
from .insights import Insights
from .output import LineBuffer, OutputTarget, Router, caller_log_levels
from .progress import ProgressMixin
from .scheduling import SchedulingMixin
from .timers import Timers

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

# Engines alive in this process, terminated at interpreter exit.
_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()


class Submit(Message):
    job: Job


class CancelJob(Message):
    job_id: int
    reason: BaseException
    why: str = "interrupted"  # "interrupted" (■, Ctrl-C) or "dropped" (an imap iterator)


class Conclude(Message):
    """A blocking call raised at its first failure: its dashboard ends now, as failed."""

    job_id: int


class Unmapped(Message):
    """The caller's mapping of a worker's result segment is gone (its array was dropped): the
    worker may reuse that memory (``_shm.Arena``)."""

    worker: Any  # the WorkerHandle
    fd: int
    name: str
    reusable: bool  # False: a child forked since may map it still; the worker closes it


class Watch(Message):
    progress: Any  # a _driver.progress.JobProgress for the whole pool


class DropRef(Message):
    """The caller dropped its last ObjectRef of this id (see _worker.refs)."""

    ref_id: int


class Close(Message):
    pass


class Terminate(Message):
    pass


class Engine(SchedulingMixin, InboxMixin, FaultsMixin, ProgressMixin):
    """Owns the worker processes and the dispatcher thread of one local pool."""

    def __init__(
        self,
        processes: int,
        initializer: FnPayload | None,
        initargs: tuple[Any, ...],
        maxtasksperchild: int | None,
        max_memory: int | None = None,
        init_output: OutputTarget | None = None,
        lifeline: tuple[int, int] | None = None,
        started: Sequence[Worker] = (),
        new_worker: Callable[[int], Worker] | None = None,
        worker_args: tuple[str, ...] = (),
        shared: tuple[Any, list[Any], Any] | None = None,
        cpu_pins: list[tuple[int, ...]] | None = None,
        slot_env: list[tuple[tuple[str, str], ...]] | None = None,
        hooks: tuple[FnPayload | None, FnPayload | None] = (None, None),
        hook_timeouts: tuple[float | None, float | None] = (None, None),
        max_active: int | None = None,
        insights: bool = False,
        in_process: bool = False,
    ) -> None:
        self.nworkers = processes
        self._max_active = max_active  # max_tasks_active: items in flight, all jobs together
        # enable_insights: per-worker times and the slowest items (see _driver.insights)
        self.insights = Insights(processes) if insights else None
        # pool.put objects: id -> (pickle, out-of-band buffers) (see _worker.refs). Written by
        # Pool.put in the caller's thread (a dict store), read and emptied here.
        self.refs: dict[int, tuple[bytes, list[Any], Any]] = {}  # (+ _shm segments or None)
        self._worker_init, self._worker_exit = hooks  # mpire's worker_init / worker_exit
        self._init_timeout, self._exit_timeout = hook_timeouts
        self.exit_results: list[Any] = []  # what worker_exit hooks returned (Pool.get_exit_results)
        self.exit_errors: list[BaseException] = []
        self._cpu_pins = cpu_pins  # slot -> the CPU ids its worker is pinned to
        self._slot_env = slot_env  # slot -> environment variables of its workers (gpus=)
        self._worker_args = worker_args  # see _worker.protocol.Hello
        # the shared objects, pickled once for every worker: (pickle, buffers, the _shm
        # segments of the large ones or None)
        self._shared = shared
        # How a worker for a slot is started: a local process unless an engine says otherwise
        # (``_engines.ray``: an actor behind a bridge thread). Everything else here is the same.
        self._new_worker = new_worker or (lambda slot: LocalWorker(slot, self._lifeline_r))
        self._initializer = initializer
        self._initargs: tuple[Any, list[Any]] | None = None
        if initializer is not None:  # (threads of this process: handed over as they are)
            args = tuple(initargs)
            self._initargs = (InProcess(args), []) if in_process else dumps_data(args)
        self._maxtasks = maxtasksperchild
        self._max_memory = max_memory
        self.router = Router()  # worker output to its targets (_driver.output)
        self.init_output = init_output  # where the initializer's output goes
        self._commands: collections.deque[Any] = collections.deque()
        # Guards the wake pipe's write end: once the dispatcher has closed it, a late command
        # (a finalizer, atexit) must not write to that fd number, which may belong to someone
        # else by then. Seen here: a stale write corrupted another pool's pipe.
        # Reentrant: a weakref callback (a dropped imap iterator cancels its job) may run in a
        # thread that is inside _command already, when garbage collection strikes there.
        self._wake_lock = threading.RLock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Every worker holds the read end; only we hold the write end and never write: when this
        # process ends, however it ends, the workers read EOF and exit (see _engines.local_main).
        self._lifeline_r, self._lifeline_w = lifeline if lifeline else os.pipe()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._timers = Timers()
        # memfds that carried large arguments, for the next ones (closed after a while unused)
        self._arena = Arena()
        self._arena_trim_due = False
        self._slots: list[Worker | None] = [None] * processes
        self._all: set[Worker] = set()  # every worker process not yet reaped (retiring ones too)
        self._startup_failures = [0] * processes
        self._jobs: dict[int, Job] = {}
        self._pending: collections.deque[Job] = collections.deque()
        self._closing = False
        self._terminating = False
        self._views = None  # the progress view thread (_notebook.views), started on first use
        self._tick_gen = 0
        self._tick_due: float | None = None
        self._restarted_at: dict[int, tuple[float, str]] = {}
        self._pool_view = None
        self._progress_live: dict[int, Job] = {}
        self._progress_off = False
        self._slot_done = [0] * processes
        self._failed_total = 0
        # Set when the first worker is ready (Pool() checks max_memory_per_worker against it).
        self.first_ready = threading.Event()
        self.first_ready_pid = 0
        for i in range(processes):
            self._spawn(i, started[i] if i < len(started) else None)
        if max_memory is not None:
            self._timers.call_later(MEMORY_CHECK_S, self._check_memory)
        self.events = EventThread("nbpool-callbacks")  # callbacks and log records (_events)
        self._thread = threading.Thread(target=self._run, name="nbpool-dispatcher", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # ------------------------------------------------------------------ caller side

    def submit(self, job: Job) -> None:
        self._command(Submit(job))

    def cancel(self, job_id: int, reason: BaseException, why: str = "interrupted") -> None:
        self._command(CancelJob(job_id, reason, why))

    def conclude(self, job_id: int) -> None:
        self._command(Conclude(job_id))

    def watch(self, progress: Any) -> None:
        self._command(Watch(progress))

    def add_ref(self, ref_id: int, entry: tuple[Any, list[Any], Any]) -> None:
        """``Pool.put``: store an object's pickle (caller's thread). Refused once the
        dispatcher has ended (its teardown would never release it)."""
        with self._wake_lock:
            if self._wake_w >= 0:
                self.refs[ref_id] = entry
                return
        if entry[2] is not None:
            entry[2].close()
        raise PoolClosedError("the pool's workers were shut down")

    def drop_ref(self, ref_id: int) -> None:
        """From the ObjectRef's finalizer (any thread, maybe after the pool ended: then the
        teardown released it already)."""
        try:
            self._command(DropRef(ref_id))
        except Exception:
            pass

    def close(self) -> None:
        self._command(Close())

    def terminate(self) -> None:
        self._command(Terminate())

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def force_stop(self) -> None:
        """From a caller thread, when the dispatcher did not stop in time (it is stuck in user
        code, e.g. an input iterator that blocks): kill the workers and fail every result.

        The dispatcher's own sets may change under us if it is merely slow, not stuck: the
        copies are retried, and killing or failing twice does no harm.
        """
        err = PoolClosedError("the pool was terminated before this result was ready")
        for _ in range(100):
            try:
                workers, jobs = list(self._all), list(self._jobs.values())
                break
            except RuntimeError:  # changed size during iteration
                continue
        else:
            return
        for w in workers:
            w.kill()
        for job in jobs:
            job.sink._abort(err)
        self.events.close()

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._slots if w is not None and not w.dead and w.pid]

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

    def _trim_arena_later(self) -> None:
        """Close the arena's segments once they have been unused for ``keep_s``."""
        if self._arena_trim_due:
            return
        self._arena_trim_due = True

        def trim() -> None:
            self._arena_trim_due = False
            if self._arena.trim():
                self._trim_arena_later()

        self._timers.call_later(self._arena.keep_s, trim)

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
                            self._shutdown(w)
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

    def _unmapped_notice(self, w: Worker) -> Callable[[int, str], None]:
        """What a result's mapping, made now, calls when it is gone (from any thread, at any
        time, the pool closed or not): the command that tells its worker. Its memory is
        reusable unless this process forked meanwhile (a child may still map it)."""
        # (weak: an array the caller keeps must not keep the pool, nor what its worker held)
        engine, worker, pid, forked = weakref.ref(self), weakref.ref(w), os.getpid(), forks()

        def notice(fd: int, name: str) -> None:
            e, w = engine(), worker()
            # (not in a forked child: the pipe and the lock are the parent's)
            if e is not None and w is not None and os.getpid() == pid:
                e._command(Unmapped(w, fd, name, forks() == forked))

        return notice

    def _drain_commands(self) -> None:
        reuse: dict[tuple[Worker, bool], list[tuple[int, str]]] = {}
        while self._commands:
            cmd = self._commands.popleft()
            if isinstance(cmd, Unmapped):  # (batched: one message per worker)
                reuse.setdefault((cmd.worker, cmd.reusable), []).append((cmd.fd, cmd.name))
            elif isinstance(cmd, Submit):
                self._jobs[cmd.job.id] = cmd.job
                self._pending.append(cmd.job)
                self._progress_submitted(cmd.job)
            elif isinstance(cmd, CancelJob):
                self._cancel(cmd.job_id, cmd.reason, cmd.why)
            elif isinstance(cmd, Conclude):
                job = self._jobs.get(cmd.job_id)
                if job is not None:
                    self._progress_concluded(job)
            elif isinstance(cmd, Watch):
                self._watch(cmd.progress)
            elif isinstance(cmd, DropRef):
                self._drop_ref(cmd.ref_id)
            elif isinstance(cmd, Close):
                self._closing = True
            elif isinstance(cmd, Terminate):
                self._terminating = True
        for (w, reusable), fds in reuse.items():
            if not w.dead:
                self._send(w, Reuse(tuple(fds)) if reusable else Release(tuple(fds)))

    def _drop_ref(self, ref_id: int) -> None:
        entry = self.refs.pop(ref_id, None)
        if entry is not None and entry[2] is not None:
            entry[2].close()  # (a worker that got it has mapped it: see nbpool._shm)
        for w in self._all:  # the workers that hold it forget it with their next chunk
            if ref_id in w.refs:
                w.refs.discard(ref_id)
                w.refs_dropped.append(ref_id)

    # ------------------------------------------------------------------ workers

    def _spawn(self, slot: int, w: Worker | None = None) -> None:
        """Start a worker for ``slot`` (or adopt one the Pool started early) and greet it."""
        if w is None:
            try:
                w = self._new_worker(slot)
            except Exception as exc:  # e.g. the cluster is gone: fail the work, do not loop
                self._engine_failed(exc)
                return
        if self._maxtasks is not None:
            w.budget = self._maxtasks
        if self.insights is not None:
            self.insights.started(id(w), slot, w.started_at)
        self._slots[slot] = w
        self._all.add(w)
        self._sel.register(w.ch.fileno(), selectors.EVENT_READ, ("sock", w))
        if w.pidfd is not None:
            self._sel.register(w.pidfd, selectors.EVENT_READ, ("pidfd", w))
        for fd in w.out_fds:
            os.set_blocking(fd, False)
            w.line_bufs[fd] = LineBuffer()
            self._sel.register(fd, selectors.EVENT_READ, ("out", w, fd))
        buffers: list[Any] = []
        if self._initializer is not None:
            assert self._initargs is not None
            data, oob = self._initargs
            buffers = [data, *oob]
            w.globals = {(m, name): got for m, name, got, _ in self._initializer.globals}
        n_init = len(buffers)
        shm: tuple[tuple[int, int, int, str], ...] = ()
        stored = 0
        if self._shared is not None:
            store = self._shared[2]
            if isinstance(store, Segments):  # large buffers in shared memory (nbpool._shm)
                shm = describe_shm(store, offset=len(buffers) + 1)
            elif store is not None:  # in a cluster's object store (_engines.ray.Stored)
                stored = store.key
            buffers += [self._shared[0], *self._shared[1]]
        w.log_levels = caller_log_levels()  # (this thread reads the caller's logging config)
        hello = Hello(
            slot,
            tuple(sys.path),
            self._initializer,
            w.log_levels,
            self._worker_args,
            n_init,
            cpu_ids=self._cpu_pins[slot] if self._cpu_pins else (),
            worker_init=self._worker_init,
            worker_exit=self._worker_exit,
            env=self._slot_env[slot] if self._slot_env else (),
            shm=shm,
            stored_shared=stored,
            results_shm=w.maps_memory,  # (the worker's _shm.share says if there is memfd)
            arena_cap=self._arena.cap // self.nworkers,
        )
        if self._worker_init is not None:  # its globals are applied in the worker too
            w.globals.update({(m, name): got for m, name, got, _ in self._worker_init.globals})
        self._send(w, hello, buffers)
        if self._init_timeout is not None:
            self._timers.call_later(self._init_timeout, lambda: self._check_init(w))

    def _engine_failed(self, exc: BaseException) -> None:
        """No worker can be started any more: every job fails with ``exc``, the pool stops."""
        for job in list(self._jobs.values()):
            _fail_job(job, exc)
        self._terminating = True

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

    def _shutdown(self, w: Worker) -> None:
        """Ask it to exit once its work is done (it runs ``worker_exit`` first)."""
        self._send(w, Shutdown(w.wid))
        if self._exit_timeout is not None and self._worker_exit is not None:
            self._timers.call_later(self._exit_timeout, lambda: self._check_exit(w))

    def _check_init(self, w: Worker) -> None:
        """``worker_init_timeout``: a worker not ready by now is stopped; what was sent to it
        fails with the TimeoutError."""
        if w.ready or w.dead or w not in self._all:
            return
        w.init_error = TimeoutError(
            f"the worker did not finish starting (initializer, worker_init) within "
            f"worker_init_timeout={self._init_timeout} s in {w.label}; it was stopped"
        )
        w.kill(w.init_error, note="worker_init timed out")

    def _check_exit(self, w: Worker) -> None:
        """``worker_exit_timeout``: a worker still in its exit hook by now is stopped."""
        if w.exited_cleanly or w.dead or w not in self._all:
            return
        self.exit_errors.append(
            TimeoutError(
                f"worker_exit did not return within worker_exit_timeout={self._exit_timeout} s "
                f"in {w.label}; the worker was stopped"
            )
        )
        w.kill(note="worker_exit timed out")

    def _retire(self, w: Worker) -> None:
        """Let it finish what it has and exit; a fresh worker takes its slot now."""
        w.retiring = True
        self._shutdown(w)
        if self._slots[w.wid] is w:
            self._slots[w.wid] = None

    def _maybe_finish(self, job: Job) -> None:
        if not job.done() or job.id not in self._jobs:
            return
        del self._jobs[job.id]
        for w in self._all:  # its workers' unfinished lines go to its cell, now
            self._flush_partials(w, job.id)
        src = job.source
        if not job.length_sent:
            job.sink._set_length(src.pos + (1 if src.error is not None else 0))
            job.length_sent = True
        self._failed_total += job.failed
        if job.progress is not None:
            failed = job.failed_fn or job.failed or src.error is not None
            self._progress_ended(job, "failed" if failed else "finished")

    def _teardown(self) -> None:
        # Each step on its own: a failure in one (a bug, a worker in a strange state) must not
        # skip the rest, above all closing the wake pipe that later calls check (see _post).
        _LIVE.discard(self)
        if self._shared is not None and self._shared[2] is not None:
            self._shared[2].close()
        err = PoolClosedError("the pool was terminated before this result was ready")
        jobs = list(self._jobs.values())
        steps: list[Callable[[], object]] = []
        for job in jobs:
            steps.append(functools.partial(_fail_job, job, err))
        workers = list(self._all)
        # (kill all, then reap: not poll() first, reaping would free a group id for reuse)
        steps += [w.kill for w in workers]
        steps += [functools.partial(self._on_death, w) for w in workers]
        steps.append(self._arena.close)  # (chunks in flight closed theirs as their workers died)
        steps += [self._jobs.clear, self._sel.close, functools.partial(self._close_inbox, err)]
        steps.append(self.events.close)  # not joined: a callback may be calling terminate()
        # Progress last, once the workers are gone and every caller is answered: a slow
        # frontend can delay the end of this thread (2 s at most), never the pool's shutdown.
        steps += [functools.partial(self._progress_ended, job, "stopped") for job in jobs]
        steps.append(functools.partial(self._progress_ended, None, "stopped"))
        if self._views is not None:
            steps.append(functools.partial(self._views.stop, timeout=2))
        for step in steps:
            try:
                step()
            except Exception:
                import traceback

                traceback.print_exc()

    def _close_inbox(self, err: BaseException) -> None:
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w, self._lifeline_r, self._lifeline_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1
            for cmd in self._commands:  # submitted after our last look: fail, don't strand
                if isinstance(cmd, Submit):
                    cmd.job.sink._abort(err)
            self._commands.clear()
            # An ObjectRef the caller keeps must not keep its pickle (or shared memory) alive.
            # Under the lock: a put() (add_ref) either came before this or is refused.
            for ref_id in list(self.refs):
                self._drop_ref(ref_id)


def _fail_job(job: Job, err: BaseException) -> None:
    job.failed_fn = True  # nothing more is delivered to its result
    job.sink._abort(err)


def _terminate_all_at_exit() -> None:
    forkserver = sys.modules.get("nbpool._engines.forkserver")
    if forkserver is not None:  # no server may start now, as the pools' workers are reaped
        forkserver.at_exit()
    for engine in list(_LIVE):
        engine.terminate()
        engine.join(5)


atexit.register(_terminate_all_at_exit)
