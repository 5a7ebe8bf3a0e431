"""Insights (``Pool(enable_insights=True)``, mpire's name): where each worker's time went, and
the slowest items with their arguments.

::

  dispatcher thread                          caller thread
  ─────────────────                          ─────────────
  a worker is started      → started()
  its Ready arrives        → ready()         pool.get_insights() → report(): a copy, under
  a chunk comes back       → chunk_done()      the lock, with the arguments' reprs made
  the worker is gone       → ended()           here (a user's __repr__ never runs in the
                                               dispatcher)

Per worker slot (a replacement worker adds to its slot's figures):

* start-up: from the start of the process (or actor) to its Ready: the interpreter, nbpool's
  imports, the initializer and ``worker_init``;
* working: the chunks' own time in the worker (unpickling the items, running them, pickling
  the results), as the worker measured it;
* waiting: the rest of its life after start-up (no work for it, or results and the next chunk
  on their way).

The slowest items are timed one by one in the worker (``TRACK_INSIGHTS``: a clock read per
item, which is why insights are off by default); each chunk reports its slowest few, and the
pool keeps the slowest ``TOP`` with their arguments (held until the pool ends: ``TOP`` items).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

TOP = 5  # slowest items kept (mpire keeps 5 too)
_tie = itertools.count()  # heap entries never compare their arguments


class Insights:
    def __init__(self, nslots: int) -> None:
        self._lock = threading.Lock()
        self.t0 = time.monotonic()
        z = [0.0] * nslots
        self._start_up, self._working, self._waiting = list(z), list(z), list(z)
        self._items = [0] * nslots
        self._started = [0] * nslots
        self._spawned_at: dict[int, float] = {}  # id(handle) -> when it was started
        self._ready_at: dict[int, float] = {}  # id(handle) -> when its Ready came
        self._live_working: dict[int, float] = {}  # id(handle) -> its working time so far
        self._live: dict[int, int] = {}  # id(handle) -> slot, for workers not ended yet
        # min-heap of (seconds, tie, slot, index, call, argref): the TOP slowest items
        self._slowest: list[tuple[float, int, int, int, str, Any]] = []

    # ------------------------------------------------------------------ dispatcher thread

    def started(self, key: int, slot: int, at: float) -> None:
        """A worker for ``slot``, started (its process or actor asked for) at ``at``."""
        with self._lock:
            self._spawned_at[key] = at
            self._live[key] = slot
            self._started[slot] += 1

    def ready(self, key: int) -> None:
        now = time.monotonic()
        with self._lock:
            slot = self._live.get(key)
            if slot is None or key in self._ready_at:
                return
            self._ready_at[key] = now
            self._start_up[slot] += now - self._spawned_at.get(key, now)

    def chunk_done(
        self,
        key: int,
        elapsed: float,
        count: int,
        slowest: tuple[tuple[int, float], ...],
        call: str,
        argref: Any,
    ) -> None:
        """``argref(index)`` -> (kind, item) of that item, for its repr later."""
        with self._lock:
            slot = self._live.get(key)
            if slot is None:
                return
            self._working[slot] += elapsed
            self._live_working[key] = self._live_working.get(key, 0.0) + elapsed
            self._items[slot] += count
            for index, seconds in slowest:
                if len(self._slowest) < TOP or seconds > self._slowest[0][0]:
                    entry = (seconds, next(_tie), slot, index, call, argref(index))
                    if len(self._slowest) < TOP:
                        heapq.heappush(self._slowest, entry)
                    else:
                        heapq.heapreplace(self._slowest, entry)

    def ended(self, key: int) -> None:
        now = time.monotonic()
        with self._lock:
            slot = self._live.pop(key, None)
            self._spawned_at.pop(key, None)
            ready = self._ready_at.pop(key, None)
            working = self._live_working.pop(key, 0.0)
            if slot is not None and ready is not None:
                self._waiting[slot] += max(0.0, now - ready - working)

    # ------------------------------------------------------------------ caller thread

    def report(self, workers: list[Any]) -> dict[str, Any]:
        """The figures as data (see ``Pool.get_insights``). ``workers``: the live handles by
        slot (None between workers), for pid and host."""
        from .._progress import format_arg

        now = time.monotonic()
        with self._lock:
            waiting = list(self._waiting)
            for key, slot in self._live.items():  # live workers: their waiting so far
                ready = self._ready_at.get(key)
                if ready is not None:
                    waiting[slot] += max(0.0, now - ready - self._live_working.get(key, 0.0))
            rows: list[dict[str, Any]] = []
            for slot in range(len(self._items)):
                w = workers[slot] if slot < len(workers) else None
                rows.append(
                    {
                        "id": slot,
                        "pid": (w.pid or None) if w is not None else None,
                        "host": w.host if w is not None else "",
                        "workers_started": self._started[slot],
                        "items": self._items[slot],
                        "start_up_s": self._start_up[slot],
                        "waiting_s": waiting[slot],
                        "working_s": self._working[slot],
                    }
                )
            slowest = sorted(self._slowest, key=lambda e: -e[0])
        total: dict[str, Any] = {
            key: sum(r[key] for r in rows)
            for key in ("items", "start_up_s", "waiting_s", "working_s")
        }
        spent = total["start_up_s"] + total["waiting_s"] + total["working_s"]
        return {
            "elapsed_s": now - self.t0,
            "workers": rows,
            "total": total,
            "ratios": {
                name: (total[f"{name}_s"] / spent if spent > 0 else 0.0)
                for name in ("start_up", "waiting", "working")
            },
            "slowest": [
                {
                    "seconds": seconds,
                    "item": index,
                    "worker": slot,
                    "call": call,
                    "args": format_arg(*argref),
                }
                for seconds, _, slot, index, call, argref in slowest
            ],
        }


def format_report(r: dict[str, Any]) -> str:
    """``Pool.print_insights()``'s text."""
    lines = [
        f"nbpool insights: {len(r['workers'])} worker slots, {r['total']['items']:,} items, "
        f"{r['elapsed_s']:.2f} s since the pool started",
        f"{'worker':<8}{'pid':>8}{'started':>9}{'items':>10}{'start-up':>11}{'waiting':>11}"
        f"{'working':>11}",
    ]
    for w in [*r["workers"], None]:
        row = w or {"id": "total", "pid": "", "workers_started": "", **r["total"]}
        name = f"w{row['id']}" if w is not None else "total"
        lines.append(
            f"{name:<8}{row['pid'] or '':>8}{row['workers_started']:>9}{row['items']:>10,}"
            f"{row['start_up_s']:>10.2f}s{row['waiting_s']:>10.2f}s{row['working_s']:>10.2f}s"
        )
    ratios = r["ratios"]
    lines.append(
        f"time shares: working {ratios['working']:.0%}, waiting {ratios['waiting']:.0%}, "
        f"start-up {ratios['start_up']:.0%}"
    )
    if r["slowest"]:
        lines.append("slowest items:")
        for s in r["slowest"]:
            lines.append(
                f"  {s['seconds']:8.3f} s  item {s['item']} of {s['call']} on w{s['worker']}: "
                f"{s['args']}"
            )
    return "\n".join(lines)


def summary_lines(r: dict[str, Any]) -> list[str]:
    """The dashboard's insights lines, under a call's final state (the pool's figures)."""
    ratios = r["ratios"]
    total = r["total"]
    lines = [
        f"insights: working {ratios['working']:.0%} ({total['working_s']:.2f} s), waiting "
        f"{ratios['waiting']:.0%} ({total['waiting_s']:.2f} s), start-up "
        f"{ratios['start_up']:.0%} ({total['start_up_s']:.2f} s) over "
        f"{len(r['workers'])} workers"
    ]
    for s in r["slowest"][:3]:
        lines.append(f"slow: {s['seconds']:.3f} s, item {s['item']} on w{s['worker']}: {s['args']}")
    return lines
