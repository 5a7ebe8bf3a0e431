"""The dashboard widget (anywidget; its ES module and CSS are ``js/dashboard.*``).

One synced trait, ``snapshot``: the JSON dict that ``_driver.progress`` builds (schema in
``docs/architecture.md``). Every update assigns a new dict: traitlets sends nothing for an
in-place change.

Each output also carries ``text/plain`` and ``text/html`` renderings of the snapshot, so a
viewer without widgets (nbviewer, GitHub, a terminal client, a notebook saved without widget
state) shows the run's final summary; when the run ends, the output is updated (by its
display id) with the final state.

Which cell: the ``display_data`` that places the dashboard carries the submitting cell's
parent header, so the dashboard appears under that cell even if later cells have run since
(frontends keep a cell's request alive until the cell runs again). Everything after that names
the cell running *now* (ipykernel's default for a thread): comm messages reach the widget
whatever cell they name, and the final ``update_display_data`` finds the output by its display
id in any cell; naming the running cell is what lets nbclient (which listens to one cell at a
time) save the final state of an asynchronous call's dashboard too.
"""

from __future__ import annotations

import html
import os
import uuid

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # nbpool/


def asset(name: str) -> str:
    """Path of a file of ``js/``: ``nbpool/js/`` in a wheel, the top folder in a checkout."""
    for folder in (os.path.join(_HERE, "js"), os.path.join(os.path.dirname(_HERE), "js")):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"nbpool's dashboard file {name} is missing; reinstall nbpool")


_Dashboard: Any = None


def dashboard_class() -> Any:
    """The widget class, built on first use so that ``import nbpool`` never imports widgets."""
    global _Dashboard
    if _Dashboard is None:
        import pathlib

        import anywidget
        import traitlets

        class Dashboard(anywidget.AnyWidget):
            """nbpool's live dashboard: a progress bar and one row per worker."""

            _esm = pathlib.Path(asset("dashboard.js"))
            _css = pathlib.Path(asset("dashboard.css"))
            snapshot = traitlets.Dict().tag(sync=True)

            def _repr_mimebundle_(self, **kwargs: Any) -> Any:
                return bundle(self)

        _Dashboard = Dashboard
    return _Dashboard


def bundle(widget: Any) -> dict[str, Any]:
    snap = widget.snapshot
    return {
        "application/vnd.jupyter.widget-view+json": {
            "version_major": 2,
            "version_minor": 0,
            "model_id": widget.model_id,
        },
        "text/plain": render_text(snap),
        "text/html": render_html(snap),
    }


# How many earlier calls of a cell its area lists (one summary line each), at most.
HISTORY_LINES = 10


class CellArea:
    """One dashboard per notebook cell, however many calls the cell makes.

    The first call shown in a cell puts the widget under it (its ``display_data`` carries the
    submitting cell's parent header, so it lands there even if later cells have run since).
    Each later call of the same cell takes the area over: the widget shows the newest call in
    full, and the earlier ones above it as one summary line each (a loop of short maps no longer
    stacks a dashboard per call). Used by the view thread only.
    """

    def __init__(self, target: Any) -> None:
        self.kernel, self.parent = target
        self.calls: list[Any] = []  # the JobProgress of each call shown here, oldest first
        self.snaps: dict[Any, dict[str, Any]] = {}
        self.finished: set[Any] = set()  # calls whose final snapshot came
        self.forgotten = 0  # finished calls too old to have a line: only counted
        self.widget: Any = None
        self.display_id = uuid.uuid4().hex

    def show(self, p: Any, snap: dict[str, Any], final: bool) -> None:
        if p not in self.snaps:
            self.calls.append(p)
        self.snaps[p] = snap
        if final:
            self.finished.add(p)
        self._forget_old()
        composed = self._compose()
        if self.widget is None:
            self.widget = dashboard_class()(snapshot=composed)
            self._send("display_data", bundle(self.widget), self.parent)
            return
        self.widget.snapshot = composed
        if final:
            # The final state also goes into the output itself: the fallbacks then show the
            # summary, and a notebook saved without widget state still says how it ended.
            self._send("update_display_data", bundle(self.widget), self._running_cell())

    def _forget_old(self) -> None:
        """Keep the newest call and HISTORY_LINES earlier ones: a cell that loops over a
        million calls must not keep a million snapshots. (A call still running is kept: it
        will send more.)"""
        while len(self.calls) > HISTORY_LINES + 1:
            old = next((q for q in self.calls[:-1] if q in self.finished), None)
            if old is None:
                return
            self.calls.remove(old)
            del self.snaps[old]
            self.finished.discard(old)
            self.forgotten += 1

    def _compose(self) -> dict[str, Any]:
        newest = self.calls[-1]
        composed = dict(self.snaps[newest])
        earlier = self.calls[:-1]
        history = [
            {
                "title": q.title,
                "state": self.snaps[q]["state"],
                "summary": summary_line(self.snaps[q]),
            }
            for q in earlier[-HISTORY_LINES:]
        ]
        more = max(0, len(earlier) - HISTORY_LINES) + self.forgotten
        if more:
            composed["history_more"] = more
        composed["history"] = history
        return composed

    def _running_cell(self) -> Any:
        """The header of the cell running now (ipykernel 7 resolves this per thread); on older
        kernels, where it is the last shell message of any kind, the submitting cell's."""
        parent = self.kernel.get_parent()
        if parent.get("header", {}).get("msg_type") == "execute_request":
            return parent
        return self.parent

    def _send(self, msg_type: str, data: dict[str, Any], parent: Any) -> None:
        content = {"data": data, "metadata": {}, "transient": {"display_id": self.display_id}}
        self.kernel.session.send(
            self.kernel.iopub_socket, msg_type, content, parent=parent, ident=b"display_data"
        )


