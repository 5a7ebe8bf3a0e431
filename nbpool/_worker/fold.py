"""The worker side of ``Pool.map_reduce``: fold one chunk of items where they are computed."""

from __future__ import annotations

TYPE_CHECKING = False  # see nbpool/__init__.py
if TYPE_CHECKING:
    from typing import Any


def fold(fn: Any, reducer: Any, chunk: Any) -> Any:
    """``reducer`` over ``fn(x)`` for the items of ``chunk`` (never empty), left to right:
    the chunk sends back one value instead of a list."""
    it = iter(chunk)
    acc = fn(next(it))
    for x in it:
        acc = reducer(acc, fn(x))
    return acc
