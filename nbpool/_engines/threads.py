"""``start_method="threading"``: the same pool on threads of the caller, for I/O-bound work.

::

  dispatcher thread                                  worker thread (one per slot)
  ─────────────────                                  ────────────────────────────
  w.ch.send(msg, [InProcess(items)]) ── queue ──►    Runner(thread=True).run_chunk(...)
  selector: w.ch (a pipe's read end) ◄── 1 byte ──   its reply appended to a deque; nothing
            recv() pops the deque                    is pickled: items, results, exceptions
                                                     and functions are the objects themselves
  kill(): ThreadStopped raised in the thread (PyThreadState_SetAsyncExc) and its pipe
          closed at once (EOF: the dispatcher sees the death now, and replaces the worker)

So everything the dispatcher does (chunking, ordering, callbacks, progress, insights, worker
state, hooks, lifespans, cancel) is the local engine's. What threads cannot do, and the pool
refuses: memory limits (one process), CPU pinning, ``gpus`` (one environment), crash isolation
(``os._exit`` in a task ends the caller). What a task prints goes through a pipe of its
thread's own (``sys.stdout`` and ``sys.stderr`` become ``_ThreadStream``s, which pass every
other thread's writes through), so it reaches the submitting cell tagged, as a process's
would. A stopped worker (``task_timeout``, an interrupt,
``terminate()``) stops at its next Python instruction; one blocked in C (``time.sleep``, a
socket read) finishes that call in the background first, and its result is dropped.
"""

from __future__ import annotations

import array
import collections
import contextlib
import itertools
import os
import queue
import threading

from .._driver.handle import WorkerHandle
from .._worker.protocol import STAGE_IDLE, Cancel, InitFailed, RunChunk, Shutdown, readable

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any


_started = itertools.count(1)  # thread names: which slot, and which thread of it

# (thread ident, 1 or 2) -> write end of that worker thread's stdout / stderr pipe
_OUT: dict[tuple[int, int], int] = {}
_install_lock = threading.Lock()


class _ThreadStream:
    """``sys.stdout`` / ``sys.stderr`` while threading pools exist: what a worker thread writes
    goes to its own pipe, which the dispatcher reads and routes as a worker process's output
    (tagged, to the cell that submitted the call); anyone else's writes go to the stream that
    was there (unchanged, as are all its other attributes)."""

    def __init__(self, stream: Any, fd: int) -> None:
        self._stream, self._fd = stream, fd

    def write(self, text: str) -> int:
        fd = _OUT.get((threading.get_ident(), self._fd))
        if fd is None:
            return self._stream.write(text)
        data = text.encode("utf-8", "replace")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:  # its pipe is gone (the worker was stopped): nobody reads it
            pass
        return len(text)

    def flush(self) -> None:
        if (threading.get_ident(), self._fd) not in _OUT:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _install_streams() -> None:
    import sys

    with _install_lock:
        if not isinstance(sys.stdout, _ThreadStream):
            sys.stdout = _ThreadStream(sys.stdout, 1)
        if not isinstance(sys.stderr, _ThreadStream):
            sys.stderr = _ThreadStream(sys.stderr, 2)


