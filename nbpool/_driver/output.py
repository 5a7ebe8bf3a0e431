"""Worker stdout/stderr: read from the workers' pipes, cut into lines, tagged, written out.

Each worker's fd 1 and 2 are pipes the dispatcher reads (so output written by C code and by
subprocesses is captured too, and nothing is lost when a worker crashes). Where it goes is
decided when the work is submitted (``capture_target``): the caller's ``sys.stdout`` and
``sys.stderr`` *at that moment*, so ``%%capture``, ``capture_output()`` and
``contextlib.redirect_stdout`` capture worker output as they capture a ``print``; in a notebook,
the cell that submitted the work, even when later cells have run since.

::

  pipe bytes ─► LineBuffer (per worker fd) ─► events ─► Router ─► the target's stream
                 "line":    a whole line                 prefix "[w1 pid 4711] "
                 "rewrite": the line being redrawn        "\\r" + prefix + latest text
                            after a "\\r" (tqdm)
                 partial:   kept; written after           one write per read, not per line
                            PARTIAL_LINE_S, or when its
                            job ends

Batching: every read of a pipe (up to 64 KB, many lines) becomes one ``write`` per stream. In a
kernel that write goes to ipykernel's own ``OutStream`` with the submitting cell as this
thread's parent, and ipykernel sends what accumulated every 0.2 s as one IOPub message per cell,
as it does for the kernel's own prints: 40,000 worker lines cost a handful of messages, never
one each (a server drops IOPub messages past 1,000/s).

A line that a worker redraws with ``"\\r"`` (a tqdm bar) stays one line: each read sends
``"\\r"`` + its latest text, which Jupyter and terminals draw over the line. When another
worker's line comes between, the redrawn line is closed first (a newline), and goes on below.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

PARTIAL_LINE_S = 0.1


def notebook_target() -> Any:
    """Where output of work submitted now belongs: ``(kernel, parent header)`` of the running
    Jupyter cell, or None outside a kernel. Call it in the submitting thread."""
    if "ipykernel" not in sys.modules:  # never import IPython just to find out
        return None
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        if kernel is None:
            return None
        parent = kernel.get_parent("shell")
        return (kernel, parent) if parent else None
    except Exception:
        return None


class OutputTarget:
    """Where a job's worker output goes: the caller's streams and cell at submit time."""

    __slots__ = ("cell", "stderr", "stdout")

    def __init__(self, stdout: Any, stderr: Any, cell: Any) -> None:
        self.stdout, self.stderr, self.cell = stdout, stderr, cell

    def stream(self, name: str) -> Any:
        return self.stdout if name == "stdout" else self.stderr


def capture_target() -> OutputTarget:
    """The caller's ``sys.stdout``, ``sys.stderr`` and notebook cell, now (submitting thread)."""
    return OutputTarget(sys.stdout, sys.stderr, notebook_target())


def _visible(text: str) -> str:
    """What a terminal shows of a line redrawn with carriage returns: the last non-empty part."""
    parts = [p for p in text.split("\r") if p]
    return parts[-1] if parts else ""


class LineBuffer:
    """Bytes in, events out; remembers the unfinished line and the job it belongs to."""

    def __init__(self) -> None:
        self.partial = b""
        self.target: OutputTarget | None = None  # of the partial line's first bytes
        self.job_id: int | None = None
        self.redrawn = False  # the partial line has a "\r" in it: it is being redrawn

    def feed(self, data: bytes, target: OutputTarget | None, job_id: int | None) -> list[Any]:
        """``(kind, text, target)`` events: kind ``"line"`` (a whole line, without its newline)
        or ``"rewrite"`` (the latest text of the line being redrawn)."""
        if not self.partial:
            self.target, self.job_id = target, job_id
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        events: list[Any] = []
        line_target = self.target
        for raw in lines:
            text = raw.decode("utf-8", "replace")
            events.append(("line", _visible(text) if "\r" in text else text, line_target))
            line_target = target  # the partial line was the first one; the rest are new
        if lines:
            self.target, self.job_id, self.redrawn = target, job_id, False
        if b"\r" in self.partial:
            # Keep only the latest redraw: a bar redrawn for hours must not grow the buffer.
            # Its text may end with the "\r" itself (`print("10%", end="\r")`): keep that text.
            cr = self.partial.rstrip(b"\r").rfind(b"\r")
            if cr > 0:
                self.partial = self.partial[cr:]
            self.redrawn = True
            text = _visible(self.partial.decode("utf-8", "replace"))
            if text:
                events.append(("rewrite", text, self.target))
        return events

    def flush(self) -> tuple[str, OutputTarget | None] | None:
        """Give up waiting for the newline: the partial line as a whole line (or None)."""
        if not self.partial:
            return None
        text = self.partial.decode("utf-8", "replace")
        self.partial, self.redrawn = b"", False
        return (_visible(text) if "\r" in text else text), self.target


