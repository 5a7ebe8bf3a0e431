"""The exceptions nbpool raises.

::

    NbpoolError
     ├─ PoolClosedError(NbpoolError, ValueError)             the pool was closed or terminated
     ├─ TimeoutError(NbpoolError, mp.TimeoutError)            get(timeout) expired
     ├─ WorkerLostError(NbpoolError, RuntimeError)           a worker died while running the item
     │   └─ MemoryLimitError(WorkerLostError, MemoryError)   killed over max_memory_per_worker
     ├─ TaskTimeoutError(NbpoolError, builtins.TimeoutError)  the item ran past task_timeout
     ├─ TaskExitError(NbpoolError, RuntimeError)             the task raised SystemExit & co.
     ├─ SerializationError(NbpoolError, pickle.PicklingError)   names the object and what to do
     │   └─ UnpicklableResultError(SerializationError, mp.pool.MaybeEncodingError)   a result
     ├─ BackendUnavailableError(NbpoolError, ImportError)    names the extra to install
     └─ ClusterConnectionError(NbpoolError, ConnectionError) a cluster cannot be reached or is lost

    RemoteTraceback               ``multiprocessing.pool.RemoteTraceback`` itself: set as
                                  ``__cause__`` of an exception re-raised from a worker

``RemoteTraceback`` and ``UnpicklableResultError`` live in ``_mp_errors``: they need
``multiprocessing.pool``, whose import (~10 ms) is paid only when one of them is first needed.

An argument that cannot be pickled fails its item with the exception pickling raised, of its
own type as in the stdlib, with a note (``add_note``) naming the item and what to do.

Every nbpool error also derives from the exception a ``multiprocessing.Pool`` user already catches
(``ValueError`` for a closed pool, ``multiprocessing.TimeoutError`` for ``get(timeout)``), so
drop-in code keeps working. User exceptions are re-raised as their own type, never wrapped.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import multiprocessing
import pickle

__all__ = [
    "BackendUnavailableError",
    "CancelledError",
    "ClusterConnectionError",
    "MemoryLimitError",
    "NbpoolError",
    "PoolClosedError",
    "SerializationError",
    "TaskExitError",
    "TaskTimeoutError",
    "TimeoutError",
    "WorkerLostError",
]


class NbpoolError(Exception):
    """Base class of every error nbpool raises on its own account."""


class CancelledError(NbpoolError, concurrent.futures.CancelledError):
    """``AsyncResult.cancel()`` stopped this call (a ``concurrent.futures.CancelledError``)."""


class PoolClosedError(NbpoolError, ValueError):
    """Work was submitted to a closed or terminated pool (``ValueError``, as in the stdlib)."""


class TimeoutError(NbpoolError, multiprocessing.TimeoutError):
    """``AsyncResult.get(timeout)`` or ``IMapIterator.next(timeout)`` expired."""


class WorkerLostError(NbpoolError, RuntimeError):
    """The worker process running this item died (signal, ``os._exit``, out of memory).

    ``host`` is the cluster node it ran on ("" for this machine)."""

    def __init__(
        self,
        message: str,
        *,
        worker_id: int | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
        index: int | None = None,
        host: str = "",
    ) -> None:
        super().__init__(message)
        self.worker_id = worker_id
        self.pid = pid
        self.exitcode = exitcode
        self.index = index
        self.host = host

    def __reduce__(self):  # keep the keyword attributes across pickling
        return (
            _rebuild_worker_lost,
            (
                type(self),
                self.args[0],
                self.worker_id,
                self.pid,
                self.exitcode,
                self.index,
                self.host,
            ),
        )


def _rebuild_worker_lost(cls, message, worker_id, pid, exitcode, index, host=""):
    return cls(message, worker_id=worker_id, pid=pid, exitcode=exitcode, index=index, host=host)


class MemoryLimitError(WorkerLostError, MemoryError):
    """The worker went over the hard memory limit (``max_memory_per_worker``) and was killed."""


class TaskTimeoutError(NbpoolError, builtins.TimeoutError):
    """The item ran longer than ``task_timeout``; its worker was replaced, the job went on."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index

    def __reduce__(self):
        return (_rebuild_task_timeout, (self.args[0], self.index))


def _rebuild_task_timeout(message, index):
    return TaskTimeoutError(message, index=index)


class TaskExitError(NbpoolError, RuntimeError):
    """The task raised ``SystemExit``, ``KeyboardInterrupt`` or another ``BaseException`` that is
    not an ``Exception``. Re-raised as it is, it would end the caller (``sys.exit()`` in a task
    ended the script that ran the pool); the original is ``.exception`` (and ``__cause__``)."""

    def __init__(self, message: str, *, exception: BaseException | None = None) -> None:
        super().__init__(message)
        self.exception = exception

    def __reduce__(self):
        return (_rebuild_task_exit, (self.args[0], self.exception))


def _rebuild_task_exit(message, exception):
    return TaskExitError(message, exception=exception)


class SerializationError(NbpoolError, pickle.PicklingError):
    """A function, argument or result could not be pickled or unpickled; the message names it."""


class BackendUnavailableError(NbpoolError, ImportError):
    """An optional engine was asked for but its package is not installed."""


class ClusterConnectionError(NbpoolError, ConnectionError):
    """A cluster's address cannot be reached, its versions do not match ours, or it was lost
    while a job ran. The message names the address."""


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` (Python 3.11+), or the same ``__notes__`` list on 3.10."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10
        notes = getattr(exc, "__notes__", None)
        if not isinstance(notes, list):
            notes = []
            try:
                exc.__notes__ = notes  # type: ignore[attr-defined]
            except Exception:
                return
        notes.append(note)
