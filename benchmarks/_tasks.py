"""Task functions for the benchmarks.

They live in an importable module (not in ``__main__``) so that every library's workers, stdlib
``spawn`` ones included, can import them by name. Keep this module free of heavy imports: the
workers' memory is measured after they have imported it.
"""

from __future__ import annotations

import time
from typing import Any


def sq(x: int) -> int:
    return x * x


def echo(a: Any) -> Any:
    """Return the argument unchanged (so a big argument travels both ways)."""
    return a


def spin(n: int) -> int:
    """Pure-Python CPU work: ``n`` loop iterations (calibrated by the runner to ~20 ms)."""
    x = 0
    for i in range(n):
        x += i * i
    return x


def nap(seconds: float) -> int:
    """Sleep, then return this worker's pid (used to warm up every worker)."""
    import os

    time.sleep(seconds)
    return os.getpid()
