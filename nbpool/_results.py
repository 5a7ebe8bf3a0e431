"""Result objects with ``multiprocessing.pool`` semantics.

The dispatcher thread fills them (``_deliver``, ``_set_length``, ``_abort``); user threads read
them. A callback runs before ``get()`` returns, as in the stdlib, but in the pool's callback
thread (``_events``), never in the dispatcher: a callback that blocks, or calls the pool
itself, cannot freeze the pool. A finished result holds its value and nothing else (not its
job, its function or its arguments).
"""

from __future__ import annotations

import collections
import functools
import signal
import sys
import threading
import time
from collections.abc import Callable

from ._errors import TimeoutError
from ._events import current_event_thread

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

_FINISH_LOCK = threading.Lock()

__all__ = ["ApplyResult", "AsyncResult", "IMapIterator", "IMapUnorderedIterator", "MapResult"]


def _run_callback(cb: Callable[[Any], object] | None, arg: Any) -> None:
    if cb is None:
        return
    try:
        cb(arg)
    except Exception:
        # A broken callback must not take the callback thread down (the stdlib's result thread
        # dies and every later get() hangs); report it as an unraisable exception is reported.
        print("Exception in nbpool callback:", file=sys.stderr)
        import traceback

        traceback.print_exc()


def _cancel_on_interrupt(result: Any) -> None:
    """Called when the wait for ``result`` was interrupted (the ■ button, Ctrl-C)."""
    cancel = result._canceller
    if cancel is None:
        return
    # A second SIGINT while we queue the cancel must not lose it: hold SIGINT for these few
    # microseconds; if one came, it is raised as soon as the mask is restored.
    main = threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if main else None
    try:
        cancel()
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# The main thread waits in slices of this: a SIGINT that the kernel delivered to another thread
# of the process (Linux may, when the main thread already has a signal pending) only sets
# Python's flag, and a wait that never returns would sit out the whole item before it raised
# KeyboardInterrupt (seen here under load: 3 s late). Other threads wait in one piece.
SIGNAL_SLICE_S = 0.1


def _slice(timeout: float | None) -> float | None:
    if threading.current_thread() is not threading.main_thread():
        return timeout
    return SIGNAL_SLICE_S if timeout is None else min(timeout, SIGNAL_SLICE_S)


