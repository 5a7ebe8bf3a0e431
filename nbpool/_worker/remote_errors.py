"""Exceptions raised in a worker, carried back to the caller as data and raised there.

Worker side (``pack_exception``): the exception is pickled, with its traceback formatted as
text. The traceback shows the notebook cell's lines: code shipped by value keeps its cell's
file name, and the cell's source travels with it (``_worker.functions``). An exception with an
attribute that cannot be pickled (a lock, a connection, an open file) is sent without that
attribute (its type, message and other attributes intact) and says so in a note; one whose
arguments cannot be pickled either is sent as text only.

Caller side (``rebuild_exception``): the exception as its own type, with the worker's traceback
as ``__cause__`` (a ``RemoteTraceback`` headed by worker, pid and item, with cell file names
shown as IPython shows them: ``Cell In[5], line 3``). Two exceptions are not re-raised as
they are:

* ``SystemExit``, ``KeyboardInterrupt`` and other ``BaseException``\\s that are not
  ``Exception``\\s would end the caller (``sys.exit()`` in a task ended the script that ran
  the pool): they come as ``TaskExitError``, which says what the task did.
* One that cannot be rebuilt in the caller (its ``__init__`` needs other arguments than its
  ``args``, its class cannot be imported here) comes as a ``RuntimeError`` that says why,
  with its type name, message and traceback.
"""

from __future__ import annotations

import pickle
import sys

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from typing import Any

__all__ = ["load_failure_hint", "pack_exception", "rebuild_exception"]


# ----------------------------------------------------------------------------- worker side


def _dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=5)  # __main__ refs are fine: see dumps_data(to_caller)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(obj, protocol=5)


def _picklable(value: Any) -> bool:
    try:
        _dumps(value)
        return True
    except Exception:
        return False


def pack_exception(exc: BaseException, skip_module: str = "") -> tuple[bytes, str, str]:
    """(pickled exception or b"", formatted traceback, what could not be sent: "" if nothing).

    Frames of ``skip_module`` (the worker loop) are left out of the traceback.
    """
    import traceback  # only when an item fails

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") == skip_module:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    from .serialize import InProcess, in_process

    if in_process():  # a worker thread: the exception itself, with its traceback
        return InProcess(exc), text, ""  # type: ignore[return-value]
    try:
        return _dumps(exc), text, ""
    except Exception as why:
        reason = f"{type(why).__name__}: {why}"
    # Send it without what cannot travel: its type, message and other attributes stay.
    state = getattr(exc, "__dict__", {})
    dropped = [k for k, v in state.items() if not _picklable(v)]
    lost = (
        f"attribute{'s' if len(dropped) != 1 else ''} {', '.join(dropped)} could not be "
        f"pickled ({reason}) and {'were' if len(dropped) != 1 else 'was'} left out"
        if dropped
        else f"it could not be pickled ({reason})"
    )
    try:
        clone = type(exc).__new__(type(exc))
        clone.args = tuple(a if _picklable(a) else repr(a) for a in exc.args)
        for k, v in state.items():
            if k not in dropped:
                object.__setattr__(clone, k, v)
        return _dumps(clone), text, lost
    except Exception:
        return b"", text, lost


# ----------------------------------------------------------------------------- caller side


def cell_names(tb: str) -> str:
    """``File "/tmp/ipykernel_1/123.py", line 3`` -> ``Cell In[5], line 3``, as IPython shows
    a local traceback (only in IPython, for the cells it knows)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return tb
    try:
        names = ipython.get_ipython().compile._filename_map
    except Exception:
        return tb
    if not names:
        return tb
    import re

    def name(m: Any) -> str:
        count = names.get(m.group(1))
        return m.group(0) if count is None else f"Cell In[{count}], line {m.group(2)}"

    return re.sub(r'File "([^"]+)", line (\d+)', name, tb)


def rebuild_exception(
    data: bytes, tb: str, type_name: str, message: str, header: str, lost: str = ""
) -> BaseException:
    """The worker's exception, ready to raise in the caller (see the module docstring)."""
    from .._errors import TaskExitError, add_note
    from .._mp_errors import RemoteTraceback

    exc: BaseException
    try:
        from .serialize import loads_data

        exc = loads_data(data) if data else None  # type: ignore[assignment]
        if not isinstance(exc, BaseException):
            raise TypeError(f"the worker sent {type(exc).__name__}, not an exception")
    except Exception as load_error:
        if not data:
            why = f"in the worker, {lost}"
        else:
            why = f"in the caller, rebuilding it failed: {type(load_error).__name__}: {load_error}"
        exc = RuntimeError(
            f"{type_name}: {message}\n(nbpool could not send this {type_name} back as itself: "
            f"{why}. It is raised as a RuntimeError with the worker's traceback. To keep its "
            "type, give the exception picklable attributes and an __init__ that accepts its "
            "args, or a __reduce__.)"
        )
    else:
        if lost:
            add_note(exc, f"nbpool: {lost} when this exception was sent back from the worker.")
    exc.__cause__ = RemoteTraceback(f'\n{header}\n"""\n{cell_names(tb)}"""')
    if not isinstance(exc, Exception):
        wrapper = TaskExitError(
            f"the task raised {type_name}({message}) ({header.rstrip(':')}). A task cannot "
            "end the program that runs the pool, so nbpool raises this instead of re-raising "
            "it. Raise an Exception to fail an item; to stop all the work, call "
            "pool.terminate() in the caller.",
            exception=exc,
        )
        wrapper.__cause__ = exc
        return wrapper
    return exc


def load_failure_hint(last_line: str) -> str:
    """What to do when a worker could not load a function, from its error's last line."""
    import re

    m = re.search(r"Can't get attribute '([\w.]+)' on <module '__main__'", last_line)
    if m:
        name = m.group(1)
        obj = sys.modules["__main__"].__dict__.get(name.split(".")[0])
        kind = f"a {type(obj).__name__}" if obj is not None else "an object"
        return (
            f"`{name}` ({kind}) is defined in the notebook, but it pickles by name (its "
            "class says so) and the workers have no such name. Define it in a module next to "
            "the notebook (such modules travel by value), or try serializer='dill'."
        )
    m = re.search(r"No module named '([\w.]+)'", last_line)
    if m:
        return (
            f"The workers cannot import `{m.group(1)}`. Install it in this environment "
            f"({sys.executable}), or put the module next to the notebook."
        )
    return (
        "If it uses a module of yours, make sure the worker can import it (it sees the "
        "caller's sys.path and working directory)."
    )
