"""``pool.put(obj)``: an object stored once, passed by reference (Ray's ``ray.put``, in Pool form).

::

  caller: pool.put(obj) ─► pickled once (large buffers out of band), kept by the dispatcher
          under a new id; the caller gets an ``ObjectRef``: a few bytes to pickle
  dispatcher: pickling a chunk's items notes each ``ObjectRef`` in them (``used()``); a worker
          that lacks one gets its pickle with that chunk (``RunChunk.refs``, extra buffers)
  worker: keeps the pickles it got; the first item that names one unpickles it (``resolve``),
          every later item of every call gets that same object

So a large object is sent to each worker once, not with every item, and unpickled once per
worker. When the caller drops its last ``ObjectRef``, the dispatcher forgets the pickle and
tells the workers that hold it to forget theirs (``RunChunk.drop``, with their next chunk).
"""

from __future__ import annotations

import itertools
import threading

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ObjectRef", "resolve"]

_ids = itertools.count(1)
_noting = threading.local()  # the dispatcher's list of ids seen while it pickles a chunk


class ObjectRef:
    """What ``Pool.put(obj)`` returns: pass it as an argument (or inside one) to any call of
    that pool, and the task gets ``obj`` (each worker's own copy, unpickled once and shared by
    every item it runs). ``nbytes``: the size of its pickle.

    Examples:
        >>> table = {"a": 1, "b": 2}
        >>> with nbpool.Pool(2) as pool:
        ...     ref = pool.put(table)  # pickled once, sent to each worker once
        ...     pool.starmap(lambda t, k: t[k], [(ref, "a"), (ref, "b")])
        [1, 2]
    """

    __slots__ = ("__weakref__", "id", "nbytes")

    def __init__(self, nbytes: int) -> None:
        self.id = next(_ids)
        self.nbytes = nbytes

    def __reduce__(self) -> Any:
        seen = getattr(_noting, "ids", None)
        if seen is None:  # not an item's argument: the worker would never get its object
            import pickle

            raise pickle.PicklingError(
                f"{self!r} can be passed to its pool's calls as an argument (or inside one), "
                "not read as a global, captured by a function, or pickled otherwise: pass it "
                "as an argument"
            )
        seen.append(self.id)
        return (resolve, (self.id,))

    def __repr__(self) -> str:
        return f"<nbpool.ObjectRef {self.id} ({self.nbytes:,} bytes pickled)>"


class used:
    """``with used() as ids:`` the ids of the ``ObjectRef``s pickled in the block (this
    thread only)."""

    def __enter__(self) -> list[int]:
        _noting.ids = []
        return _noting.ids

    def __exit__(self, *exc: object) -> None:
        _noting.ids = None


# ----------------------------------------------------------------------------- worker side

_PICKLES: dict[int, tuple[Any, list[Any]]] = {}  # id -> (pickle, buffers), until resolved
_OBJECTS: dict[int, Any] = {}  # id -> the object


def receive(ref_id: int, data: Any, buffers: list[Any]) -> None:
    _PICKLES[ref_id] = (data, buffers)


def receive_object(ref_id: int, obj: Any) -> None:
    _OBJECTS[ref_id] = obj


def forget(ids: tuple[int, ...]) -> None:
    for ref_id in ids:
        _PICKLES.pop(ref_id, None)
        _OBJECTS.pop(ref_id, None)


def resolve(ref_id: int) -> Any:
    """The object of a reference (unpickling an item calls this)."""
    try:
        return _OBJECTS[ref_id]
    except KeyError:
        pass
    try:
        data, buffers = _PICKLES.pop(ref_id)
    except KeyError:
        raise LookupError(
            f"nbpool.ObjectRef {ref_id} is not known in this worker: pass references only to "
            "the pool whose put() made them"
        ) from None
    from .serialize import loads_data

    obj = _OBJECTS[ref_id] = loads_data(data, buffers)
    return obj
