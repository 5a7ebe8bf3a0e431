"""Worker stdout/stderr: read from the workers' pipes, cut into lines, tagged, written out.

Each worker's fd 1 and 2 are pipes the dispatcher reads (so output written by C code and by
subprocesses is captured too, and nothing is lost when a worker crashes). Lines are written
whole, one ``write`` each, prefixed ``[w1 pid 4711]``, so lines of different workers never
interleave mid-line; a partial line is written after ``PARTIAL_LINE_S`` without its newline
arriving (a progress dot, a prompt).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any, TextIO

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


class TerminalOutput:
    """Writes worker lines to the cell that submitted the work (in a Jupyter kernel), or to the
    caller's current ``sys.stdout`` / ``sys.stderr``."""

    def write(self, worker_id: int, pid: int, stream: str, text: str, target: Any = None) -> None:
        line = f"[w{worker_id} pid {pid}] {text}"
        if target is not None:
            # Straight onto IOPub with the submitting cell's header: ipykernel ties a thread's
            # prints to the cell that started the thread (ipykernel#1289), which for our
            # dispatcher is the cell that created the pool, not the one that submitted the job.
            try:
                kernel, parent = target
                kernel.session.send(
                    kernel.iopub_socket,
                    "stream",
                    {"name": stream, "text": line},
                    parent=parent,
                    ident=f"stream.{stream}".encode(),
                )
                return
            except Exception:  # fall back to plain stdout/stderr
                pass
        out: TextIO = sys.stdout if stream == "stdout" else sys.stderr
        try:
            out.write(line)
            out.flush()
        except Exception:  # a closed or broken stream must not take the dispatcher down
            pass


class LineBuffer:
    """Bytes in, whole lines out; remembers the tail of an unfinished line."""

    def __init__(self) -> None:
        self.partial = b""

    def feed(self, data: bytes) -> list[str]:
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") + "\n" for line in lines]

    def flush(self) -> str | None:
        if not self.partial:
            return None
        text, self.partial = self.partial.decode("utf-8", "replace"), b""
        return text + "\n"
