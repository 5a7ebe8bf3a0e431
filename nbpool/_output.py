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
    from typing import TextIO

PARTIAL_LINE_S = 0.1


class TerminalOutput:
    """Writes worker lines to the caller's current ``sys.stdout`` / ``sys.stderr``."""

    def write(self, worker_id: int, pid: int, stream: str, text: str) -> None:
        target: TextIO = sys.stdout if stream == "stdout" else sys.stderr
        try:
            target.write(f"[w{worker_id} pid {pid}] {text}")
            target.flush()
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
