"""Progress: a model the dispatcher keeps, turned into snapshots that views render.

::

  dispatcher thread                                     view thread (_notebook.views)
  ─────────────────                                     ────────────────────
  Job.deliver() counts items (done, failed, per worker)
  worker slots say which item each worker is on
  every TICK_S, while some job wants progress:
    snapshot (a plain JSON-able dict)  ── mailbox ──►   adds CPU % and RSS (psutil),
  when a job ends: its final snapshot ──┘              renders: dashboard widget (notebook)
                                                        or tqdm bar (terminal); sets
                                                        JobProgress.rendered after the last

The model is the dispatcher's own bookkeeping: nothing extra is recorded per item, so the
cost per item is nil and the cost per tick is one pass over the workers. Views never touch the
dispatcher's state and the dispatcher never waits on a view: a slow frontend cannot slow the
pool. Within a chunk, items are counted from the worker's shared slot (the index it is on).

``progress="auto"`` (the default) shows the dashboard only in a notebook and only once a call
has run ``AUTO_AFTER_S``: a quick call prints nothing and pays nothing. ``True`` shows it at
once (a text bar outside notebooks); ``False`` never.
"""

from __future__ import annotations

import sys
import time

from .._progress import AUTO_AFTER_S, RESTART_SHOWN_S, TICK_S, JobProgress
from .._worker.protocol import STAGE_LOADING, STAGE_PICKLING, TRACK_TIME
from .state import EngineState

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from .._jobs import Job
    from .handle import WorkerHandle as Worker


