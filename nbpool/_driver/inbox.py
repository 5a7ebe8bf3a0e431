"""The dispatcher's reading side: messages from workers and their stdout/stderr.

A mixin of ``Engine`` (``_driver.dispatcher``): these methods run in the dispatcher thread only.
"""

from __future__ import annotations

import contextlib
import os

from .._errors import SerializationError
from .._jobs import Chunk
from .._worker.protocol import (
    ChunkDone,
    ChunkLoadFailed,
    ExitDone,
    FnLoadFailed,
    InitFailed,
    ItemFailure,
    LogRecord,
    Ready,
    Release,
    UnreadableMessage,
    readable,
)
from .._worker.remote_errors import load_failure_hint, rebuild_exception
from .._worker.serialize import loads_data
from .handle import WorkerHandle as Worker
from .output import PARTIAL_LINE_S, LineBuffer, OutputTarget, forward_log_record
from .state import EngineState

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class InboxMixin(EngineState):
    def _read(self, w: Worker, timeout: float | None = None) -> bool:
        try:
            msg, buffers = w.ch.recv(timeout)
        except UnreadableMessage as exc:  # never expected (messages are plain data): no hang
            w.kill(note=f"it sent a message the kernel could not read ({exc})")
            return False
        except (EOFError, OSError):
            return False
        if isinstance(msg, ChunkDone):
            self._drain_output(w)  # before the chunk is popped: its output is its job's
            self._on_chunk_done(w, msg, buffers)
        elif isinstance(msg, Ready):
            self._drain_output(w)  # the initializer's output: the cell that made the pool
            self._flush_partials(w, None)
            w.ready = True
            self._startup_failures[w.wid] = 0
            if self.insights is not None:
                self.insights.ready(id(w))
            if not self.first_ready.is_set():
                self.first_ready_pid = w.pid
                self.first_ready.set()
        elif isinstance(msg, ChunkLoadFailed):
            chunk = self._pop_chunk(w, msg.job_id, msg.chunk_id)
            if chunk is not None:
                self._on_chunk_load_failed(chunk, msg)
        elif isinstance(msg, FnLoadFailed):
            self._on_fn_load_failed(w, msg)
        elif isinstance(msg, LogRecord):
            target, _job = self._output_target(w)
            cell = target.cell if target is not None else None
            self.events.post(forward_log_record, (msg.record,), cell)
        elif isinstance(msg, ExitDone):
            self._drain_output(w)
            self._on_exit_done(w, msg, buffers)
        elif isinstance(msg, InitFailed):
            w.init_error = rebuild_exception(
                msg.error,
                msg.tb,
                "Exception",
                "initializer failed",
                f"The initializer raised in {w.label}:",
                msg.lost,
            )
        return True

    def _on_exit_done(self, w: Worker, msg: ExitDone, buffers: list[bytearray]) -> None:
        """A ``worker_exit`` hook's result (``Pool.get_exit_results``), or what it raised."""
        w.exited_cleanly = True
        if not msg.ran:
            return
        if msg.error:
            self.exit_errors.append(
                rebuild_exception(
                    msg.error,
                    msg.tb,
                    "Exception",
                    "worker_exit failed",
                    f"worker_exit raised in {w.label}:",
                    msg.lost,
                )
            )
            return
        try:
            self.exit_results.append(loads_data(buffers[0], buffers[1:]))
        except BaseException as exc:
            self.exit_errors.append(
                SerializationError(
                    f"the result of worker_exit in {w.label} could not be unpickled here: {exc}"
                )
            )

    def _drain(self, w: Worker) -> None:
        """Read what a dead worker sent before it died: results it finished are not lost."""
        # The process is gone, so the data is all in the socket buffer; the timeout only
        # matters if a grandchild inherited the socket and keeps it open.
        while self._read(w, timeout=0.5):
            pass

    def _pop_chunk(
        self, w: Worker, job_id: int, chunk_id: int, unmapped: bool = False
    ) -> Chunk | None:
        """``unmapped``: the worker holds no mapping of the chunk's arguments any more."""
        chunk = w.inflight.pop((job_id, chunk_id), None)
        if chunk is not None:
            chunk.job.inflight -= 1
            if chunk.segments is not None:
                if unmapped:
                    chunk.segments.recycle(self._arena)
                    self._trim_arena_later()
                else:
                    chunk.segments.close()
        return chunk

    def _on_chunk_done(self, w: Worker, msg: ChunkDone, buffers: list[bytearray]) -> None:
        chunk = self._pop_chunk(w, msg.job_id, msg.chunk_id, msg.unmapped)
        wanted = chunk is not None and not (
            msg.skipped or chunk.job.cancelled or chunk.job.failed_fn
        )
        if msg.shm and not wanted:  # results nobody will read: the worker closes them
            self._release_results(w, msg, lent=False)
        if chunk is None:
            return
        job = chunk.job
        w.last_output, w.last_job = job.output, job.id
        w.chunks_done += 1
        if wanted:
            job.record_time(chunk.count, msg.elapsed)
            self._slot_done[w.wid] += chunk.count
            failures: dict[int, BaseException] = {}
            if msg.shm and not self._map_results(w, msg, buffers):
                # it died before we mapped them: its results died with it; run it again
                self._requeue(job, chunk.start, chunk.items)
                return
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
            if self.insights is not None:
                self._insights_chunk(w, msg, chunk)
            job.deliver(chunk.start, values, failures, w.wid)
        self._maybe_finish(job)
        if w.budget == 0 and not w.inflight and not w.retiring:
            self._retire(w)

    def _map_results(self, w: Worker, msg: ChunkDone, buffers: list[Any]) -> bool:
        """Map the worker's result segments into ``buffers``, then let it close them.
        False if they are gone (the worker died after it sent ChunkDone)."""
        from .._shm import attach

        mapped = False
        try:
            attach(buffers, msg.shm, w.pid, many=True, unmapped=self._unmapped_notice(w))
            mapped = True
        except (OSError, RuntimeError):
            pass
        # (lent: it keeps them for later results once we say our mappings are gone)
        self._release_results(w, msg, lent=mapped)
        return mapped

    def _release_results(self, w: Worker, msg: ChunkDone, lent: bool) -> None:
        if not w.dead:
            self._send(w, Release(tuple((fd, name) for _, fd, _, name in msg.shm), lent))

    def _insights_chunk(self, w: Worker, msg: ChunkDone, chunk: Chunk) -> None:
        assert self.insights is not None
        job = chunk.job
        call = {"apply": "apply", "star": "starmap"}.get(job.kind, "map")
        name = job.fn.name.removeprefix("function ")
        items, start, kind = chunk.items, chunk.start, job.kind
        self.insights.chunk_done(
            id(w),
            msg.elapsed,
            chunk.count,
            msg.slowest,
            f"{call}({name})",
            lambda i: (kind, items[i - start]),
        )

    def _rebuild(self, w: Worker, f: ItemFailure) -> BaseException:
        header = f"{w.label[0].upper()}{w.label[1:]} raised while running item {f.index}:"
        return rebuild_exception(f.error, f.tb, f.type_name, f.message, header, f.lost)

    def _on_chunk_load_failed(self, chunk: Chunk, msg: ChunkLoadFailed) -> None:
        job = chunk.job
        if chunk.count > 1:  # find the culprit: resend the items one by one (none of them ran)
            self._requeue_singly(job, chunk.start, chunk.items)
            return
        err = SerializationError(
            f"the argument of item {chunk.start} could not be unpickled in worker "
            f"{msg.worker_id}: {msg.tb.strip().splitlines()[-1]}"
        )
        err.__cause__ = _remote_traceback(msg.tb)
        if not job.cancelled:
            job.deliver(chunk.start, [None], {chunk.start: err})
        self._maybe_finish(job)

    def _on_fn_load_failed(self, w: Worker, msg: FnLoadFailed) -> None:
        self._pop_chunk(w, msg.job_id, msg.chunk_id)
        job = self._jobs.get(msg.job_id)
        if job is None:  # which function it was: unknown, so forget what it holds
            w.fns.clear()
            w.globals.clear()
            return
        w.fns.pop(job.fn.digest, None)
        for module, name, _digest, _data in job.fn.globals:  # which ones it applied: unknown
            w.globals.pop((module, name), None)
        if not job.failed_fn and not job.cancelled:
            job.failed_fn = True
            last = msg.tb.strip().splitlines()[-1]
            err = SerializationError(
                f"the {job.fn.name} could not be loaded in {w.label}: "
                f"{last}. {load_failure_hint(last)}"
            )
            err.__cause__ = _remote_traceback(msg.tb)
            job.sink._abort(err)
        self._maybe_finish(job)

    # ------------------------------------------------------------------ output

    def _read_output(self, w: Worker, fd: int) -> str:
        """Read what is there: 'data', 'empty' (nothing now) or 'eof' (pipe closed)."""
        if fd not in w.out_fds:
            # Closed already: an event from the same select() batch, after _drain_output (at
            # the worker's last message) read this pipe to its end.
            return "eof"
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return "empty"
        except OSError:
            data = b""
        buf: LineBuffer = w.line_bufs[fd]
        if not data:  # EOF: the worker (and any child holding the pipe) is gone
            self._flush_output(w, fd)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(fd)
            os.close(fd)
            del w.out_fds[fd]
            return "eof"
        waiting = bool(buf.partial)
        target, job_id = self._output_target(w)
        events = buf.feed(data, target, job_id)
        if events:
            self.router.write(w.wid, w.tag, w.out_fds[fd], events)
        if buf.partial and not buf.redrawn and not waiting:
            # A line without its newline yet (a prompt, progress dots): written as a line of
            # its own if the rest does not come soon. (A redrawn line is on screen already.)
            tail = buf.partial

            def flush_if_still_waiting() -> None:
                if buf.partial.startswith(tail) and not buf.redrawn:
                    self._flush_output(w, fd)

            self._timers.call_later(PARTIAL_LINE_S, flush_if_still_waiting)
        return "data"

    def _drain_output(self, w: Worker) -> None:
        """Read everything the worker has written so far (it flushes its streams before each
        message it sends us), so that it is attributed to the work it belongs to."""
        if not w.out_fds:
            return
        # One poll() for both pipes: most chunks print nothing (this runs per chunk).
        ready = readable(list(w.out_fds), 0)
        for fd in ready:
            while self._read_output(w, fd) == "data":
                pass

    def _flush_output(self, w: Worker, fd: int) -> None:
        buf: LineBuffer = w.line_bufs[fd]
        got = buf.flush()
        if got is not None:
            text, target = got
            self.router.write(w.wid, w.tag, w.out_fds.get(fd, "stdout"), [("line", text, target)])

    def _flush_partials(self, w: Worker, job_id: int | None, keep: bool = False) -> None:
        """End the unfinished lines of ``w`` that belong to job ``job_id`` (``keep``: to any job
        but that one): a job's last words are written to its own cell when it ends, never
        glued to the next job's output."""
        for fd, buf in list(w.line_bufs.items()):
            if buf.partial and (buf.job_id != job_id if keep else buf.job_id == job_id):
                self._flush_output(w, fd)

    def _output_target(self, w: Worker) -> tuple[OutputTarget | None, int | None]:
        """Where what the worker writes now goes: the job of the chunk it is on; before it is
        ready, the initializer's, which is the cell that created the pool; else the job it
        last finished. (A second chunk in flight is always of the same job: _capacity.)"""
        chunk = next(iter(w.inflight.values()), None)
        if chunk is not None:
            return chunk.job.output, chunk.job.id
        if not w.ready or w.last_output is None:
            return self.init_output, None
        return w.last_output, w.last_job


def _remote_traceback(tb: str) -> BaseException:
    from .._mp_errors import RemoteTraceback  # imported on this error path only (~10 ms)

    return RemoteTraceback(tb)
