"""Function payloads: the task function (or initializer) and the code and data it needs.

Functions are pickled with cloudpickle (default) or dill. Objects from installed modules go by
reference; code from ``__main__`` (a notebook cell, a ``python -c`` script, a lambda) and from
modules next to the notebook (``_worker.modules``; cloudpickle only) goes by value.

Namespaces
    A function shipped by value is rebuilt in the worker with that worker's namespace of its
    module as its globals, not a private copy: ``__main__.__dict__`` for notebook code, the
    worker's own ``sys.modules[name]`` for a module next to the notebook (imported there, or an
    empty module if it cannot be). That is what lets an initializer that sets a notebook global
    (``global MODEL; MODEL = load()``) be seen by the tasks, as it is in the notebook itself.

Globals
    The globals such a function reads travel beside it, one pickle each with a digest, and the
    worker writes one into its namespace only when the kernel's value changed since it was last
    shipped (``_APPLIED``). So a kernel value ``MODEL = None`` does not overwrite the model the
    initializer loaded, while ``K = 1`` then ``K = 2`` reaches the workers on the next call. A
    name the function reads that the kernel no longer has (``del K``) is removed from a worker
    that got it from us, so the worker fails as the kernel would, instead of using a stale value.

Large globals
    A global is pickled on every call (that is how a change is seen), with its large buffers
    (numpy arrays, DataFrame blocks) out of band: pickling them copies nothing, and hashing
    them is ~7 ms per 200 MB (xxh3). ``str`` and ``bytes`` values are never modified in place:
    the same object as last time is not pickled again. A worker that has a global at its
    digest is not sent it again. A large list or dict is still pickled on every call.

Cells
    The sources of the notebook cells a function's code comes from travel with it, and the worker
    puts them in ``linecache``: its tracebacks (and ``inspect.getsource``) show the cell's lines.
"""

from __future__ import annotations

import functools
import pickle
import sys
import types

from .message import Message
from .serialize import OOB_MIN, PROTOCOL, base_pickler, digest, short_repr

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from typing import Any

__all__ = ["FnPayload", "dumps_fn", "load_fn", "namespace_of"]

_Key = tuple  # (module name, global name)


class FnPayload(Message):
    """A function ready to ship: its pickle plus the globals it reads from by-value modules."""

    serializer: str
    digest: bytes  # fn bytes + every global's digest + missing names: equal digest, same code
    fn: bytes
    # (module, name, digest, (pickle, out-of-band buffers)): the buffers are PickleBuffers,
    # which the channel sends out of band (no copy into the message).
    globals: tuple[tuple[str, str, bytes, tuple[bytes, tuple[Any, ...]]], ...]
    name: str  # for messages
    missing: tuple[tuple[str, str], ...] = ()  # names read that the kernel does not have
    sources: tuple[tuple[str, str], ...] = ()  # (file name, text) of notebook cells

    def without_globals(self, skip: set[tuple[str, str]]) -> FnPayload:
        """The same payload minus globals the receiver already holds at the same digest."""
        kept = tuple(g for g in self.globals if (g[0], g[1]) not in skip)
        return FnPayload(
            self.serializer, self.digest, self.fn, kept, self.name, self.missing, self.sources
        )


# ----------------------------------------------------------------------------- namespaces


def namespace_of(module: str) -> dict[str, Any]:
    """The globals that shipped functions of ``module`` get on the side that loads them."""
    mod = sys.modules.get(module)
    if mod is None:
        try:
            import importlib

            mod = importlib.import_module(module)
        except Exception:  # not importable here (a cluster without the file): an empty one
            mod = types.ModuleType(module)
            sys.modules[module] = mod
    return mod.__dict__


