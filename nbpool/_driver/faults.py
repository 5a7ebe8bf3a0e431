"""The dispatcher's fault side: cancel, task timeouts, memory limits, dead workers.

A mixin of ``Engine`` (``_driver.dispatcher``): these methods run in the dispatcher thread only.
"""

from __future__ import annotations

import contextlib
import time

from .._errors import MemoryLimitError, TaskTimeoutError, WorkerLostError
from .._jobs import Chunk
from .._progress import format_arg
from .._worker.protocol import STAGE_LOADING, STAGE_PICKLING, Cancel
from .handle import WorkerHandle as Worker
from .state import EngineState

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

# After an interrupt, a worker still on the cancelled job's chunk this long is killed.
CANCEL_GRACE_S = 0.2
MEMORY_CHECK_S = 0.5
HARD_MEMORY_FACTOR = 1.5


def _describe_item(kind: str, item: Any) -> str:
    """For error messages: the same argument text the dashboard's rows show."""
    args = format_arg(kind, item)
    return f"argument {args}" if kind == "map" else f"arguments ({args})"


def _doing(running: tuple[Chunk, int] | None) -> tuple[str, int | None]:
    """For error messages: what a worker was doing (its slot's stage), and the item it names.

    A negative stage is a phase of a whole chunk, not an item: "item -2" meant "loading"."""
    if running is None:
        return "while idle", None
    chunk, stage = running
    if stage >= 0:
        return f"while running item {stage}", stage
    first, n = chunk.start, len(chunk.items)
    items, index = (f"item {first}", first) if n == 1 else (f"items {first}..{first + n - 1}", None)
    if stage == STAGE_LOADING:
        return f"while loading the function and arguments of {items}", index
    if stage == STAGE_PICKLING:
        return f"while pickling the results of {items}", index
    return f"while running {items}", index


class FaultsMixin(EngineState):
    def _cancel(self, job_id: int, reason: BaseException, why: str = "interrupted") -> None:
        job = self._jobs.get(job_id)
        if job is None or job.cancelled:
            return
        job.cancelled = True
        job.retry.clear()
        job.sink._abort(reason)
        self._progress_interrupted(job, why)
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
                w.kill(note="stopped by interrupt")

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
            # A slot that is a copy (a cluster's worker, polled) must have been read after the
            # deadline: an older copy may show an item that has finished since.
            seen = w.slot_seen_at()
            if now >= deadline and seen < deadline:
                self._timers.call_at(now + 0.05, lambda: self._check_timeout(w))
                return
            if now >= deadline:
                w.kill(
                    TaskTimeoutError(
                        f"item {stage} ran longer than task_timeout={limit} s in {w.label}; "
                        "the worker was replaced and the job goes on",
                        index=stage,
                    )
                )
                return
            self._timers.call_at(deadline + 0.001, lambda: self._check_timeout(w))
        else:
            self._timers.call_later(timed[0].job.task_timeout, lambda: self._check_timeout(w))

    def _check_memory(self) -> None:
        assert self._max_memory is not None
        soft, hard = self._max_memory, int(self._max_memory * HARD_MEMORY_FACTOR)
        for w in list(self._all):
            if w.dead or w.kill_reason is not None:
                continue
            rss = w.rss()
            if rss is None:
                continue
            if rss > soft and w.chunks_done == 0 and not w.inflight and not w.retiring:
                # Over the limit before any work: a fresh worker would be too, and replacing
                # it would loop for ever (Pool() refuses such a limit when it can tell). Even
                # over the hard limit: a forked worker's RSS counts the pages it shares with
                # the fork server.
                continue
            if rss > hard:
                doing, index = _doing(w.running())
                w.kill(
                    MemoryLimitError(
                        f"{w.label} used {rss / 2**20:.0f} MiB, over the hard "
                        f"limit of {hard / 2**20:.0f} MiB (1.5 x max_memory_per_worker), "
                        f"{doing}: it was killed and replaced",
                        worker_id=w.wid,
                        pid=w.pid,
                        index=index,
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
        if self.insights is not None:
            self.insights.ended(id(w))
        if w.fatal is not None:
            self._engine_failed(w.fatal)
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
        if not w.retiring:
            why = w.kill_note or (
                type(w.kill_reason).__name__ if w.kill_reason is not None else w.describe_exit(code)
            )
            self._restarted_at[w.wid] = (time.monotonic(), f"replaced: {why}")
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

    def _lost(self, w: Worker, chunk: Chunk, stage: int, code: int | None) -> None:
        """The chunk its worker was on when it died: fail (or retry) the item that killed it."""
        job, start, items = chunk.job, chunk.start, chunk.items
        if job.cancelled or job.failed_fn:
            return
        if w.init_error is not None:
            indices = range(start, start + len(items))
            job.deliver(start, [None] * len(items), dict.fromkeys(indices, w.init_error))
            return
        if start <= stage < start + len(items):
            culprit = stage
        elif len(items) == 1:
            culprit = start
        else:
            # It died loading, pickling, or running untracked tiny items: which one is unknown.
            # The items go back one by one; the culprit will fail again, alone.
            self._requeue_singly(job, start, items)
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
                f"{w.label} died while running item {culprit} "
                f"({_describe_item(job.kind, items[k])}): {w.describe_exit(code)}"
                + (f", on each of {tries + 1} tries" if tries else "")
                + ". The pool replaced the worker and goes on with the other items.",
                worker_id=w.wid,
                pid=w.pid,
                exitcode=code,
                host=w.host,
                index=culprit,
            )
        job.deliver(culprit, [None], {culprit: reason}, w.wid)