class ProgressMixin(EngineState):
    """The dispatcher's side of progress (a mixin of ``_driver.dispatcher.Engine``).

    Every entry point is guarded: a failure in progress code turns progress off for the
    engine (said once on stderr) and never reaches the work.
    """

    _views: Any  # _notebook.views.ViewThread, started on first use
    _tick_gen: int
    _tick_due: float | None
    _pool_view: JobProgress | None  # the %pool dashboard: every worker, every job
    # Jobs with progress that have started (a chunk sent): the only ones a tick looks at, so a
    # thousand queued apply_async calls cost nothing until they run.
    _progress_live: dict[int, Job]
    _progress_off: bool

    def _progress_failed(self, exc: BaseException) -> None:
        """Progress code failed: turn it off for this pool, release every waiter, say so once."""
        if not self._progress_off:
            import traceback

            print("nbpool: progress display failed and is off for this pool:", file=sys.stderr)
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        self._progress_off = True
        views = [j.progress for j in self._jobs.values()] + [self._pool_view]
        for p in views:
            if p is not None:
                p.final_state = p.final_state or "stopped"
                p.rendered.set()
                p.displayed.set()
        self._progress_live.clear()

    def _progress_submitted(self, job: Job) -> None:
        if self._pool_view is not None and self._pool_view.final_state is None:
            self._start_ticking(TICK_S)  # the pool dashboard goes from 1 update/s to 10

    def _progress_started(self, job: Job) -> None:
        """The job's first chunk is on its way (called from ``_dispatch``)."""
        p = job.progress
        if p is None or job.id in self._progress_live or self._progress_off:
            return
        if p.final_state is not None:  # its dashboard ended early (see _progress_concluded)
            return
        p.started_at = time.monotonic()
        self._progress_live[job.id] = job
        try:
            self._start_ticking(0 if p.mode is True else TICK_S)
        except Exception as exc:
            self._progress_failed(exc)

    def _watch(self, p: JobProgress) -> None:
        """Show a pool-wide dashboard (``%pool``) until the pool ends."""
        if self._progress_off:
            p.displayed.set()
            return
        try:
            old = self._pool_view
            p.shown = True
            p.base_done = sum(self._slot_done)
            self._pool_view = p
            if old is not None and old.final_state is None:  # one live at a time: the newest
                old.final_state = "replaced"
                snap = self._snapshot(None, time.monotonic(), "stopped", old)
                snap["note"] = "replaced by a newer dashboard of this pool"
                self._post(old, snap, final=True)
            self._start_ticking(0)
        except Exception as exc:
            self._progress_failed(exc)

    def _start_ticking(self, delay: float) -> None:
        """Tick within ``delay`` s from now. A tick already due later is superseded: each tick
        carries a generation number, and only the newest chain goes on."""
        due = time.monotonic() + delay
        if self._tick_due is not None and self._tick_due <= due:
            return
        self._tick_gen += 1
        self._tick_due = due
        gen = self._tick_gen
        self._timers.call_later(delay, lambda: self._tick(gen))

    def _tick(self, gen: int) -> None:
        if gen != self._tick_gen or self._progress_off:
            return
        self._tick_due = None
        try:
            now = time.monotonic()
            for job in list(self._progress_live.values()):
                p = job.progress
                assert p is not None
                if not p.shown and (p.mode is True or now - p.started_at >= AUTO_AFTER_S):
                    p.shown = True
                if p.shown:
                    self._post(p, self._snapshot(job, now, "running"))
            pv = self._pool_view
            watched = pv is not None and pv.final_state is None
            if watched:
                assert pv is not None
                self._post(pv, self._snapshot(None, now, "running" if self._jobs else "idle"))
            if not self._terminating and (self._progress_live or watched):
                # A pool dashboard with nothing running refreshes CPU and memory once a second.
                busy = self._progress_live or self._jobs
                self._start_ticking(TICK_S if busy else 1.0)
        except Exception as exc:
            self._progress_failed(exc)

    def _progress_ended(self, job: Job | None, state: str) -> None:
        """The job (or, for None, the pool) is over: render its final snapshot."""
        p = job.progress if job is not None else self._pool_view
        if job is not None:
            self._progress_live.pop(job.id, None)
        if p is None or p.final_state is not None:
            return
        p.final_state = state
        if not p.shown or self._progress_off:
            p.rendered.set()
            return
        try:
            self._post(p, self._snapshot(job, time.monotonic(), state, p), final=True)
        except Exception as exc:
            self._progress_failed(exc)

    def _progress_concluded(self, job: Job) -> None:
        """A blocking call raised at its first failure (its other items go on, unseen): the
        dashboard goes to its final state now, so that it is final when the cell ends."""
        p = job.progress
        if p is not None and p.final_state is None:
            p.cancel_note = (
                "the call raised at its first failure; items still to run go on in the background"
            )
        self._progress_ended(job, "failed")

    def _progress_interrupted(self, job: Job, why: str = "interrupted") -> None:
        """Cancelled: the rows of the workers it stops say what they were on."""
        p = job.progress
        if p is None or self._progress_off:
            return
        if why == "dropped":
            p.cancel_note = "the iterator was dropped before its end: its job was cancelled"
        try:
            now = time.monotonic()
            for w in self._slots:
                if w is not None and any(c.job is job for c in w.inflight.values()):
                    row = self._row(job, w.wid, w, now)
                    row.pop("_in_chunk")
                    p.interrupted[w.wid] = row
        except Exception as exc:
            self._progress_failed(exc)
        self._progress_ended(job, "interrupted")

    def _post(self, p: JobProgress, snap: dict[str, Any], final: bool = False) -> None:
        if self._views is None:
            from .._notebook.views import ViewThread

            self._views = ViewThread()
        self._views.post(p, snap, final)

    # ------------------------------------------------------------------ snapshots

    def _snapshot(
        self, job: Job | None, now: float, state: str, p: JobProgress | None = None
    ) -> dict[str, Any]:
        p = p or (job.progress if job is not None else self._pool_view)
        assert p is not None
        rows = [self._row(job, wid, w, now) for wid, w in enumerate(self._slots)]
        in_chunk = sum(r.pop("_in_chunk") for r in rows)
        elapsed = now - p.t0
        total: int | None = None
        note = ""
        if job is not None:
            done, failed = job.delivered + in_chunk, job.failed
            src = job.source
            total = src.length
            if total is None and src.exhausted:  # the input's own exception is an item too
                total = src.pos + (1 if src.error is not None else 0)
            if total is not None:
                done = min(done, total)
        else:  # the pool: everything since it started
            done = sum(self._slot_done) + in_chunk
            failed = self._failed_total + sum(j.failed for j in self._jobs.values())
            running = len(self._jobs)
            note = f"{running} call{'s' if running != 1 else ''} running" if running else ""
        if state in ("running", "idle"):
            # Never backwards while it runs: items of a dead worker's chunk that had finished
            # are run again, and a chunk's count moves from the slot to the job in one step.
            done = p.high_done = max(done, p.high_done)
        # The pool's rate counts what was done since its dashboard was shown.
        rate = (done - p.base_done) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if total is not None and rate > 0 else None
        if state == "interrupted":
            note = p.cancel_note or (
                "interrupted: queued items were dropped and running ones stopped"
            )
            for r in rows:
                stopped = p.interrupted.get(r["id"])
                if stopped is not None:
                    r.update(stopped, state="interrupted")
        elif job is not None and state == "failed" and p.cancel_note:
            note = p.cancel_note
            for r in rows:
                if r["state"] not in ("dead", "starting", "restarting", "busy"):
                    r.update(state="done", item=None, _argref=None, item_s=None, note="")
        elif job is not None and state != "running":
            for r in rows:
                if r["state"] not in ("dead", "starting", "restarting"):
                    r.update(state="done", item=None, _argref=None, item_s=None, note="")
        elif job is None and state == "stopped" and (self._closing or self._terminating):
            for r in rows:
                r.update(state="dead", item=None, _argref=None, item_s=None, note="")
        if job is not None and state != "running" and self.insights is not None:
            # the pool's insights under the call's final dashboard; their text (the slowest
            # items' reprs) is made in the view thread
            extra = {"_insights": (self.insights, list(self._slots))}
        else:
            extra = {}
        return {
            **extra,
            "v": 1,
            "title": p.title,
            "state": state,
            "total": total,
            "done": done,
            "failed": failed,
            "elapsed": round(elapsed, 3),
            "rate": round(rate, 2),
            "eta": None if eta is None else round(eta, 2),
            "note": note,
            "workers": rows,
        }

    def _row(self, job: Job | None, wid: int, w: Worker | None, now: float) -> dict[str, Any]:
        """One worker's row. Its ``_argref`` (kind, item) is turned into the ``arg`` text by
        the view thread: a user's ``__repr__`` never runs in the dispatcher."""
        row: dict[str, Any] = {
            "id": wid,
            "pid": None,
            "host": "",
            "state": "restarting",
            "item": None,
            "arg": "",
            "item_s": None,
            "done": job.by_worker.get(wid, 0) if job is not None else self._slot_done[wid],
            "cpu": None,
            "rss": None,
            "note": "",
            "_in_chunk": 0,
            "_argref": None,
        }
        if w is None:
            row["state"] = "dead" if self._closing or self._terminating else "restarting"
            row["note"] = self._restarted_at.get(wid, (0.0, ""))[1]
            return row
        row["pid"] = w.pid
        row["host"] = w.host
        if w.node:
            row["node"] = w.node
        stats = w.stats()
        if stats is not None:
            row["cpu"], row["rss"] = stats
            row["_measured"] = True
        when, why = self._restarted_at.get(wid, (-1e9, ""))
        if now - when < RESTART_SHOWN_S:
            row.update(state="restarting", note=why)
            return row
        if not w.ready:
            row["state"] = "starting"
            return row
        running = w.running()
        if running is None:
            row["state"] = "idle"
            return row
        chunk, stage = running
        row["state"] = "busy"
        if job is not None and chunk.job is not job:
            row["note"] = f"on another call (job {chunk.job.id})"
            return row
        if stage >= 0:
            # The slot's ids and index are read one after the other while the worker runs on:
            # an index outside this chunk (it moved to the next one meanwhile) is clamped.
            k = min(max(stage - chunk.start, 0), chunk.count)
            row["_in_chunk"] = k
            row["done"] += k
            row["item"] = stage
            if w.seen_item != (chunk.job.id, stage):  # a new item: since when
                w.seen_item, w.seen_at = (chunk.job.id, stage), now
                if chunk.track >= TRACK_TIME:  # the worker wrote the item's start time
                    # (slot[3] is written before slot[2]: it is this item's or a later one's)
                    w.seen_at = min(now, w.slot[3] / 1e9)
            row["item_s"] = round(max(0.0, now - w.seen_at), 2)
            if k < chunk.count:
                row["_argref"] = (chunk.job.kind, chunk.items[k])
        elif stage == STAGE_LOADING:
            row.update(item=chunk.start, note="loading")
        elif stage == STAGE_PICKLING:  # every item of the chunk is done; results on their way
            row.update(item=chunk.start + chunk.count - 1, note="sending results")
            row["_in_chunk"] = chunk.count
            row["done"] += chunk.count
        else:
            row.update(item=chunk.start)
        return row
