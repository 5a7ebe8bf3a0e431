"""Inside a cluster's worker process: one nbpool worker process, started and driven from here.

A Dask worker is a long-lived process that runs other people's tasks on its threads, logs to its
own stderr and is restarted by a nanny. nbpool's worker cannot live in it as a Ray actor lives in
its own process: redirecting fd 1/2 would capture Dask's logs, and stopping a running item would
mean restarting the whole Dask worker (seconds, and every other task on it). So the remote object
(a Dask actor, ``_engines.dask``) is a ``Host``: it starts a local nbpool worker process on that
node, exactly as the local engine does on this machine (``_engines.local.Worker``), and relays
the bridge's calls to it::

  bridge ── actor.run(msg) ──► Host.run: send msg ─ socket ─► worker process (local_main)
         ◄── reply + output ──            recv reply ◄──────   fd 1/2 are pipes: Host drains them
  kill()  ── actor.stop() ───► Host.stop: SIGKILL the process (its run call fails at once)

So a stop takes milliseconds and touches nothing else on the node, C-level output is captured,
and the exit status of a dead worker is known, as on this machine.

Shared objects and ``pool.put`` objects were scattered by the pool into Dask's memory. Before
a message names one (``Scattered``), a task on this Dask worker got it from Dask and pickled it
once for all the worker processes of this Dask worker (``keep_pickled``), its large buffers in
shared memory (``nbpool._shm``: each process maps them, as local workers map the caller's)::

  Dask (any worker) ─► task here: keep_pickled (memfd) ─► message names it ─► each process maps it

``hello`` and ``run`` block (they wait for the process) and are called one at a time;
``poll``, ``cancel`` and ``stop`` may be called while one waits (from another thread).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from .._driver.handle import describe_exit
from .._worker.protocol import STAGE_IDLE, Cancel, LogRecord, Ready
from .bridge import unstore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Host", "Scattered", "WorkerExited", "forget_pickled", "keep_pickled"]


class WorkerExited(RuntimeError):
    """The worker process ended while the driver waited for it (killed, crashed, stopped)."""

    def __init__(self, description: str, code: int | None) -> None:
        super().__init__(description)
        self.code = code

    def __reduce__(self) -> Any:
        return (WorkerExited, (str(self), self.code))


class Scattered:
    """In a message's buffers: the object Dask holds under ``key``, whose pickle this Dask
    worker made (``keep_pickled``) before the message was sent."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> Any:
        return (Scattered, (self.key,))


# Dask key -> the scattered object pickled for this Dask worker's worker processes, its large
# buffers in shared memory: made once, by the first slot that needs it, forgotten when the pool
# releases the object (processes that mapped the memory keep their mapping).
_PICKLED: dict[str, tuple[bytes, list[Any], Any]] = {}
_PICKLED_LOCK = threading.Lock()


def keep_pickled(key: str, obj: Any) -> None:
    from .. import _shm
    from .._worker.serialize import dumps_data

    with _PICKLED_LOCK:
        if key in _PICKLED:
            return
        data, oob = dumps_data(obj)
        _PICKLED[key] = (data, *_shm.share(oob))


def forget_pickled(keys: list[str]) -> None:
    with _PICKLED_LOCK:
        for key in keys:
            got = _PICKLED.pop(key, None)
            if got is not None and got[2] is not None:
                got[2].close()


def _pickled(placeholder: Any) -> tuple[bytes, list[Any], Any]:
    with _PICKLED_LOCK:
        got = _PICKLED.get(placeholder.key)
    if got is None:  # (the slot's task made it just before: this Dask worker was restarted)
        raise WorkerExited(f"its Dask worker lost {placeholder.key}", None)
    return got


