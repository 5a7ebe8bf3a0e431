"""The callback thread: user code that the dispatcher hands off and never waits for.

::

  dispatcher thread                        callback thread (one per pool, started on first use)
  ─────────────────                        ──────────────────────────────────────────────────
  a result with a callback is complete ──► post ──► run callback(value) in the submitting cell,
  a log record came from a worker     ──►         then make the result ready (get() returns)
                                                   handle the record with the caller's logging

The stdlib runs callbacks in its result-handler thread, so a callback that blocks (one that calls
``pool.map`` waits for a result only that thread could deliver) freezes the pool for good. Here
the dispatcher only posts; a callback that blocks delays the callbacks queued after it and
nothing else. A callback that waits for a result whose own callback is queued behind it would
still deadlock, so a wait *in* this thread runs the queued work itself while it waits
(``pump_until``, used by ``ApplyResult.wait``).

Each piece of work runs with the submitting cell as the parent of ``print`` and ``display``
(ipykernel's per-thread parent), so a callback's output lands under the cell that submitted
its job, not whichever cell runs now.
"""

from __future__ import annotations

import collections
import sys
import threading
import time

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["EventThread", "current_event_thread", "in_cell"]

_local = threading.local()


def current_event_thread() -> EventThread | None:
    """The EventThread whose work is running in this thread, if any."""
    return getattr(_local, "thread", None)


class in_cell:
    """Context manager: output and displays of this thread go to the notebook cell ``target``.

    ``target`` is ``(kernel, parent header)`` as captured at submit time, or None (nothing to
    do). Uses ipykernel's per-thread parent (``set_thread_parent``, ipykernel 7); on older
    kernels it does nothing and output goes to the cell running now.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.tokens: list[tuple[Any, Any]] = []

    def __enter__(self) -> None:
        if self.target is None:
            return
        kernel, parent = self.target
        shell = getattr(kernel, "shell", None)
        for obj in (sys.stdout, sys.stderr, getattr(shell, "display_pub", None)):
            setter = getattr(obj, "set_thread_parent", None)
            if setter is None:
                continue
            try:
                self.tokens.append((obj, setter(parent)))
            except Exception:
                pass

    def __exit__(self, *exc: object) -> None:
        for obj, token in reversed(self.tokens):
            try:
                obj.reset_thread_parent(token)
            except Exception:
                pass
        self.tokens.clear()


class EventThread:
    """A FIFO of work run in one thread of its own, started on first post."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[tuple[Callable[..., object], tuple[Any, ...], Any]] = (
            collections.deque()
        )
        self._thread: threading.Thread | None = None
        self._closing = False

    def post(self, fn: Callable[..., object], args: tuple[Any, ...], target: Any = None) -> None:
        """Run ``fn(*args)`` in this thread, in the cell ``target``. Never blocks."""
        with self._cond:
            self._queue.append((fn, args, target))
            # (Re)started on demand: after close() the thread ends once idle (and says so under
            # this lock), and work posted after that (a late result of a force-stopped pool)
            # must still run.
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def close(self) -> None:
        """Let the thread end once the work already posted is done (it is not waited for)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def wake(self) -> None:
        """A result this thread may be waiting for became ready (see ``pump_until``)."""
        with self._cond:
            self._cond.notify_all()

    def _next(self, done: Callable[[], bool], deadline: float | None) -> Any:
        """The next piece of work, or None once ``done()`` or past ``deadline``."""
        with self._cond:
            while True:
                if done():
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:  # queued work or not: time is up
                    return None
                if self._queue:
                    return self._queue.popleft()
                self._cond.wait(remaining)

    def _run(self) -> None:
        _local.thread = self
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:  # closed and idle: end, and let a later post start anew
                    self._thread = None
                    return
                work = self._queue.popleft()
            self._do(work)

    def pump_until(self, done: Callable[[], bool], timeout: float | None) -> None:
        """Called from this thread (a callback that waits for a result): run queued work until
        ``done()`` or ``timeout``; whatever becomes ready calls ``wake()``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            work = self._next(done, deadline)
            if work is None:
                return
            self._do(work)

    @staticmethod
    def _do(work: tuple[Callable[..., object], tuple[Any, ...], Any]) -> None:
        fn, args, target = work
        try:
            with in_cell(target):
                fn(*args)
        except BaseException:  # fn reports its own errors; this is the last line of defence
            _report("nbpool: a callback failed")


def _report(what: str) -> None:
    import traceback

    try:
        print(f"{what}:", file=sys.stderr)
        traceback.print_exc()
    except Exception:
        pass
