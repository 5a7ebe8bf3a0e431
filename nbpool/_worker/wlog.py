"""Worker side of log forwarding: records logged in a task reach the caller's ``logging``.

A worker is a fresh interpreter: its ``logging`` is unconfigured, so ``logger.info`` in a task
goes nowhere and a warning is printed by ``logging.lastResort`` in the worker's format, not
yours. Instead (as Dask's ``forward_logging`` does), a handler on the worker's root logger sends
each record to the caller, which hands it to ``logging.getLogger(record.name)`` there: your
handlers, formats and filters apply, and the worker is named in ``%(processName)s``
(``SpawnPoolWorker-N``) and ``%(process)d``.

Levels: records are filtered in the worker, so the worker's loggers get the caller's levels
(the root's and every logger's set explicitly), sent with the work whenever they change.

Cost: nothing until a task imports ``logging``: the handler is installed right after that
import (``_whooks.after_import``).
"""

from __future__ import annotations

import sys

from .whooks import after_import, worker_name

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["apply_levels", "install_hook"]

_state: dict[str, Any] = {"send": None, "levels": (), "set": set(), "installed": False}


def install_hook(send: Callable[[dict[str, Any]], None]) -> None:
    """Forward records through ``send(record_dict)`` once a task imports logging."""
    _state["send"] = send
    after_import("logging", _install)


def apply_levels(levels: tuple[tuple[str, int], ...]) -> None:
    """The caller's logger levels: ``((name, level), ...)``, ``""`` for the root."""
    _state["levels"] = levels
    logging = sys.modules.get("logging")
    if logging is not None and _state["installed"]:
        _set_levels(logging)


def _set_levels(logging: Any) -> None:
    wanted = dict(_state["levels"])
    for name in _state["set"] - set(wanted):  # no longer set in the caller
        logging.getLogger(name or None).setLevel(logging.NOTSET if name else logging.WARNING)
    for name, level in wanted.items():
        logging.getLogger(name or None).setLevel(level)
    _state["set"] = set(wanted)


def _install(logging: Any) -> None:
    if _state["installed"]:
        return
    _state["installed"] = True
    send = _state["send"]

    class ForwardHandler(logging.Handler):
        """Sends each record to the caller (see the module docstring)."""

        def emit(self, record: Any) -> None:
            try:
                send(_as_dict(logging, record))
            except Exception:
                self.handleError(record)

    root = logging.getLogger()
    root.addHandler(ForwardHandler())
    _set_levels(logging)


def _as_dict(logging: Any, record: Any) -> dict[str, Any]:
    """The record as plain data: message formatted here, traceback as text."""
    d = dict(record.__dict__)
    d["processName"] = worker_name()  # multiprocessing may not be imported: set it ourselves
    d["msg"] = record.getMessage()
    d["args"] = None
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        d["exc_text"] = record.exc_text
    d["exc_info"] = None
    for key, value in list(d.items()):  # an `extra=` value that is not plain data: its repr
        if not _plain(value):
            d[key] = repr(value)
    return d


_SCALARS = (str, int, float, bool, bytes, type(None))


def _plain(value: Any, depth: int = 0) -> bool:
    """Builtin scalars and containers of them: what the caller can always unpickle (an object
    of a class only the worker can import would not be)."""
    if type(value) in _SCALARS:
        return True
    if depth > 3:
        return False
    if type(value) in (list, tuple, set, frozenset):
        return all(_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False
