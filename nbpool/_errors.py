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
    """Base class of every error nbpool raises on its own account.

    An exception raised by your function is re-raised as its own type, never wrapped in an
    ``NbpoolError``.

    Examples:
        >>> with nbpool.Pool(2) as pool:
        ...     pool.close()
        ...     try:
        ...         pool.map(abs, [-1])
        ...     except nbpool.NbpoolError as exc:
        ...         print(type(exc).__name__, "-", exc)
        PoolClosedError - Pool not running
    """


class CancelledError(NbpoolError, concurrent.futures.CancelledError):
    """``AsyncResult.cancel()`` stopped this call (a ``concurrent.futures.CancelledError``).

    Examples:
        >>> import concurrent.futures, time
        >>> with nbpool.Pool(2) as pool:
        ...     result = pool.apply_async(time.sleep, (60,))
        ...     cancelled = result.cancel()
        ...     try:
        ...         result.get()
        ...     except concurrent.futures.CancelledError as exc:
        ...         print(exc)
        the call was cancelled (AsyncResult.cancel())
    """


class PoolClosedError(NbpoolError, ValueError):
    """Work was submitted to a closed or terminated pool (``ValueError``, as in the stdlib),
    or a result was still pending when its pool was terminated.

    Examples:
        >>> pool = nbpool.Pool(2)
        >>> pool.close()
        >>> try:
        ...     pool.map(abs, [-1])
        ... except ValueError as exc:           # what code written for the stdlib catches
        ...     print(repr(exc))
        PoolClosedError('Pool not running')
        >>> pool.join()
    """


class TimeoutError(NbpoolError, multiprocessing.TimeoutError):
    """``AsyncResult.get(timeout)`` or ``IMapIterator.next(timeout)`` expired; the work goes on.

    It is a ``multiprocessing.TimeoutError``, not the builtin ``TimeoutError`` (neither is the
    stdlib's). An item that ran past ``task_timeout`` raises ``TaskTimeoutError`` instead.

    Examples:
        >>> import multiprocessing, time
        >>> with nbpool.Pool(2) as pool:
        ...     result = pool.apply_async(time.sleep, (5,))
        ...     try:
        ...         result.get(timeout=0.1)
        ...     except multiprocessing.TimeoutError as exc:
        ...         print(exc)
        the result was not ready within 0.1 s
    """


class WorkerLostError(NbpoolError, RuntimeError):
    """The worker process running this item died (signal, ``os._exit``, out of memory).

    Only that item fails: the pool replaces the worker and goes on with the other items.
    Attributes: ``worker_id`` (the worker's slot), ``pid``, ``exitcode`` (negative: the signal
    that killed it; ``None`` for a ``MemoryLimitError`` and on a cluster), ``index`` (the item's
    position in the input) and ``host`` (the cluster node it ran on, "" for this machine).

    Examples:
        >>> import os
        >>> with nbpool.Pool(2) as pool:
        ...     try:
        ...         pool.apply(os._exit, (3,))
        ...     except nbpool.WorkerLostError as exc:
        ...         print(exc)
        ...         print(exc.exitcode, exc.index)
        ...     pool.map(abs, [-1, -2])         # the pool goes on
        worker ... (pid ...) died while running item 0 (arguments (3)): exited with code 3.
        The pool replaced the worker and goes on with the other items.
        3 0
        [1, 2]
    """

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
    """The worker went over the hard memory limit (1.5 x ``max_memory_per_worker``) while it
    ran this item, so the pool killed it and replaced it; the job goes on. It has
    ``WorkerLostError``'s attributes (``exitcode`` is ``None``) and is not retried.

    Examples:
        >>> import time
        >>> def hog(n):
        ...     data = b"x" * n                 # touches every byte: resident memory
        ...     time.sleep(10)
        >>> with nbpool.Pool(1, max_memory_per_worker="100MB") as pool:
        ...     try:
        ...         pool.apply(hog, (300_000_000,))
        ...     except MemoryError as exc:
        ...         print(exc)
        worker 0 (pid ...) used ... MiB, over the hard limit of 143 MiB
        (1.5 x max_memory_per_worker), while running item 0: it was killed and replaced
    """


class TaskTimeoutError(NbpoolError, builtins.TimeoutError):
    """The item ran longer than ``task_timeout``; its worker was replaced, the job went on.

    The item is not retried. ``index`` is its position in the input. It is a builtin
    ``TimeoutError``, not a ``multiprocessing.TimeoutError``.

    Examples:
        >>> import time
        >>> with nbpool.Pool(2, task_timeout=0.5) as pool:
        ...     try:
        ...         pool.map(time.sleep, [0, 30])
        ...     except nbpool.TaskTimeoutError as exc:
        ...         print(exc)
        item 1 ran longer than task_timeout=0.5 s in worker ... (pid ...); the worker was
        replaced and the job goes on
    """

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
    ended the script that ran the pool); the original is ``.exception`` (and ``__cause__``).

    Examples:
        >>> import sys
        >>> with nbpool.Pool(2) as pool:
        ...     try:
        ...         pool.apply(sys.exit, (2,))
        ...     except nbpool.TaskExitError as exc:
        ...         print(repr(exc.exception))
        SystemExit(2)
    """

    def __init__(self, message: str, *, exception: BaseException | None = None) -> None:
        super().__init__(message)
        self.exception = exception

    def __reduce__(self):
        return (_rebuild_task_exit, (self.args[0], self.exception))


def _rebuild_task_exit(message, exception):
    return TaskExitError(message, exception=exception)


class SerializationError(NbpoolError, pickle.PicklingError):
    """A function, argument or result could not be pickled or unpickled; the message names it
    and says what to do. The original error is its ``__cause__``.

    A function, an initializer, or a notebook global one of them reads that cannot be pickled
    fails in the caller, before anything is sent.

    Examples:
        >>> import threading
        >>> LOCK = threading.Lock()
        >>> def locked(x):
        ...     with LOCK:
        ...         return x
        >>> with nbpool.Pool(2) as pool:
        ...     try:
        ...         pool.map(locked, [1, 2])
        ...     except nbpool.SerializationError as exc:
        ...         print(exc)
        the function `locked` reads the global `LOCK`, a lock that cannot be pickled
        (cannot pickle '_thread.lock' object). Pass it through `initializer` instead
        (create it in the worker).
    """


class BackendUnavailableError(NbpoolError, ImportError):
    """An optional part was asked for (the Ray or Dask engine, ``serializer="dill"``) but its
    package is not installed; the message gives the line that installs it (an extra of nbpool).

    Examples:
        Without Ray installed:

        ```python
        nbpool.Pool(ray_address="10.0.0.5:6379")
        # nbpool.BackendUnavailableError: the Ray engine needs Ray, which is not installed
        # here: pip install 'nbpool[ray]'
        ```
    """


class ClusterConnectionError(NbpoolError, ConnectionError):
    """A cluster's address cannot be reached, its versions do not match ours, or it was lost
    while a job ran. The message names the address.

    Examples:
        With nothing listening at the address (the port is checked before Ray is started):

        ```python
        nbpool.Pool(ray_address="127.0.0.1:6379")
        # nbpool.ClusterConnectionError: cannot reach a Ray head at 127.0.0.1:6379: [Errno 111]
        # Connection refused. Is the head running (`ray start --head ...`), and is this the
        # address it printed?
        ```
    """


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
