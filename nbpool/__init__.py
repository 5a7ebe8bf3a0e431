"""nbpool: a drop-in ``multiprocessing.Pool`` that works inside Jupyter.

Public names are listed in ``__all__`` and pinned by a test. They load on first use (PEP 562),
so ``import nbpool`` is cheap and a worker process, which imports only ``nbpool._worker``, never
pays for the caller-side machinery. No IPython, widget, Ray or Dask import happens until a
feature that needs it is used.
"""

from __future__ import annotations

import importlib

# No `typing` import at run time: a worker imports this package too, and its start-up time is
# every pool's cold start. (mypy treats any name TYPE_CHECKING as true.)
TYPE_CHECKING = False

__version__ = "0.1.0.dev0"
"""The version of nbpool, as a string (PEP 440)."""

_WHERE = {
    "Pool": "._pool",
    "ApplyResult": "._results",
    "AsyncResult": "._results",
    "IMapIterator": "._results",
    "IMapUnorderedIterator": "._results",
    "MapResult": "._results",
    "BackendUnavailableError": "._errors",
    "CancelledError": "._errors",
    "ClusterConnectionError": "._errors",
    "MemoryLimitError": "._errors",
    "NbpoolError": "._errors",
    "PoolClosedError": "._errors",
    "RemoteTraceback": "._mp_errors",
    "SerializationError": "._errors",
    "TaskExitError": "._errors",
    "TaskTimeoutError": "._errors",
    "TimeoutError": "._errors",
    "WorkerLostError": "._errors",
    "ObjectRef": "._worker.refs",
    "WorkerInfo": "._worker.current",
    "current_worker": "._worker.current",
    "wait": "._results",
}

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "BackendUnavailableError",
    "CancelledError",
    "ClusterConnectionError",
    "IMapIterator",
    "IMapUnorderedIterator",
    "MapResult",
    "MemoryLimitError",
    "NbpoolError",
    "ObjectRef",
    "Pool",
    "PoolClosedError",
    "RemoteTraceback",
    "SerializationError",
    "TaskExitError",
    "TaskTimeoutError",
    "TimeoutError",
    "WorkerInfo",
    "WorkerLostError",
    "__version__",
    "current_worker",
    "wait",
]

if TYPE_CHECKING:
    from ._errors import (
        BackendUnavailableError,
        CancelledError,
        ClusterConnectionError,
        MemoryLimitError,
        NbpoolError,
        PoolClosedError,
        SerializationError,
        TaskExitError,
        TaskTimeoutError,
        TimeoutError,
        WorkerLostError,
    )
    from ._mp_errors import RemoteTraceback
    from ._pool import Pool
    from ._results import (
        ApplyResult,
        AsyncResult,
        IMapIterator,
        IMapUnorderedIterator,
        MapResult,
        wait,
    )
    from ._worker.current import WorkerInfo, current_worker
    from ._worker.refs import ObjectRef


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext nbpool``: registers ``%%pmap`` and ``%pool`` (IPython is imported only now)."""
    from ._notebook.magic import load_ipython_extension as load

    load(ipython)


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nbpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
