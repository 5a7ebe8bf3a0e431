"""Pickling of data, and the rules every nbpool pickler follows. ``_worker.functions`` pickles
functions.

Arguments and results
    Plain pickle protocol 5 first (fast, and large buffers such as numpy arrays travel out of band,
    without a copy into the pickle). When that fails, or when the pickle refers to ``__main__``
    (which names an object the other side may not have, or may have in another version), nbpool's
    cloudpickle subclass pickles by value instead; its class tracker makes a notebook class that
    went to a worker and came back be the very same class, so ``isinstance`` holds in the kernel.

Rules of nbpool's cloudpickle subclass (``base_pickler``), for data and functions alike
    * Code objects keep their file name. cloudpickle replaces it with ``"<dynamic-code>"`` (to make
      pickles deterministic), which left remote tracebacks without cell or source line. With the
      name kept, and the cells' sources shipped beside the function (``_worker.functions``), a
      worker's
      traceback shows the cell's line, as a local one does.
    * ``functools.lru_cache`` / ``functools.cache`` wrappers of code that travels by value are
      rebuilt in the worker around the function shipped by value (with an empty cache of the same
      size). cloudpickle sent them by name, and the worker had no such name.
    * Functions and classes of modules next to the notebook travel by value (see
    ``_worker.modules``).
    * An open file is refused with a message that says to pass its path. cloudpickle would send a
      ``StringIO`` of its contents instead, silently.
"""

from __future__ import annotations

import _thread
import pickle
import sys
import types

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "PROTOCOL",
    "InProcess",
    "base_pickler",
    "digest",
    "dumps_data",
    "in_process",
    "loads_data",
    "short_repr",
]

PROTOCOL = 5
# Buffers smaller than this stay inside the pickle: a separate frame costs more than a copy.
OOB_MIN = 64 * 1024


def digest(*parts: bytes | memoryview) -> bytes:
    """A 128-bit content hash (xxh3: ~30 GB/s here, where blake2b does ~0.5 GB/s). Caller side
    only: it decides what a worker already has, so a 200 MB global costs ~7 ms a call."""
    import xxhash

    h = xxhash.xxh3_128()
    for part in parts:
        h.update(part)
    return h.digest()


def short_repr(obj: Any, limit: int = 80) -> str:
    """A repr that is always short and never raises (used in error messages)."""
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<{type(obj).__name__} (repr failed: {exc!r})>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- the picklers


def _rebuild_lru_cache(fn: Any, maxsize: int | None, typed: bool) -> Any:
    import functools

    return functools.lru_cache(maxsize=maxsize, typed=typed)(fn)


def _refuse_file(f: Any) -> Any:
    if f is sys.stdout or f is sys.stderr or f is sys.stdin:
        from cloudpickle.cloudpickle import _file_reduce  # the worker's own stream, by name

        return _file_reduce(f)
    name = getattr(f, "name", "?")
    mode = getattr(f, "mode", "?")
    raise pickle.PicklingError(
        f"an open file ({name!r}, mode {mode!r}) cannot be sent to a worker: pass its path "
        "instead and open it in the task"
    )


_BASE: list[Any] = []


def base_pickler() -> Any:
    """nbpool's cloudpickle Pickler (see the module docstring), built on first use."""
    if _BASE:
        return _BASE[0]
    import collections
    import functools
    import io

    import cloudpickle
    from cloudpickle import cloudpickle as cp

    from .modules import by_value_module

    def code_reduce(code: types.CodeType) -> Any:
        make, args = cp._code_reduce(code)
        # cloudpickle writes "<dynamic-code>" where the file name goes: the first such string
        # (co_code is bytes, co_names a tuple) is it.
        args = list(args)
        args[args.index("<dynamic-code>")] = code.co_filename
        return make, tuple(args)

    class Base(cloudpickle.Pickler):
        dispatch_table = collections.ChainMap(
            {types.CodeType: code_reduce, io.TextIOWrapper: _refuse_file},
            cloudpickle.Pickler.dispatch_table,
        )

        def reducer_override(self, obj: Any) -> Any:
            t = type(obj)
            if t is types.FunctionType:
                if by_value_module(obj.__module__) and obj.__module__ != "__main__":
                    return self._dynamic_function_reduce(obj)
            elif isinstance(obj, type):
                if by_value_module(obj.__module__) and obj.__module__ != "__main__":
                    return cp._dynamic_class_reduce(obj)
            elif t is functools._lru_cache_wrapper:
                wrapped = getattr(obj, "__wrapped__", None)
                if wrapped is not None and by_value_module(getattr(wrapped, "__module__", None)):
                    params = obj.cache_parameters()
                    return _rebuild_lru_cache, (wrapped, params["maxsize"], params["typed"])
            return super().reducer_override(obj)

    _BASE.append(Base)
    return Base


def _base_dumps(obj: Any, buffer_callback: Any) -> bytes:
    import io

    buf = io.BytesIO()
    base_pickler()(buf, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return buf.getvalue()


# ----------------------------------------------------------------------------- data


class InProcess:
    """An object handed over as it is, never pickled: ``start_method="threading"``, where the
    workers are threads of the caller (items, results, functions, exceptions)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj


_here = _thread._local()  # .on: this thread is a threading-engine worker (see in_process)


def in_process() -> bool:
    """Whether the calling thread is a worker thread of the threading engine: what it sends
    to the dispatcher is handed over as it is (``InProcess``), not pickled."""
    return getattr(_here, "on", False)


def mark_in_process() -> None:
    _here.on = True


def dumps_data(obj: Any, to_caller: bool = False) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle an argument list or a result list; large contiguous buffers come back separately.

    ``to_caller``: the pickle goes from a worker back to the caller. A by-reference
    ``__main__.Name`` is then fine: pickle checked that the worker's ``__main__.Name`` is this very
    object, and the worker only has such names because the caller shipped them, so the caller
    resolves the reference to its own class (``isinstance`` holds, whatever serializer shipped it).
    """
    if to_caller and getattr(_here, "on", False):  # a worker thread: no copy (see InProcess)
        return InProcess(obj), []  # type: ignore[return-value]
    buffers: list[pickle.PickleBuffer] = []

    def keep_out_of_band(pb: pickle.PickleBuffer) -> bool:
        view = pb.raw() if memoryview(pb).contiguous else None
        if view is None or view.nbytes < OOB_MIN:
            return True  # true: serialize in band
        buffers.append(pb)
        return False

    try:
        data = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=keep_out_of_band)
        # b"__main__" in the pickle means a by-reference global from __main__: the other side's
        # __main__ may lack it or hold another version. Cheap to test, rarely true.
        if to_caller or b"__main__" not in data:
            return data, buffers
    except Exception:
        pass
    buffers.clear()
    return _base_dumps(obj, keep_out_of_band), buffers


def loads_data(data: bytes | bytearray | memoryview, buffers: list[Any] = ()) -> Any:  # type: ignore[assignment]
    if type(data) is InProcess:
        return data.obj
    return pickle.loads(data, buffers=buffers)
