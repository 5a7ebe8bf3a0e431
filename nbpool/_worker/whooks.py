"""Worker side: set things up in a module the moment a task imports it, at no start-up cost.

A worker's start-up is every pool's cold start, so it imports neither ``multiprocessing`` nor
``logging``. Yet a task that uses them must find them set up: ``multiprocessing`` must say it
runs in a pool worker, and ``logging`` must forward records (``_worker.wlog``). ``after_import``
runs
a function right after a module is first imported (or now, if it already is): a
``sys.meta_path`` entry watches for that one import, wraps its loader, and leaves.

Identity: in a stdlib pool worker, ``multiprocessing.current_process().name`` is
``SpawnPoolWorker-N`` and ``parent_process()`` is the caller; code checks either to know it runs
in a worker. nbpool's workers say the same (``N`` is the worker id + 1; ``parent_process()``
watches the lifeline pipe, so its ``is_alive()`` is false once the caller is gone). Processes a
task starts from there get the names the stdlib gives them (``SpawnPoolWorker-1:1`` ...).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["after_import", "set_identity", "worker_name"]

_identity: dict[str, Any] = {}


def after_import(name: str, fn: Callable[[Any], None]) -> None:
    """Call ``fn(module)`` once module ``name`` is imported: now, or right after its import."""
    module = sys.modules.get(name)
    if module is not None:
        fn(module)
    else:
        sys.meta_path.insert(0, _Watch(name, fn))


class _Then:
    """Wraps a module's loader: load it as usual, then call ``fn(module)``."""

    def __init__(self, loader: Any, fn: Callable[[Any], None]) -> None:
        self._loader, self._fn = loader, fn

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        try:
            self._fn(module)
        except Exception:  # set-up is a courtesy: it must never break the user's import
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _Watch:
    """A ``sys.meta_path`` entry that only waits for ``import <name>`` (then leaves)."""

    def __init__(self, name: str, fn: Callable[[Any], None]) -> None:
        self._name, self._fn = name, fn

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self._name:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Then(spec.loader, self._fn)
                return spec
        return None


def worker_name() -> str:
    return str(_identity.get("name", "MainProcess"))


def set_identity(worker_id: int, parent_pid: int, parent_sentinel: int) -> None:
    """This worker's ``multiprocessing`` identity (see the module docstring)."""
    _identity.update(
        name=f"SpawnPoolWorker-{worker_id + 1}",
        number=worker_id + 1,
        parent_pid=parent_pid,
        sentinel=parent_sentinel,
    )
    after_import("multiprocessing.process", _apply_identity)


def _apply_identity(process: Any) -> None:
    me = process._current_process
    me._name = _identity["name"]
    me._identity = (_identity["number"],)
    me._parent_pid = _identity["parent_pid"]
    me._parent_name = "MainProcess"
    process._parent_process = process._ParentProcess(
        "MainProcess", _identity["parent_pid"], _identity["sentinel"]
    )
