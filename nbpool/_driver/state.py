"""``EngineState``: what the dispatcher's mixins (``_driver.inbox``, ``_driver.faults``) use of
``Engine``.

Declarations only, for the type checker: the attributes and methods live on ``Engine``
(``_driver.dispatcher``), which inherits both mixins. Keeping them in one place keeps the mixins
from
repeating each other.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    import collections
    import selectors
    import threading
    from collections.abc import Callable
    from typing import Any

    from .._events import EventThread
    from .._jobs import Chunk, Job
    from .._shm import Arena
    from .handle import WorkerHandle as Worker
    from .insights import Insights
    from .output import OutputTarget, Router
    from .timers import Timers


class EngineState:
    nworkers: int
    _sel: selectors.BaseSelector
    _timers: Timers
    _all: set[Worker]
    _slots: list[Worker | None]
    _jobs: dict[int, Job]
    _pending: collections.deque[Job]
    _startup_failures: list[int]
    exit_results: list[Any]
    exit_errors: list[BaseException]
    _terminating: bool
    _closing: bool
    _max_memory: int | None
    _max_active: int | None
    insights: Insights | None
    refs: dict[int, tuple[bytes, list[Any], Any]]
    router: Router
    first_ready: threading.Event
    first_ready_pid: int
    events: EventThread
    init_output: OutputTarget | None
    _send: Callable[..., bool]
    _retire: Callable[[Worker], None]
    _requeue: Callable[[Job, int, Any], None]
    _requeue_singly: Callable[[Job, int, Any], None]
    _maybe_finish: Callable[[Job], None]
    _pop_chunk: Callable[..., Chunk | None]
    _arena: Arena
    _trim_arena_later: Callable[[], None]
    _unmapped_notice: Callable[[Worker], Callable[[int, str], None]]
    _read_output: Callable[[Worker, int], str]
    _flush_output: Callable[[Worker, int], None]
    _flush_partials: Callable[..., None]
    _row: Callable[[Job | None, int, Worker | None, float], dict[str, Any]]
    _progress_ended: Callable[[Job | None, str], None]
    _progress_interrupted: Callable[[Job, str], None]
    _progress_concluded: Callable[[Job], None]
    _progress_started: Callable[[Job], None]
    _check_timeout: Callable[[Worker], None]
    _engine_failed: Callable[[BaseException], None]
    _restarted_at: dict[int, tuple[float, str]]
    _slot_done: list[int]
    _failed_total: int
