"""``nbpool.current_worker()``: which worker the calling code runs in (None in the caller)."""

from __future__ import annotations

import _thread

from .message import Message

TYPE_CHECKING = False  # see nbpool/__init__.py
if TYPE_CHECKING:
    from typing import Any

__all__ = ["WorkerInfo", "current_worker"]


class WorkerInfo(Message):
    """Where a task runs: ``id`` (0 .. processes-1; a replacement worker keeps its slot's id),
    ``pid``, ``host`` (this machine's name on the local engine, the node's address on a
    cluster) and ``node`` (a cluster node's id; "" on this machine).

    Examples:
        >>> def where(x):
        ...     me = nbpool.current_worker()
        ...     return me.id, me.pid > 0, me.host != ""
        >>> with nbpool.Pool(2) as pool:
        ...     sorted(set(pool.map(where, range(4), chunksize=1)))[0][1:]
        (True, True)
    """

    id: int
    pid: int
    host: str
    node: str = ""


_current: list[Any] = [None]
_this_thread = _thread._local()  # a threading-engine worker's own (its process is the caller's)


def set_current(info: WorkerInfo, thread: bool = False) -> None:
    if thread:
        _this_thread.info = info
    else:
        _current[0] = info


def current_worker() -> WorkerInfo | None:
    """The ``WorkerInfo`` of the worker running the calling code; None outside a worker.

    Examples:
        >>> with nbpool.Pool(2) as pool:
        ...     sorted(set(pool.map(lambda x: nbpool.current_worker().id, range(8), 1)))
        [0, 1]
        >>> nbpool.current_worker() is None  # the caller is no worker
        True
    """
    info = getattr(_this_thread, "info", None)
    if info is not None:
        return info
    info = _current[0]
    if info is not None and not info.host:  # this machine: its name, looked up once
        import socket

        info = _current[0] = WorkerInfo(info.id, info.pid, socket.gethostname(), info.node)
    return info
