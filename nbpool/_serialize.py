"""Pickling rules; the only module that imports pickle, cloudpickle and dill.

Functions (the task function and the initializer)
    Pickled with cloudpickle (default) or dill. Objects from importable modules go by reference;
    objects defined in ``__main__`` (a notebook cell, a ``python -c`` script, a lambda) go by value.

    A function defined in ``__main__`` is rebuilt in the worker with the worker's ``__main__``
    namespace as its globals, not a private copy. That is what lets an initializer that sets a
    notebook global (``global MODEL; MODEL = load()``) be seen by the tasks, as it is in the
    notebook itself. The globals such a function reads are shipped beside it, one pickle per name
    with a digest, and the worker writes a name into its namespace only when the kernel's value
    changed since it was last shipped (``_APPLIED``). So a kernel value ``MODEL = None`` does not
    overwrite the model the initializer loaded, while ``K = 1`` then ``K = 2`` reaches the workers
    on the next call.

Arguments and results
    Plain pickle protocol 5 first (fast, and large buffers such as numpy arrays travel out of band,
    without a copy into the pickle). When that fails, or when the pickle refers to ``__main__``
    (which names an object the other side may not have, or may have in another version), cloudpickle
    pickles by value instead; its class tracker makes a notebook class that went to a worker and
    came back be the very same class, so ``isinstance`` holds in the kernel.
"""

from __future__ import annotations

import pickle
import sys
import types

from ._message import Message

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "FnPayload",
    "dumps_data",
    "dumps_fn",
    "load_fn",
    "loads_data",
    "short_repr",
]

PROTOCOL = 5
# Buffers smaller than this stay inside the pickle: a separate frame costs more than a copy.
_OOB_MIN = 64 * 1024


def _digest(data: bytes) -> bytes:
    import hashlib  # caller side only: workers never compute digests

    return hashlib.blake2b(data, digest_size=16).digest()


def short_repr(obj: Any, limit: int = 80) -> str:
    """A repr that is always short and never raises (used in error messages)."""
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<{type(obj).__name__} (repr failed: {exc!r})>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- functions


def _main_namespace() -> dict[str, Any]:
    """The globals that shipped ``__main__`` functions get on the side that loads them."""
    return sys.modules["__main__"].__dict__


class _MainNamespaceRef:
    """Pickled in place of ``__main__.__dict__``; loads as the loading process's namespace."""

    def __reduce__(self):
        return (_main_namespace, ())


_MAIN_REF = _MainNamespaceRef()


def _code_globals(code: types.CodeType) -> set[str]:
    # cloudpickle's own walker (opcodes of the code and of nested code objects); pinned <4.
    from cloudpickle.cloudpickle import _extract_code_globals

    return set(_extract_code_globals(code))


_PICKLERS: dict[str, Any] = {}  # serializer -> Pickler class, built once on first use


def _cloudpickler() -> Any:
    import cloudpickle

    class _Pickler(cloudpickle.Pickler):
        """cloudpickle, except that ``__main__`` functions share the worker's namespace."""

        def __init__(self, file: Any, main_dict: dict, needed: dict, **kw: Any) -> None:
            super().__init__(file, **kw)
            self._nb_main, self._nb_needed = main_dict, needed

        def _dynamic_function_reduce(self, func):
            rv = super()._dynamic_function_reduce(func)
            if func.__globals__ is not self._nb_main:
                return rv
            make, newargs, (state, slotstate), *rest = rv
            code, _base_globals, *tail = newargs
            for name, value in slotstate["__globals__"].items():
                self._nb_needed.setdefault(name, value)
            # The globals travel separately (see the module docstring); the function is built
            # over the worker's __main__ namespace instead of a private dict.
            slotstate = {**slotstate, "__globals__": {}}
            return (make, (code, _MAIN_REF, *tail), (state, slotstate), *rest)

    return _Pickler


def _dillpickler() -> Any:
    import dill

    base_save_function = dill.Pickler.dispatch[types.FunctionType]

    def save_function(pickler, func):
        main_dict = pickler._nb_main
        if func.__globals__ is main_dict:
            for name in _code_globals(func.__code__):
                if name in main_dict:
                    pickler._nb_needed.setdefault(name, main_dict[name])
        base_save_function(pickler, func)

    class _Pickler(dill.Pickler):
        """dill with ``recurse`` off: a ``__main__`` function refers to the loader's
        ``__main__.__dict__``, and we ship the globals it reads ourselves."""

        dispatch = dill.Pickler.dispatch.copy()
        dispatch[types.FunctionType] = save_function

        def __init__(self, file: Any, main_dict: dict, needed: dict, **kw: Any) -> None:
            super().__init__(file, **kw)
            self._nb_main, self._nb_needed = main_dict, needed

    return _Pickler


def _pickler_class(serializer: str) -> Any:
    cls = _PICKLERS.get(serializer)
    if cls is None:
        cls = _PICKLERS[serializer] = (
            _cloudpickler() if serializer == "cloudpickle" else _dillpickler()
        )
    return cls


def _pickle_with(pickler_cls: Any, obj: Any, main_dict: dict, needed: dict) -> bytes:
    import io

    buf = io.BytesIO()
    pickler_cls(buf, main_dict, needed, protocol=PROTOCOL).dump(obj)
    return buf.getvalue()


