"""The view thread: renders progress snapshots, so the dispatcher never waits on a frontend.

The dispatcher posts snapshots (``_driver.progress``); this thread keeps only the latest one per
job (a slow frontend skips frames, it never queues them), adds each worker's CPU % and RSS
from psutil, and renders it: the dashboard widget in a notebook (``_widget``), a tqdm bar in
a terminal. It exits when its engine is torn down, after rendering the final snapshots.
"""

from __future__ import annotations

import sys
import threading
import time

from .._progress import format_arg

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from .._progress import JobProgress

STATS_EVERY_S = 0.5  # psutil samples per worker process, at most this often
AREAS_KEPT = 64  # cells whose dashboard area a new call of theirs can still take over


class ProcStats:
    """CPU % and RSS per pid, sampled at most every STATS_EVERY_S."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._procs: dict[int, Any] = {}
        self._last: dict[int, tuple[float, float | None, int | None]] = {}

    def get(self, pid: int) -> tuple[float | None, int | None]:
        now = time.monotonic()
        last = self._last.get(pid)
        if last is not None and now - last[0] < STATS_EVERY_S:
            return last[1], last[2]
        try:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._procs[pid] = self._psutil.Process(pid)
                proc.cpu_percent(None)  # the first call only starts the measurement
                cpu = None
            else:
                cpu = round(proc.cpu_percent(None), 1)
            rss = proc.memory_info().rss
        except self._psutil.Error:
            self._procs.pop(pid, None)
            cpu, rss = None, None
        self._last[pid] = (now, cpu, rss)
        return cpu, rss

    def forget_others(self, pids: set[int]) -> None:
        for pid in set(self._procs) - pids:
            self._procs.pop(pid, None)
            self._last.pop(pid, None)


class TextView:
    """A tqdm bar on stderr (``progress=True`` outside a notebook)."""

    def __init__(self, p: JobProgress, snap: dict[str, Any]) -> None:
        from tqdm import tqdm

        self.title = p.title.split(" · ")[0]
        self.bar = tqdm(
            total=snap["total"], desc=self.title, unit="item", file=sys.stderr, mininterval=0
        )

    def update(self, snap: dict[str, Any]) -> None:
        self._set(snap)
        self.bar.refresh()

    def close(self, snap: dict[str, Any]) -> None:
        if snap["state"] != "finished":
            self.bar.set_description(f"{self.title} [{snap['state']}]", refresh=False)
        self._set(snap)
        self.bar.close()  # draws the final state once

    def _set(self, snap: dict[str, Any]) -> None:
        if snap["total"] is not None and self.bar.total != snap["total"]:
            self.bar.total = snap["total"]
        self.bar.n = snap["done"]
        busy = sum(1 for w in snap["workers"] if w["state"] == "busy")
        postfix = f"{busy} busy" + (f", {snap['failed']} failed" if snap["failed"] else "")
        self.bar.set_postfix_str(postfix, refresh=False)


class ViewThread:
    _reported = False  # a failing view is reported once per process

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Keyed by the JobProgress itself (one per call, one per pool dashboard).
        self._latest: dict[JobProgress, tuple[dict[str, Any], bool]] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._views: dict[JobProgress, Any] = {}  # text views (tqdm), per call
        self._areas: dict[
            Any, Any
        ] = {}  # notebook dashboards, per cell (_notebook.widget.CellArea)
        self._stats: ProcStats | None = None
        self._thread = threading.Thread(target=self._run, name="nbpool-progress", daemon=True)
        self._thread.start()

    def post(self, p: JobProgress, snap: dict[str, Any], final: bool) -> None:
        with self._lock:
            prev = self._latest.get(p)
            if prev is not None and prev[1]:
                return  # its final snapshot is already waiting: nothing comes after it
            self._latest[p] = (snap, final)
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Render what is waiting, then end the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()  # under the lock: a post after this sets it again
                batch, self._latest = self._latest, {}
                stopping = self._stopping
            for p, (snap, final) in batch.items():
                try:
                    self._render(p, snap, final)
                except Exception:  # a broken frontend must not break the pool: say it once
                    self._report_once()
                    self._views.pop(p, None)
                finally:
                    if final:
                        p.rendered.set()
            # The dispatcher posts every final snapshot before it calls stop(): once stopping
            # was seen and nothing is left, everything has been rendered.
            if stopping and not self._latest:
                break

    def _render(self, p: JobProgress, snap: dict[str, Any], final: bool) -> None:
        if self._stats is None:
            self._stats = ProcStats()
        pids = set()
        for row in snap["workers"]:
            row["arg"] = self._arg_text(p, row)
            if row.pop("_measured", False):  # a cluster's worker: its engine measured it
                continue
            if row["pid"] is not None and row["state"] not in ("dead", "interrupted"):
                pids.add(row["pid"])
                row["cpu"], row["rss"] = self._stats.get(row["pid"])
        self._stats.forget_others(pids)
        pending = snap.pop("_insights", None)  # (Insights, worker handles): made into text here
        if pending is not None:
            from .._driver.insights import summary_lines

            snap["insights"] = summary_lines(pending[0].report(pending[1]))
        if p.view == "widget":
            self._area(p).show(p, snap, final)
            p.displayed.set()
            if final:
                p.arg_cache.clear()  # a finished call keeps none of its items alive
            return
        view = self._views.get(p)
        if view is None:
            view = self._views[p] = TextView(p, snap)
            p.displayed.set()
        if final:
            del self._views[p]
            view.close(snap)
            p.arg_cache.clear()
        else:
            view.update(snap)

    def _area(self, p: JobProgress) -> Any:
        """The dashboard area of the call's cell (see _notebook.widget.CellArea), made on first
        use."""
        from .widget import CellArea, cell_key

        key = cell_key(p)
        area = self._areas.pop(key, None)
        if area is None:
            area = CellArea(p.target)
        self._areas[key] = area  # newest last: the oldest areas are forgotten first
        while len(self._areas) > AREAS_KEPT:
            self._areas.pop(next(iter(self._areas)))
        return area

    @staticmethod
    def _arg_text(p: JobProgress, row: dict[str, Any]) -> str:
        """The row's item arguments as text, formatted here (a user's ``__repr__`` may be
        slow) and once per item: the cache holds each worker's last item."""
        ref = row.pop("_argref", None)
        if ref is None:
            return str(row.get("arg", ""))
        kind, item = ref
        cached = p.arg_cache.get(row["id"])
        if cached is not None and cached[0] is item:
            return cached[1]
        text = format_arg(kind, item)
        p.arg_cache[row["id"]] = (item, text)
        return text

    def _report_once(self) -> None:
        if not ViewThread._reported:
            ViewThread._reported = True
            import traceback

            print("nbpool: the progress view failed (the work goes on):", file=sys.stderr)
            traceback.print_exc()
