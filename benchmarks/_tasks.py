"""Task functions for the benchmarks.

They live in an importable module (not in ``__main__``) so that every library's workers, stdlib
``spawn`` ones included, can import them by name. Keep this module free of heavy imports: the
workers' memory is measured after they have imported it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def sq(x: int) -> int:
    return x * x


def echo(a: Any) -> Any:
    """Return the argument unchanged (so a big argument travels both ways)."""
    return a


def total(a: Any) -> float:
    """Sum an array in the worker: only a float comes back (data travels one way)."""
    return float(a.sum())


def make_ones(n: int) -> Any:
    """A float64 array of ``n`` ones made in the worker (data travels back only)."""
    import numpy as np  # here, not at the top: a worker pays for numpy only when it uses it

    return np.ones(n)


class Box:
    """A batch of items (or of results) as one opaque object, pickled whole.

    Dask looks inside a plain list, element by element, both as a task's argument and as its
    result: a batch of 12,500 ints returned as a list cost ~25 µs an item here (2.5 s for
    100,000 items), returned in a Box 0.3 µs.
    """

    __slots__ = ("items",)

    def __init__(self, items: list) -> None:
        self.items = items


def batch(fn: Callable[[Any], Any], box: Box) -> Box:
    """Apply ``fn`` to a batch of items in one task (Dask's ``client.map`` has no chunksize)."""
    return Box([fn(x) for x in box.items])


def spin(n: int) -> int:
    """Pure-Python CPU work: ``n`` loop iterations (calibrated by the runner to ~20 ms)."""
    x = 0
    for i in range(n):
        x += i * i
    return x


def slow_echo(a: Any) -> Any:
    """Return the argument after 0.3 s: a call that is still in flight when it is looked at."""
    time.sleep(0.3)
    return a


def nap(seconds: float) -> int:
    """Sleep, then return this worker's pid (used to warm up every worker)."""
    import os

    time.sleep(seconds)
    return os.getpid()


def nap_numpy(seconds: float) -> int:
    """``nap`` in a worker that has imported numpy: 2 per worker reach every worker."""
    import numpy  # noqa: F401

    return nap(seconds)