def _wait_in_slices(wait: Callable[[float | None], bool], timeout: float | None) -> bool:
    if threading.current_thread() is not threading.main_thread():
        return wait(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return wait(0)
        if wait(_slice(remaining)):
            return True


class ApplyResult:
    """What ``apply_async`` returns (``multiprocessing.pool.AsyncResult``).

    You get these from the pool's methods; don't construct them yourself. All timeouts are in
    seconds. Interrupting a wait on one (Jupyter's stop button, Ctrl-C) raises
    ``KeyboardInterrupt`` at once and cancels its job.

    Examples:
        >>> with nbpool.Pool(2) as pool:
        ...     result = pool.apply_async(divmod, (17, 5))
        ...     result.get(timeout=10), result.ready(), result.successful()
        ((3, 2), True, True)
    """

    def __init__(
        self,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> None:
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._done = False  # the outcome is decided (its callback may still be running)
        self._success = False
        self._value: Any = None
        # Set by the pool on submission: how to cancel the job (it holds the job's id, never
        # the job), where callbacks run, and the cell they print to.
        self._canceller: Callable[[], None] | None = None
        self._cancel_job: Callable[[BaseException, str], None] | None = None  # (cancel())
        self._events: Any = None  # the pool's _events.EventThread
        self._cell: Any = None
        self._wakers: list[Callable[[], None]] = []  # callback threads waiting on us
        self._conclude: Callable[[], None] | None = None  # end its dashboard (see Pool._wait)
        self._progress: Any = None  # its job's _driver.progress.JobProgress, if it has a view

    def ready(self) -> bool:
        """Whether the result is in: a value or an exception (its callback has run).

        Examples:
            >>> import time
            >>> with nbpool.Pool(2) as pool:
            ...     result = pool.apply_async(time.sleep, (0.5,))
            ...     result.ready()
            ...     result.wait()
            ...     result.ready()
            False
            True
        """
        return self._event.is_set()

    def cancel(self) -> bool:
        """Stop this call: its queued items are dropped and running ones stopped (their
        workers are replaced), so nothing of it keeps running; ``get()`` then raises
        ``nbpool.CancelledError`` at once. What was delivered before stays delivered (an
        ``imap``'s items). False if the call had already finished.

        Examples:
            >>> import time
            >>> pool = nbpool.Pool(2)
            >>> result = pool.apply_async(time.sleep, (60,))
            >>> result.cancel()         # the sleeping worker is stopped and replaced
            True
            >>> result.get()
            Traceback (most recent call last):
            ...
            nbpool.CancelledError: the call was cancelled (AsyncResult.cancel())
            >>> pool.terminate()
        """
        from ._errors import CancelledError

        cancel = self._cancel_job
        if self._done or cancel is None:
            return False
        exc = CancelledError("the call was cancelled (AsyncResult.cancel())")
        self._abort(exc)  # ready now, here; the dispatcher stops what still runs
        cancel(exc, "cancelled")
        return True

    def successful(self) -> bool:
        """Whether the call completed without raising; ``ValueError`` if it is not ready yet.

        Examples:
            >>> with nbpool.Pool(2) as pool:
            ...     result = pool.apply_async(int, ("not a number",))
            ...     result.wait(timeout=10)
            ...     result.successful()
            False
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Block until the result is ready, or until ``timeout`` seconds have passed.

        Returns ``None`` either way (``ready()`` tells which); the work goes on.

        Examples:
            >>> import time
            >>> with nbpool.Pool(2) as pool:
            ...     result = pool.apply_async(time.sleep, (5,))
            ...     result.wait(timeout=0.1)
            ...     result.ready()
            False
        """
        __tracebackhide__ = True  # IPython and pytest hide this frame: the error is not in here
        pump = current_event_thread()
        if pump is not None and not self._event.is_set():
            # We are a callback waiting for a result: its own callback may be queued behind us
            # in this very thread, so run the queue while we wait (see _events).
            self._wakers.append(pump.wake)
            pump.pump_until(self._event.is_set, timeout)
            return
        try:
            _wait_in_slices(self._event.wait, timeout)
        except KeyboardInterrupt:
            # Interrupting the wait stops the job: queued items are dropped, running ones
            # stopped, the pool stays warm. What finished stays in the result.
            _cancel_on_interrupt(self)
            raise

    def get(self, timeout: float | None = None) -> Any:
        """The value; or raise the exception the call raised (with the worker's traceback as
        its ``__cause__``); or ``nbpool.TimeoutError`` if it is not ready within ``timeout``
        seconds, in which case the work goes on and ``get()`` can be called again.

        Examples:
            >>> import time
            >>> with nbpool.Pool(2) as pool:
            ...     result = pool.apply_async(time.sleep, (5,))
            ...     result.get(timeout=0.1)
            Traceback (most recent call last):
            ...
            nbpool.TimeoutError: the result was not ready within 0.1 s
        """
        __tracebackhide__ = True
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError(f"the result was not ready within {timeout} s")
        if self._success:
            return self._value
        raise self._value

    # -- dispatcher side
    def _finish(self, success: bool, value: Any) -> None:
        # The dispatcher finishes results; so may a caller thread in Pool.terminate() when the
        # dispatcher is stuck (Engine.force_stop): only the first one counts.
        with _FINISH_LOCK:
            if self._done:
                return
            self._success, self._value = success, value
            self._done = True
            cb = self._callback if success else self._error_callback
            self._callback = self._error_callback = self._canceller = None
            self._cancel_job = None
        if cb is None:
            self._set_ready()
        elif self._events is None:  # not submitted through a pool (tests of this class)
            self._complete(cb, value)
        else:
            self._events.post(self._complete, (cb, value), self._cell)

    def _complete(self, cb: Callable[[Any], object], value: Any) -> None:
        """In the callback thread: the callback, then ``get()`` may return."""
        try:
            _run_callback(cb, value)
        finally:
            self._set_ready()

    def _set_ready(self) -> None:
        self._event.set()
        wakers, self._wakers = self._wakers, []
        for wake in wakers:
            wake()

    def _set_length(self, n: int) -> None:
        pass

    def _deliver(self, start: int, values: list[Any], failures: dict[int, BaseException]) -> None:
        if failures:
            self._finish(False, failures[start])
        else:
            self._finish(True, values[0])

    def _abort(self, exc: BaseException) -> None:
        """The pool is gone (or the job was cancelled): ready now, whatever its callback does.
        Its error callback, if any, still runs, in the callback thread."""
        self._finish(False, exc)
        self._set_ready()


AsyncResult = ApplyResult
"""Another name for ``ApplyResult``, as ``multiprocessing.pool.AsyncResult`` is the stdlib's.

Examples:
    >>> nbpool.AsyncResult is nbpool.ApplyResult
    True
"""


class MapResult(ApplyResult):
    """What ``map_async``/``starmap_async`` return; ``get()`` gives a list in input order.

    As in the stdlib, the first failing item makes the result ready (failed) at once. The other
    items keep running; their values stay in ``_values`` (see docs: partial results).

    Examples:
        >>> with nbpool.Pool(2) as pool:
        ...     pending = pool.map_async(int, ["1", "2", "x"])
        ...     pending.get(timeout=10)
        Traceback (most recent call last):
        ...
        ValueError: invalid literal for int() with base 10: 'x'
    """

    def __init__(self, length: int, callback=None, error_callback=None) -> None:
        super().__init__(callback, error_callback)
        self._values: list[Any] = [None] * length
        self._left = length
        if length == 0:
            self._finish(True, [])

    def _deliver(self, start: int, values: list[Any], failures: dict[int, BaseException]) -> None:
        self._values[start : start + len(values)] = values
        self._left -= len(values)
        if failures:
            self._finish(False, failures[min(failures)])
        elif self._left == 0:
            self._finish(True, self._values)


class IMapIterator:
    """What ``imap`` returns: results in input order, each as soon as it and those before it are in.

    An item that failed raises its exception at its position; iterating further goes on with the
    next item (the stdlib does the same with the default ``chunksize=1``).

    Examples:
        >>> with nbpool.Pool(2) as pool:
        ...     results = pool.imap(int, ["1", "x", "3"])
        ...     for _ in range(3):
        ...         try:
        ...             print(results.next(timeout=10))
        ...         except ValueError as exc:
        ...             print("failed:", exc)
        1
        failed: invalid literal for int() with base 10: 'x'
        3
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items: dict[int, tuple[bool, Any]] = {}
        self._index = 0
        self._length: int | None = None
        self._aborted: BaseException | None = None
        self._canceller: Callable[[], None] | None = None
        self._progress: Any = None  # its job's _driver.progress.JobProgress, if it has a view

    def __iter__(self) -> IMapIterator:
        return self

    def _available(self) -> bool:
        return self._index in self._items

    def _take(self) -> tuple[bool, Any]:
        ok_value = self._items.pop(self._index)
        self._index += 1
        return ok_value

    def next(self, timeout: float | None = None) -> Any:
        """The next result; raise that item's exception if it failed; ``nbpool.TimeoutError``
        if none arrives within ``timeout`` seconds; ``StopIteration`` after the last one.

        Examples:
            >>> with nbpool.Pool(2) as pool:
            ...     results = pool.imap(abs, [-1, -2])
            ...     results.next(timeout=10), results.next(timeout=10)
            (1, 2)
        """
        __tracebackhide__ = True
        try:
            return self._next(timeout)
        except KeyboardInterrupt:
            _cancel_on_interrupt(self)
            raise

    def _next(self, timeout: float | None) -> Any:
        __tracebackhide__ = True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._available():
                if self._length is not None and self._index >= self._length:
                    raise StopIteration
                if self._aborted is not None:
                    raise self._aborted
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no result within {timeout} s")
                self._cond.wait(_slice(remaining))
            ok, value = self._take()
        if ok:
            return value
        raise value

    __next__ = next

    # -- dispatcher side
    def _put(self, index: int, ok: bool, value: Any) -> None:
        self._items[index] = (ok, value)

    def _deliver(self, start: int, values: list[Any], failures: dict[int, BaseException]) -> None:
        with self._cond:
            for i, v in enumerate(values, start):
                if i in failures:
                    self._put(i, False, failures[i])
                else:
                    self._put(i, True, v)
            self._cond.notify_all()

    def _set_length(self, n: int) -> None:
        with self._cond:
            self._length = n
            self._cond.notify_all()

    def _abort(self, exc: BaseException) -> None:
        with self._cond:
            self._aborted = exc
            self._cond.notify_all()


class IMapUnorderedIterator(IMapIterator):
    """What ``imap_unordered`` returns: results in the order they complete.

    Examples:
        >>> with nbpool.Pool(2) as pool:
        ...     sorted(pool.imap_unordered(abs, [-2, -1]))    # any order: sorted here
        [1, 2]
    """

    def __init__(self) -> None:
        super().__init__()
        self._queue: collections.deque[tuple[bool, Any]] = collections.deque()

    def _available(self) -> bool:
        return bool(self._queue)

    def _take(self) -> tuple[bool, Any]:
        self._index += 1
        return self._queue.popleft()

    def _put(self, index: int, ok: bool, value: Any) -> None:
        self._queue.append((ok, value))


def wait(results: Any, num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
    """``(ready, not_ready)`` as ``ray.wait`` gives them: wait until ``num_returns`` of
    ``results`` (``AsyncResult``s of any pool, ``concurrent.futures.Future``s such as
    ``Pool.submit`` returns) are done, or ``timeout`` seconds pass. ``ready`` has at most
    ``num_returns`` of them, in the order they completed; ``not_ready`` the others, in the order
    given. A done result counts whether it succeeded or failed (``get()`` tells).

    Examples:
        >>> import time
        >>> with nbpool.Pool(2) as pool:
        ...     slow = pool.apply_async(time.sleep, (5,))
        ...     quick = pool.apply_async(abs, (-1,))
        ...     ready, not_ready = nbpool.wait([slow, quick], timeout=10)
        ...     ready == [quick], not_ready == [slow]
        (True, True)
    """
    import concurrent.futures

    items = list(results)
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise TypeError(f"num_returns must be an int, not {num_returns!r}")
    if not 0 <= num_returns <= len(items):
        raise ValueError(f"num_returns must be between 0 and {len(items)}, not {num_returns}")
    if len({id(r) for r in items}) != len(items):
        raise ValueError("wait() got the same result twice")
    for r in items:
        if not isinstance(r, (ApplyResult, concurrent.futures.Future)):
            raise TypeError(
                f"wait() takes AsyncResults and concurrent.futures.Futures, not {type(r).__name__}"
            )
    order: list[Any] = []  # in completion order
    seen: set[int] = set()  # ids of those in order: a result may report done twice
    changed = threading.Condition()

    def done(r: Any) -> None:
        with changed:
            if id(r) not in seen:
                seen.add(id(r))
                order.append(r)
            changed.notify_all()

    for r in items:
        if isinstance(r, ApplyResult):
            r._wakers.append(functools.partial(done, r))
            if r.ready():
                done(r)
        else:
            r.add_done_callback(done)
    deadline = None if timeout is None else time.monotonic() + timeout
    with changed:
        while len(order) < num_returns:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            changed.wait(left)
        ready = order[:num_returns]
    chosen = {id(r) for r in ready}
    return ready, [r for r in items if id(r) not in chosen]