def cell_key(p: Any) -> Any:
    """Which area a call's dashboard goes to: its cell's (a pool dashboard has its own)."""
    if p.title.startswith("pool ·"):
        return ("pool", id(p))
    try:
        return ("cell", p.target[1]["header"]["msg_id"])
    except (TypeError, KeyError, IndexError):
        return ("call", id(p))


# ----------------------------------------------------------------------------- fallbacks


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.1f} TB"


def summary_line(snap: dict[str, Any]) -> str:
    total = snap["total"]
    done = f"{snap['done']:,}"
    count = f"{done} / {total:,} items" if total is not None else f"{done} items"
    parts = [count, f"{snap['rate']:,.1f} items/s", f"elapsed {fmt_seconds(snap['elapsed'])}"]
    if snap["state"] == "running" and snap["eta"] is not None:
        parts.insert(2, f"ETA {fmt_seconds(snap['eta'])}")
    if snap["failed"]:
        parts.append(f"{snap['failed']:,} failed")
    return " · ".join(parts)


def _item(row: dict[str, Any]) -> str:
    if row["item"] is None:
        return ""
    return f"#{row['item']} {row['arg']}".rstrip()


def _history_text(h: dict[str, Any]) -> str:
    return f"  {h['title']} · {h['state']} · {h['summary']}"


def render_text(snap: dict[str, Any]) -> str:
    if not snap:
        return "nbpool dashboard"
    lines = [_history_text(h) for h in snap.get("history", ())]
    if snap.get("history_more"):
        lines.insert(0, f"({snap['history_more']} earlier calls)")
    lines += [f"nbpool · {snap['title']} · {snap['state']}", summary_line(snap)]
    if snap.get("note"):
        lines.append(snap["note"])
    for r in snap["workers"]:
        pid = r["pid"] if r["pid"] is not None else "-"
        host = f" on {r['host']}" if r.get("host") else ""
        line = (
            f"  w{r['id']:<3} pid {pid:<8}{host} {r['state']:<12} {r['done']:>7,} done  {_item(r)}"
        )
        lines.append(line.rstrip())
    lines += snap.get("insights", ())
    return "\n".join(lines)


_COLOURS = {
    "running": "#0969da",
    "finished": "#1a7f37",
    "failed": "#cf222e",
    "interrupted": "#bc4c00",
    "idle": "#6e7781",
    "stopped": "#6e7781",
    "busy": "#0969da",
    "done": "#1a7f37",
    "dead": "#cf222e",
    "starting": "#8250df",
    "restarting": "#8250df",
}


def render_html(snap: dict[str, Any]) -> str:
    """A static table: what a viewer without widgets shows (inline styles: no CSS file)."""
    if not snap:
        return "<div>nbpool dashboard</div>"
    e = html.escape
    state = snap["state"]
    total = snap["total"]
    pct = 100.0 * snap["done"] / total if total else (100.0 if state == "finished" else 0.0)
    colour = _COLOURS.get(state, "#6e7781")
    cell = "padding:2px 10px;text-align:left;border-bottom:1px solid #d0d7de"
    rows = []
    for r in snap["workers"]:
        c = _COLOURS.get(r["state"], "#6e7781")
        rows.append(
            "<tr>"
            f"<td style='{cell}'>w{r['id']}</td>"
            f"<td style='{cell}'>{'' if r['pid'] is None else r['pid']}"
            f"{' on ' + e(r['host']) if r.get('host') else ''}</td>"
            f"<td style='{cell};color:{c}'>● {e(r['state'])}</td>"
            f"<td style='{cell};font-family:monospace'>{e(_item(r))}</td>"
            f"<td style='{cell};text-align:right'>{r['done']:,}</td>"
            f"<td style='{cell};text-align:right'>{fmt_bytes(r['rss'])}</td>"
            "</tr>"
        )
    head = "".join(
        f"<th style='{cell}'>{h}</th>" for h in ("Worker", "PID", "State", "Item", "Done", "RSS")
    )
    note = f"<div style='color:#59636e'>{e(snap['note'])}</div>" if snap.get("note") else ""
    insights = "".join(
        f"<div style='color:#59636e'>{e(line)}</div>" for line in snap.get("insights", ())
    )
    past = "".join(
        f"<div style='color:#59636e'><span style='color:{_COLOURS.get(h['state'], '#6e7781')}'>"
        f"●</span> {e(h['title'])} · {e(h['state'])} · {e(h['summary'])}</div>"
        for h in snap.get("history", ())
    )
    return (
        "<div class='nbpool-static' style='font-family:system-ui,sans-serif;font-size:13px'>"
        f"{past}"
        f"<div><b>nbpool</b> · {e(snap['title'])} "
        f"<span style='color:#fff;background:{colour};border-radius:9px;padding:0 8px'>"
        f"{e(state)}</span></div>"
        "<div style='background:#eaeef2;border-radius:4px;height:6px;margin:4px 0;width:100%'>"
        f"<div style='background:{colour};height:6px;border-radius:4px;width:{pct:.1f}%'></div>"
        f"</div><div>{e(summary_line(snap))}</div>{note}"
        f"<table style='border-collapse:collapse;margin-top:4px'><tr>{head}</tr>"
        f"{''.join(rows)}</table>{insights}</div>"
    )
