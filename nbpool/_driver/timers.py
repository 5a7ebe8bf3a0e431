"""Deadlines for the dispatcher: its ``select()`` sleeps exactly until the next one is due."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], Any]]] = []
        self._seq = itertools.count()

    def call_at(self, when: float, fn: Callable[[], Any]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), fn))

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        self.call_at(time.monotonic() + delay, fn)

    def timeout(self) -> float | None:
        """Seconds until the next deadline (None: nothing pending)."""
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - time.monotonic())

    def run_due(self) -> None:
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, fn = heapq.heappop(self._heap)
            fn()
