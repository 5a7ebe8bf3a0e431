"""The progress model's small pieces that the facade, the dispatcher and the views share.

``JobProgress`` (a call's view settings and state), the ``progress=`` rules, the wait for a
final render, and how an item's arguments are shown. The dispatcher's side of progress is
``_driver.progress`` (snapshots); the views are ``_notebook.views``. Both import this module,
and neither imports the other at import time.
"""

from __future__ import annotations

import threading
import time

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

TICK_S = 0.1  # at most ~10 view updates a second, whatever the item rate
AUTO_AFTER_S = 0.5
RESTART_SHOWN_S = 1.0  # a replaced worker's row says "restarting" at least this long
FINAL_RENDER_WAIT_S = 2.0  # a blocking call waits this long at most for the final render


def check_progress(value: Any) -> Any:
    """``"auto"``, ``True`` or ``False``; anything else is a clear error."""
    if value is True or value is False or value == "auto":
        return value
    raise ValueError(f"progress must be 'auto', True or False, not {value!r}")


class JobProgress:
    """A job's progress settings and view state (dispatcher-owned, but ``rendered``)."""

    def __init__(self, mode: bool | str, view: str, target: Any, title: str) -> None:
        self.mode = mode  # "auto" | True
        self.view = view  # "widget" | "text"
        self.target = target  # (kernel, parent header) of the submitting cell, or None
        self.title = title
        self.t0 = time.monotonic()
        self.shown = False
        self.final_state: str | None = None
        self.interrupted: dict[int, dict[str, Any]] = {}  # worker id -> its row when stopped
        self.cancel_note = ""  # why it was cancelled, when not by an interrupt
        # Set once the final snapshot is rendered (or when there is nothing to render): a
        # blocking call waits for it, so the saved notebook holds the final dashboard.
        self.rendered = threading.Event()
        self.displayed = threading.Event()  # set once its view is shown (``%pool`` waits)
        self.base_done = 0  # a pool dashboard: items the pool had done when it was shown
        self.started_at = self.t0  # when its first chunk was sent ("auto" counts from there)
        self.high_done = 0  # the most items a running snapshot has shown (never go back)
        self.arg_cache: dict[int, tuple[Any, str]] = {}  # view thread: worker -> (item, text)


def await_final_render(p: JobProgress | None, only_if_over: bool = False) -> None:
    """Let a blocking call return only once its dashboard's final state is rendered (up to
    FINAL_RENDER_WAIT_S), so that it is in the cell's output when the cell ends (what a saved
    notebook keeps). ``only_if_over``: not if the job still runs (a call that raised at its
    first failure while its other items go on must not wait for them)."""
    # Not shown by the time the result is here: it never will be (the job ends in the same
    # dispatcher step that delivered it, with no tick in between), so there is nothing to wait.
    if p is None or not p.shown:
        return
    if p.final_state is not None or not only_if_over:
        p.rendered.wait(FINAL_RENDER_WAIT_S)


def wants_view(mode: Any, in_notebook: bool) -> str | None:
    """Which view a call gets: ``"widget"``, ``"text"`` or None."""
    if mode is False:
        return None
    if in_notebook:
        return "widget"
    return "text" if mode is True else None


def describe_call(kind: str, fn_name: str, length: int | None) -> str:
    call = {"apply": "apply", "star": "starmap"}.get(kind, "map")
    if kind == "apply":
        return f"{call}({fn_name})"
    items = f"{length:,} items" if length is not None else "streamed items"
    return f"{call}({fn_name}) · {items}"


def format_arg(kind: str, item: Any) -> str:
    """A short, readable repr of one item's arguments (for the worker rows).

    ``reprlib`` stops early on big containers: a row must not cost a full repr of a long list.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = 60
    try:
        if kind == "apply":
            args, kwds = item
            text = ", ".join([*map(r.repr, args), *(f"{k}={r.repr(v)}" for k, v in kwds.items())])
        elif kind == "star" and isinstance(item, tuple):
            text = ", ".join(map(r.repr, item))
        else:
            text = r.repr(item)
    except Exception as exc:  # a broken __repr__ must not take the dispatcher down
        text = f"<{type(item).__name__} (repr failed: {exc!r})>"
    return text if len(text) <= 60 else text[:57] + "..."