class FnPayload(Message):
    """A function ready to ship: its pickle plus the ``__main__`` globals it reads."""

    serializer: str
    digest: bytes  # identifies fn bytes + every global's digest: equal digest, same behaviour
    fn: bytes
    globals: tuple[tuple[str, bytes, bytes], ...]  # (name, digest, pickle)
    name: str  # for messages

    def without_globals(self, skip: frozenset[str] | set[str]) -> FnPayload:
        """The same payload minus globals the receiver already holds at the same digest."""
        return FnPayload(
            self.serializer,
            self.digest,
            self.fn,
            tuple(g for g in self.globals if g[0] not in skip),
            self.name,
        )


def _describe_fn(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None and hasattr(fn, "func"):  # functools.partial
        return f"partial of {_describe_fn(fn.func)}"
    return f"`{name}`" if name else short_repr(fn)


def dumps_fn(fn: Any, serializer: str = "cloudpickle", role: str = "function") -> FnPayload:
    """Pickle ``fn`` (and the ``__main__`` globals it reads) in the caller.

    This is also the pre-flight check: an unpicklable function fails here, in the caller, with a
    message naming the function and, when the culprit is a global it reads, that global.
    """
    from ._errors import SerializationError

    cached = _by_reference(fn, serializer, role)
    if cached is not None:
        return cached
    main_dict = _main_namespace()
    needed: dict[str, Any] = {}
    pickler_cls = _pickler_class(serializer)
    what = f"{role} {_describe_fn(fn)}"
    try:
        fn_bytes = _pickle_with(pickler_cls, fn, main_dict, needed)
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle the {what}: {exc}. Define what it needs inside the function, or "
            "create unpicklable resources (connections, locks, open files) in an `initializer`."
        ) from exc
    shipped: list[tuple[str, bytes, bytes]] = []
    done: set[str] = set()
    # Pickling one global can reveal more (a notebook helper that reads another global).
    while len(done) < len(needed):
        name = next(n for n in needed if n not in done)
        done.add(name)
        value = needed[name]
        try:
            data = _pickle_with(pickler_cls, value, main_dict, needed)
        except Exception as exc:
            raise SerializationError(
                f"the {what} reads the global `{name}`, a {type(value).__name__} that cannot be "
                f"pickled ({exc}). Pass it through `initializer` instead (create it in the worker)."
            ) from exc
        shipped.append((name, _digest(data), data))
    shipped.sort()
    import hashlib

    h = hashlib.blake2b(fn_bytes, digest_size=16)
    for name, digest, _ in shipped:
        h.update(name.encode())
        h.update(digest)
    return FnPayload(serializer, h.digest(), fn_bytes, tuple(shipped), what)


_BY_REF: dict[tuple[Any, str, str], FnPayload] = {}


def _by_reference(fn: Any, serializer: str, role: str) -> FnPayload | None:
    """Fast path for importable functions (``abs``, ``math.sqrt``, a module's function): they
    pickle by name, carry no notebook globals, so their payload never changes; cache it."""
    key = (fn, serializer, role)
    try:
        hit = _BY_REF.get(key)
    except TypeError:  # unhashable callable
        return None
    if hit is not None:
        return hit
    if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)):
        return None
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if module in (None, "__main__") or "<" in qualname:
        return None
    try:
        data = pickle.dumps(fn, protocol=PROTOCOL)  # checks that the name leads back to fn
    except Exception:
        return None
    payload = FnPayload(serializer, _digest(data), data, (), f"{role} {_describe_fn(fn)}")
    if len(_BY_REF) > 256:
        _BY_REF.clear()
    _BY_REF[key] = payload
    return payload


# Worker side: name -> digest of the value last written into __main__ from the kernel.
_APPLIED: dict[str, bytes] = {}


def _loads_fn_bytes(serializer: str, data: bytes) -> Any:
    if serializer == "dill":
        import dill

        return dill.loads(data)
    return pickle.loads(data)


def load_fn(payload: FnPayload) -> Any:
    """Worker side: apply changed globals, then load the function."""
    ns = _main_namespace()
    for name, digest, data in payload.globals:
        if _APPLIED.get(name) != digest:
            ns[name] = _loads_fn_bytes(payload.serializer, data)
            _APPLIED[name] = digest
    return _loads_fn_bytes(payload.serializer, payload.fn)


# ----------------------------------------------------------------------------- data


def dumps_data(obj: Any, to_caller: bool = False) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle an argument list or a result list; large contiguous buffers come back separately.

    ``to_caller``: the pickle goes from a worker back to the caller. A by-reference
    ``__main__.Name`` is then fine: pickle checked that the worker's ``__main__.Name`` is this very
    object, and the worker only has such names because the caller shipped them, so the caller
    resolves the reference to its own class (``isinstance`` holds, whatever serializer shipped it).
    """
    buffers: list[pickle.PickleBuffer] = []

    def keep_out_of_band(pb: pickle.PickleBuffer) -> bool:
        view = pb.raw() if memoryview(pb).contiguous else None
        if view is None or view.nbytes < _OOB_MIN:
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
    import cloudpickle

    buffers.clear()
    data = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=keep_out_of_band)
    return data, buffers


def loads_data(data: bytes | bytearray | memoryview, buffers: list[Any] = ()) -> Any:  # type: ignore[assignment]
    return pickle.loads(data, buffers=buffers)