class Router:
    """Writes tagged worker lines to their targets (dispatcher thread only)."""

    def __init__(self) -> None:
        # Per sink (stream object + cell): the worker whose redrawn line is open at its end.
        self._open: dict[tuple[int, Any], int] = {}

    def write(self, wid: int, tag: str, stream: str, events: list[Any]) -> None:
        """Write the events of one worker stream: one write per target. ``tag``: how lines
        name the worker (``w1 pid 4711``, ``w1 pid 4711 on 10.0.0.7``)."""
        prefix = f"[{tag}] "
        texts: dict[Any, list[str]] = {}
        sinks: dict[Any, tuple[Any, Any]] = {}
        for kind, text, target in events:
            out, cell = self._sink(target, stream)
            key = (id(out), _cell_id(cell))
            sinks[key] = (out, cell)
            parts = texts.setdefault(key, [])
            owner = self._open.get(key)
            if kind == "line":
                if owner == wid:
                    parts.append(f"\r{prefix}{text}\n")  # the redrawn line, in its final state
                else:
                    parts.append(("\n" if owner is not None else "") + f"{prefix}{text}\n")
                self._open.pop(key, None)
            else:
                lead = "\r" if owner == wid else ("\n" if owner is not None else "")
                parts.append(f"{lead}{prefix}{text}")
                self._open[key] = wid
        for key, parts in texts.items():
            out, cell = sinks[key]
            _write(out, cell, stream, "".join(parts))

    @staticmethod
    def _sink(target: OutputTarget | None, stream: str) -> tuple[Any, Any]:
        if target is None:  # no submitter known: the caller's streams as they are now
            return (sys.stdout if stream == "stdout" else sys.stderr), None
        return target.stream(stream), target.cell


def _cell_id(cell: Any) -> Any:
    if cell is None:
        return None
    return cell[1].get("header", {}).get("msg_id")


def _write(out: Any, cell: Any, stream: str, text: str) -> None:
    if cell is not None:
        setter = getattr(out, "set_thread_parent", None)
        if setter is None and _is_kernel_stream(out):
            # ipykernel before 7 has no per-thread parent: straight onto IOPub with the
            # submitting cell's header (one message per read, still not one per line).
            try:
                kernel, parent = cell
                kernel.session.send(
                    kernel.iopub_socket,
                    "stream",
                    {"name": stream, "text": text},
                    parent=parent,
                    ident=f"stream.{stream}".encode(),
                )
                return
            except Exception:
                pass
        elif setter is not None:
            # ipykernel's own stream: this thread's parent is the submitting cell while we
            # write; ipykernel batches it with the cell's other output.
            try:
                token = setter(cell[1])
            except Exception:
                token = None
            try:
                out.write(text)
            except Exception:
                pass
            finally:
                if token is not None:
                    try:
                        out.reset_thread_parent(token)
                    except Exception:
                        pass
            return
    try:
        out.write(text)
        out.flush()
    except Exception:  # a closed or broken stream must not take the dispatcher down
        pass


def _is_kernel_stream(out: Any) -> bool:
    return type(out).__module__.startswith("ipykernel")


# ----------------------------------------------------------------------------- logging

_levels_cache: dict[str, Any] = {"levels": None, "probe": None}


def caller_log_levels() -> tuple[tuple[str, int], ...]:
    """The caller's logger levels to apply in workers (see ``_worker.wlog``): the root's and those
    of
    every logger with a level of its own.

    Recomputed only when some level changed: ``Logger.setLevel`` (and ``basicConfig``,
    ``dictConfig``, ``logging.disable``) empty every logger's ``_cache``, so a probe logger
    whose cache still holds an entry says nothing changed (a kernel has hundreds of loggers;
    walking them costs ~20 µs a call).
    """
    logging = sys.modules.get("logging")
    if logging is None:
        return (("", 30),)
    probe = _levels_cache["probe"]
    if probe is None:
        probe = _levels_cache["probe"] = logging.getLogger("nbpool.levels-probe")
    cache = getattr(probe, "_cache", None)
    cached = _levels_cache["levels"]
    if cached is not None and isinstance(cache, dict) and cache:
        return cached
    levels = [("", logging.getLogger().level)]
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level:
            levels.append((name, logger.level))
    _levels_cache["levels"] = result = tuple(levels)
    probe.isEnabledFor(logging.CRITICAL)  # fills its cache again
    return result


def forward_log_record(record: dict[str, Any]) -> None:
    """In the callback thread: a worker's record, handled by the caller's own logger."""
    import logging

    rec = logging.makeLogRecord(record)
    logging.getLogger(rec.name).handle(rec)