class _NamespaceRef:
    """Pickled in place of a module's ``__dict__``; loads as the loading process's namespace."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __reduce__(self) -> Any:
        return (namespace_of, (self.module,))


class _Collect:
    """What pickling a function found: the globals it needs, names it lacks, its files."""

    def __init__(self) -> None:
        self.needed: dict[_Key, Any] = {}
        self.missing: set[_Key] = set()
        self.files: set[str] = set()

    def function(self, module: str, func: Any, present: dict[str, Any]) -> None:
        from cloudpickle.cloudpickle import _extract_code_globals

        names = _extract_code_globals(func.__code__)
        self.record(module, names, present, func.__code__.co_filename)

    def record(self, module: str, names: Any, present: dict[str, Any], filename: str) -> None:
        for name, value in present.items():
            self.needed.setdefault((module, name), value)
        for name in names:
            if name not in present:
                self.missing.add((module, name))
        self.files.add(filename)


def _module_dict(module: str) -> dict[str, Any] | None:
    mod = sys.modules.get(module)
    return getattr(mod, "__dict__", None)


_PICKLERS: dict[str, Any] = {}  # serializer -> Pickler class, built once on first use


def _cloudpickler() -> Any:
    from .modules import by_value_module

    class FnPickler(base_pickler()):  # type: ignore[misc]
        """nbpool's cloudpickle; by-value functions share the worker's module namespace."""

        def __init__(self, file: Any, found: _Collect, **kw: Any) -> None:
            super().__init__(file, **kw)
            self._nb_found = found

        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is types.ModuleType:
                name = obj.__name__
                if name != "__main__" and by_value_module(name):
                    return _module_reduce(obj)
            return super().reducer_override(obj)

        def _dynamic_function_reduce(self, func: Any) -> Any:
            rv = super()._dynamic_function_reduce(func)
            module = func.__module__
            if not by_value_module(module) or func.__globals__ is not _module_dict(module):
                return rv
            make, newargs, (state, slotstate), *rest = rv
            code, _base_globals, *tail = newargs
            self._nb_found.function(module, func, slotstate["__globals__"])
            # The globals travel separately (see the module docstring); the function is built
            # over the worker's namespace of its module instead of a private dict.
            slotstate = {**slotstate, "__globals__": {}}
            return (make, (code, _NamespaceRef(module), *tail), (state, slotstate), *rest)

    return FnPickler


def _dillpickler() -> Any:
    import dill

    base_save_function = dill.Pickler.dispatch[types.FunctionType]

    def save_function(pickler: Any, func: Any) -> None:
        main_dict = _module_dict("__main__")
        if func.__globals__ is main_dict:
            from cloudpickle.cloudpickle import _extract_code_globals

            names = _extract_code_globals(func.__code__)
            pickler._nb_found.function(
                "__main__", func, {n: main_dict[n] for n in names if n in main_dict}
            )
        base_save_function(pickler, func)

    class FnPickler(dill.Pickler):
        """dill with ``recurse`` off: a ``__main__`` function refers to the loader's
        ``__main__.__dict__``, and we ship the globals it reads ourselves. (dill ships modules
        next to the notebook by reference.)"""

        dispatch = dill.Pickler.dispatch.copy()
        dispatch[types.FunctionType] = save_function

        def __init__(self, file: Any, found: _Collect, **kw: Any) -> None:
            super().__init__(file, **kw)
            self._nb_found = found

    return FnPickler


def _pickle_with(serializer: str, obj: Any, found: _Collect, buffer_callback: Any = None) -> bytes:
    import io

    cls = _PICKLERS.get(serializer)
    if cls is None:
        cls = _PICKLERS[serializer] = (
            _cloudpickler() if serializer == "cloudpickle" else _dillpickler()
        )
    buf = io.BytesIO()
    cls(buf, found, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return buf.getvalue()


_CODE = (types.FunctionType, type, functools._lru_cache_wrapper)


def _module_reduce(mod: types.ModuleType) -> Any:
    """A module next to the notebook, used as an object (``helpers.f(x)`` in a lambda): its
    functions and classes travel by value, as they would on their own, and its constants, so
    that a worker that cannot import it (a cluster's) gets a namespace the code can use."""
    name = mod.__name__
    code: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for key, value in vars(mod).items():
        # (an lru_cache wrapper has its function's __module__)
        if getattr(value, "__module__", None) == name and isinstance(value, _CODE):
            code[key] = value
        elif isinstance(value, _IMMUTABLE) and not key.startswith("__"):
            data[key] = value
    return _load_module, (name, code, data)


def _load_module(name: str, code: dict[str, Any], data: dict[str, Any]) -> types.ModuleType:
    """The worker's ``sys.modules[name]`` with the kernel's code in it. A constant the worker
    already has stays (an initializer may have set it)."""
    ns = namespace_of(name)
    ns.update(code)
    for key, value in data.items():
        ns.setdefault(key, value)
    return sys.modules[name]


# ----------------------------------------------------------------------------- function cache

# serializer -> {function: (state, pickle, names it reads)}: a function whose state is the same
# as when it was pickled pickles to the same bytes (its globals travel apart), so it is not
# pickled again on every call (~40 µs a function, per call).
_FN_CACHE: dict[str, Any] = {}


def _fn_state(fn: Any) -> tuple[Any, ...] | None:
    """What a by-value function's pickle depends on, if that can be compared cheaply: no
    closure, no attributes, defaults of immutable types. Otherwise None (not cached)."""
    if type(fn) is not types.FunctionType or fn.__closure__ is not None or fn.__dict__:
        return None
    defaults = fn.__defaults__ or ()
    kwdefaults = fn.__kwdefaults__ or {}
    values = (*defaults, *kwdefaults.values())
    if not all(isinstance(v, _IMMUTABLE) for v in values):
        return None
    from .modules import by_value_module

    module = fn.__module__
    if not by_value_module(module) or fn.__globals__ is not _module_dict(module):
        return None
    typed = tuple((type(v), v) for v in values)  # 1, 1.0 and True are equal, not the same
    return (
        fn.__code__,
        typed,
        tuple(kwdefaults),
        fn.__qualname__,
        fn.__name__,
        fn.__doc__,
        id(fn.__annotations__),
    )


def _pickle_function(serializer: str, fn: Any, found: _Collect) -> bytes:
    # dill ships functions of modules next to the notebook by reference (no globals recorded,
    # see _dillpickler): only its __main__ functions record globals as a cache hit does.
    by_ref = serializer == "dill" and getattr(fn, "__module__", None) != "__main__"
    state = None if by_ref else _fn_state(fn)
    if state is None:
        return _pickle_with(serializer, fn, found)
    import weakref

    cache = _FN_CACHE.get(serializer)
    if cache is None:
        cache = _FN_CACHE[serializer] = weakref.WeakKeyDictionary()
    hit = cache.get(fn)
    if hit is not None and hit[0] == state:
        _, data, names = hit
        ns = fn.__globals__
        present = {name: ns[name] for name in names if name in ns}
        found.record(fn.__module__, names, present, fn.__code__.co_filename)
        return data
    data = _pickle_with(serializer, fn, found)
    from cloudpickle.cloudpickle import _extract_code_globals

    cache[fn] = (state, data, tuple(_extract_code_globals(fn.__code__)))
    return data


# ----------------------------------------------------------------------------- globals

# (serializer, module, name) -> (object, digest, data), for values that cannot change in place.
_SAME_OBJECT: dict[tuple[str, str, str], tuple[Any, bytes, Any]] = {}
_IMMUTABLE = (str, bytes, int, float, complex, bool, type(None), range)


def _pickle_global(serializer: str, key: _Key, value: Any, found: _Collect) -> tuple[bytes, Any]:
    """(digest, (pickle, buffers)) of one global (see "Large globals" above)."""
    cache_key = (serializer, *key)
    if isinstance(value, _IMMUTABLE):
        hit = _SAME_OBJECT.get(cache_key)
        if hit is not None and hit[0] is value:
            return hit[1], hit[2]
    buffers: list[pickle.PickleBuffer] = []

    def out_of_band(pb: pickle.PickleBuffer) -> bool:
        view = memoryview(pb)
        if not view.contiguous or view.nbytes < OOB_MIN:
            return True
        buffers.append(pb)
        return False

    if type(value) is types.FunctionType:  # a notebook helper: its pickle may be cached
        data = _pickle_function(serializer, value, found)
    else:
        data = _pickle_with(serializer, value, found, out_of_band)
    got = digest(data, *(memoryview(b).cast("B") for b in buffers))
    packed = (data, tuple(buffers))
    if isinstance(value, _IMMUTABLE):
        _SAME_OBJECT[cache_key] = (value, got, packed)
    else:
        _SAME_OBJECT.pop(cache_key, None)
    return got, packed


def _sources(files: set[str]) -> tuple[tuple[str, str], ...]:
    """The text of each notebook cell among ``files`` (cells are in linecache, not on disk)."""
    import linecache
    import os

    out = []
    for name in sorted(files):
        if not name or os.path.exists(name):
            continue
        lines = linecache.getlines(name)
        if lines:
            out.append((name, "".join(lines)))
    return tuple(out)


# ----------------------------------------------------------------------------- dumps / load


def describe_fn(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None and hasattr(fn, "func"):  # functools.partial
        return f"partial of {describe_fn(fn.func)}"
    return f"`{name}`" if name else short_repr(fn)


def dumps_fn(fn: Any, serializer: str = "cloudpickle", role: str = "function") -> FnPayload:
    """Pickle ``fn`` (and the globals it reads from by-value modules) in the caller.

    This is also the pre-flight check: an unpicklable function fails here, in the caller, with a
    message naming the function and, when the culprit is a global it reads, that global.
    """
    from .._errors import SerializationError

    cached = _by_reference(fn, serializer, role)
    if cached is not None:
        return cached
    found = _Collect()
    what = f"{role} {describe_fn(fn)}"
    try:
        fn_bytes = _pickle_function(serializer, fn, found)
    except Exception as exc:
        from .modules import by_reference, in_by_reference

        if not in_by_reference():  # once: modules next to the notebook by reference instead
            try:
                with by_reference():
                    return dumps_fn(fn, serializer, role)
            except Exception:
                pass
        raise SerializationError(
            f"cannot pickle the {what}: {exc}. Define what it needs inside the function, or "
            "create unpicklable resources (connections, locks, open files) in an `initializer`."
        ) from exc
    shipped: list[tuple[str, str, bytes, Any]] = []
    done: set[_Key] = set()
    # Pickling one global can reveal more (a notebook helper that reads another global).
    while len(done) < len(found.needed):
        key = next(k for k in found.needed if k not in done)
        done.add(key)
        value = found.needed[key]
        try:
            got, packed = _pickle_global(serializer, key, value, found)
        except Exception as exc:
            where = "" if key[0] == "__main__" else f" of module `{key[0]}`"
            raise SerializationError(
                f"the {what} reads the global `{key[1]}`{where}, a {type(value).__name__} that "
                f"cannot be pickled ({exc}). Pass it through `initializer` instead (create it "
                "in the worker)."
            ) from exc
        shipped.append((key[0], key[1], got, packed))
    shipped.sort(key=lambda g: (g[0], g[1]))
    missing = tuple(sorted(found.missing - set(found.needed)))
    for module, name in missing:  # gone from the kernel: don't keep its last value alive
        _SAME_OBJECT.pop((serializer, module, name), None)
    parts: list[bytes] = [fn_bytes]
    for module, name, got, _ in shipped:
        parts += [module.encode(), b"\0", name.encode(), b"\0", got]
    for module, name in missing:
        parts += [b"-", module.encode(), b"\0", name.encode(), b"\0"]
    return FnPayload(
        serializer,
        digest(*parts),
        fn_bytes,
        tuple(shipped),
        what,
        missing,
        _sources(found.files),
    )


_BY_REF: dict[tuple[Any, str, str], FnPayload] = {}


def _by_reference(fn: Any, serializer: str, role: str) -> FnPayload | None:
    """Fast path for importable functions (``abs``, ``math.sqrt``, a library's function): they
    pickle by name, carry no globals of ours, so their payload never changes; cache it."""
    key = (fn, serializer, role)
    try:
        hit = _BY_REF.get(key)
    except TypeError:  # unhashable callable
        return None
    if hit is not None:
        return hit
    if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)):
        return None
    from .modules import by_value_module

    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if module is None or by_value_module(module) or "<" in qualname:
        return None
    try:
        data = pickle.dumps(fn, protocol=PROTOCOL)  # checks that the name leads back to fn
    except Exception:
        return None
    payload = FnPayload(serializer, digest(data), data, (), f"{role} {describe_fn(fn)}")
    if len(_BY_REF) > 256:
        _BY_REF.clear()
    _BY_REF[key] = payload
    return payload