class _DispatcherEnd:
    """The dispatcher's side of a worker thread: ``send`` queues a message for the thread,
    ``recv`` takes the thread's next reply; ``fileno()`` is readable when there is one (or
    at EOF, once the thread ended or was stopped)."""

    def __init__(self, inbox: queue.SimpleQueue, replies: collections.deque, r: int) -> None:
        self._inbox, self._replies, self.fd = inbox, replies, r

    def fileno(self) -> int:
        return self.fd

    def send(self, msg: Any, buffers: list[Any] | tuple[Any, ...] = ()) -> None:
        if self.fd < 0:
            raise OSError("the worker thread is gone")
        self._inbox.put((msg, list(buffers)))

    def recv(self, timeout: float | None = None) -> tuple[Any, list[Any]]:
        if timeout is not None and not readable([self.fd], timeout):
            raise TimeoutError(f"no reply from the worker thread within {timeout} s")
        if not os.read(self.fd, 1):
            raise EOFError("the worker thread ended")
        return self._replies.popleft()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ThreadWorker(WorkerHandle):
    """A worker slot served by a thread of the caller's process."""

    in_process = True

    def __init__(self, wid: int) -> None:
        super().__init__(wid)
        self.pid = os.getpid()
        self.slot = memoryview(array.array("q", [0, 0, STAGE_IDLE, 0]))
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._replies: collections.deque = collections.deque()
        r, self._w = os.pipe()
        self._w_lock = threading.Lock()  # the thread's replies vs a stop closing the pipe
        self.ch = _DispatcherEnd(self._inbox, self._replies, r)  # type: ignore[assignment]
        out_r, self._out_w = os.pipe()
        err_r, self._err_w = os.pipe()
        self.out_fds = {out_r: "stdout", err_r: "stderr"}
        _install_streams()
        self._stopping = False
        # True while the thread runs tasks or hooks (set before it looks at _stopping, so a
        # stop either is seen by the thread or interrupts it: never neither)
        self._in_user_code = False
        self._thread = threading.Thread(
            target=self._main, name=f"nbpool-thread-worker-{wid}-{next(_started)}", daemon=True
        )
        self._thread.start()

    @property
    def label(self) -> str:
        return f"worker {self.wid} (thread {self._thread.name})"

    @property
    def tag(self) -> str:
        return f"w{self.wid} thread"

    # ------------------------------------------------------------------ the worker thread

    def _reply(self, msg: Any, buffers: list[Any]) -> None:
        with self._w_lock:
            if self._w < 0:  # stopped: nobody reads this any more
                return
            self._replies.append((msg, buffers))
            os.write(self._w, b"\x01")

    def _main(self) -> None:
        from .._worker.runner import ThreadStopped

        me = threading.get_ident()
        _OUT[(me, 1)], _OUT[(me, 2)] = self._out_w, self._err_w
        try:
            self._serve()
        except ThreadStopped:
            pass
        finally:
            try:
                self._end(me)
            except ThreadStopped:  # (a stop that came just as it was ending)
                self._end(me)

    def _end(self, me: int) -> None:
        """Its output pipes (EOF: what it printed is all read) and its reply pipe."""
        for key in ((me, 1), (me, 2)):
            fd = _OUT.pop(key, None)
            if fd is not None:
                os.close(fd)
        self._close_pipe()

    def _serve(self) -> None:
        from .._worker.runner import Runner
        from .._worker.serialize import mark_in_process

        mark_in_process()
        runner = Runner(self.slot, lambda record: None, thread=True)
        hello, buffers = self._inbox.get()
        self._in_user_code = True  # the initializer and worker_init
        if hello is None or self._stopping:
            return
        reply = runner.hello(hello, buffers, self.pid, self.pid, -1)
        self._in_user_code = False
        self._reply(reply, [])
        if isinstance(reply, InitFailed):
            return
        pending: collections.deque = collections.deque()
        while not self._stopping:
            # Take every message already there: a Cancel queued behind chunks is seen before
            # they run (as a worker process does, see _engines.local_main).
            if not pending:
                pending.append(self._inbox.get())
            while True:
                try:
                    pending.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for msg, _ in pending:
                if isinstance(msg, Cancel):
                    runner.cancelled.add(msg.job_id)
            pending = collections.deque(m for m in pending if not isinstance(m[0], Cancel))
            if not pending:
                continue
            msg, bufs = pending.popleft()
            self._in_user_code = True
            if msg is None or self._stopping:
                return
            if isinstance(msg, Shutdown):
                done = runner.exit()  # the worker_exit hook
                self._in_user_code = False
                self._reply(*done)
                return
            assert isinstance(msg, RunChunk)
            reply, out = runner.run_chunk(msg, bufs)
            self._in_user_code = False
            del bufs
            self._reply(reply, out)
            self.slot[2] = STAGE_IDLE

    def _close_pipe(self) -> None:
        with self._w_lock:
            if self._w >= 0:
                os.close(self._w)
                self._w = -1

    # ------------------------------------------------------------------ dispatcher side

    def _stop(self) -> None:
        """Stop it at its next Python instruction and tell the dispatcher now (EOF)."""
        if self._stopping:
            return
        self._stopping = True
        self._close_pipe()
        self._inbox.put((None, []))  # an idle thread wakes up and ends
        # Only one in a task or hook is interrupted: an idle one ends on the message above,
        # and an exception raised after its function returned would be printed by threading.
        if self._in_user_code and self._thread.is_alive() and self._thread.ident is not None:
            import ctypes

            from .._worker.runner import ThreadStopped

            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread.ident), ctypes.py_object(ThreadStopped)
            )

    def reap(self) -> int | None:
        """Its thread has ended or been told to stop: it is not waited for (one blocked in a C
        call ends after it, in the background)."""
        if not self._stopping:
            self._stopping = True
            self._inbox.put((None, []))
        self._thread.join(0.05)
        self.ch.close()
        for fd in list(self.out_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.out_fds.clear()
        return None

    def describe_exit(self, code: int | None) -> str:
        return "its thread was stopped"

    def rss(self) -> int | None:
        return None

    def stats(self) -> tuple[float | None, int | None] | None:
        return (None, None)  # one process for all: per-worker CPU and memory do not exist