class Host:
    """One worker process on a cluster node, and the calls the bridge makes on it."""

    def __init__(self, host: str, node: str) -> None:
        self.host, self.node = host, node
        self._worker: Any = None  # _engines.local.Worker, from hello on
        # The worker's lifeline: we hold the write end, so it exits when this process does.
        self._lifeline = os.pipe()
        self._send_lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._logs: list[Any] = []
        self._ps: Any = None
        self._code: int | None = None

    # -- blocking calls (one at a time)

    def hello(self, hello: Any, buffers: list[Any]) -> tuple[Any, list[Any], tuple[Any, ...]]:
        from .local import Worker

        hello, buffers = unstore(hello, buffers, _pickled)
        # spawned: on a cluster, a fork server per Dask worker would be one more process there
        # for a saving that the cluster's own start-up dwarfs
        w = self._worker = Worker(hello.worker_id, self._lifeline[0], "spawn")
        for fd in w.out_fds:
            os.set_blocking(fd, False)
        self._send(hello.replace(host=self.host, node=self.node), buffers)
        reply, _ = self._reply()
        if isinstance(reply, Ready):
            reply = Ready(reply.worker_id, reply.pid, self.host, self.node)
        return reply, [], self._drain()

    def run(self, msg: Any, buffers: list[Any]) -> tuple[Any, list[Any], tuple[Any, ...]]:
        msg, buffers = unstore(msg, buffers, _pickled)
        self._send(msg, buffers)
        reply, out = self._reply()
        # The cluster's serializer moves bytes; PickleBuffers (results out of band) become bytes.
        out = [b if isinstance(b, (bytes, bytearray)) else bytes(b) for b in out]
        return reply, out, self._drain()

    def exit(self, msg: Any, buffers: list[Any]) -> tuple[Any, list[Any], tuple[Any, ...]]:
        """Shutdown: the process runs its worker_exit hook, answers, and exits."""
        return self.run(msg, buffers)

    def _send(self, msg: Any, buffers: Any) -> None:
        try:
            with self._send_lock:
                self._worker.ch.send(msg, list(buffers))
        except OSError:
            self._exited()

    def _reply(self) -> tuple[Any, list[Any]]:
        """The next message that is not a log record (those wait for the next drain)."""
        while True:
            try:
                msg, buffers = self._worker.ch.recv()
            except (EOFError, OSError):
                self._exited()
            if isinstance(msg, LogRecord):
                with self._io_lock:
                    self._logs.append(msg)
                continue
            return msg, buffers

    def _exited(self) -> Any:
        """The process is gone: reap it and say how it ended."""
        code = self._reap()
        raise WorkerExited(f"its worker process on {self.host} {describe_exit(code)}", code)

    # -- calls that may come while a blocking one waits

    def poll(self) -> tuple[Any, ...]:
        w = self._worker
        slot = tuple(w.slot[:4]) if w is not None and not w.dead else (0, 0, STAGE_IDLE, 0)
        cpu = rss = None
        if w is not None:
            try:
                import psutil

                if self._ps is None:
                    self._ps = psutil.Process(w.pid)
                    self._ps.cpu_percent(None)
                cpu = self._ps.cpu_percent(None)
                rss = self._ps.memory_info().rss
            except Exception:
                pass
        pid = w.pid if w is not None else 0
        return slot, time.monotonic_ns(), cpu, rss, self._drain(), (pid, self.host)

    def cancel(self, job_id: int) -> None:
        if self._worker is not None:
            with contextlib.suppress(OSError):
                with self._send_lock:
                    self._worker.ch.send(Cancel(self._worker.wid, job_id))

    def stop(self) -> None:
        """Kill the process (and what it started); a waiting hello/run fails at once."""
        if self._worker is not None:
            self._worker.kill()
        self._reap()
        for fd in self._lifeline:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _reap(self) -> int | None:
        w = self._worker
        with self._io_lock:
            if w is not None and not w.dead:
                w.dead = True
                # What it wrote before it ended is still in the pipes: the next poll's.
                self._tail = self._read_pipes(w)
                with contextlib.suppress(Exception):
                    self._code = w.reap()
        return self._code

    _tail = (b"", b"")

    def _drain(self) -> tuple[bytes, bytes, list[Any]]:
        with self._io_lock:
            w = self._worker
            if w is not None and not w.dead:
                out, err = self._read_pipes(w)
            else:
                (out, err), self._tail = self._tail, (b"", b"")
            logs, self._logs = self._logs, []
        return out, err, logs

    @staticmethod
    def _read_pipes(w: Any) -> tuple[bytes, bytes]:
        got = {}
        for fd, name in w.out_fds.items():
            parts = []
            while True:
                try:
                    data = os.read(fd, 1 << 20)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                parts.append(data)
            got[name] = b"".join(parts)
        return got.get("stdout", b""), got.get("stderr", b"")