# Worker side: (module, name) -> digest of the value last written into that namespace by us.
_APPLIED: dict[tuple[str, str], bytes] = {}


def _loads(serializer: str, data: Any, buffers: Any = ()) -> Any:
    if serializer == "dill":
        import dill

        return dill.loads(data, buffers=buffers)
    return pickle.loads(data, buffers=buffers)


def in_process_fn(fn: Any, role: str = "function") -> FnPayload:
    """``start_method="threading"``: the function itself, not pickled (the worker is a thread
    of the caller). A fresh digest each time: the worker keeps it only as long as the dispatcher's
    mirror says (see ``_driver.scheduling._fn_for``)."""
    import os

    from .serialize import InProcess

    shipped: Any = InProcess(fn)  # (where a pickle goes otherwise)
    return FnPayload("inprocess", os.urandom(16), shipped, (), f"{role} {describe_fn(fn)}")


def load_fn(payload: FnPayload) -> Any:
    """Worker side: drop globals the kernel no longer has, apply changed ones, then load."""
    if payload.serializer == "inprocess":
        return payload.fn.obj  # type: ignore[attr-defined]
    for module, name in payload.missing:
        if _APPLIED.pop((module, name), None) is not None:
            namespace_of(module).pop(name, None)
    for module, name, got, (data, buffers) in payload.globals:
        if _APPLIED.get((module, name)) != got:
            namespace_of(module)[name] = _loads(payload.serializer, data, buffers)
            _APPLIED[(module, name)] = got
    if payload.sources:
        import linecache

        for filename, text in payload.sources:
            linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    return _loads(payload.serializer, payload.fn)
