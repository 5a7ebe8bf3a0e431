"""The Ray engine's transport: each worker slot is a Ray actor behind a bridge thread.

Only this module imports Ray, and only ``Pool(ray_address=...)`` (or ``RAY_ADDRESS``,
``NBPOOL_ADDRESS``, ``backend="ray"``) imports this module.

The dispatcher (``_driver.dispatcher``) does not know it talks to an actor. A ``RayWorker`` gives it
what a local worker process gives it: a socket that carries ``_worker.protocol`` messages, two pipes
with the worker's stdout and stderr, and a 4-slot array that says which item the worker is on.
Behind them, one bridge thread per actor turns messages into actor calls and replies back::

  dispatcher thread          bridge thread (one per actor)                actor (Ray worker)
  ─────────────────          ─────────────────────────────                ──────────────────
  RunChunk ── socket ──►     recv ─► queue ─► actor.run.remote(msg, ...) ► Runner.run_chunk()
                             (one run call in flight: the next when its reply is here)
                             ray.wait(run refs, poll ref, 20 ms)            (the same code as
                             every 0.2 s while busy: actor.poll.remote() ─►  a local worker's)
  slot (which item) ◄─────── slot, CPU, RSS  ◄── poll reply ◄──────────── fd 1/2 are pipes:
  stdout/stderr pipes ◄───── output bytes   ◄──                           output read there
  LogRecord ◄── socket ◄──── log records    ◄──
  ChunkDone ◄── socket ◄──── run reply (after the last poll's output) ◄──
  kill() ─► ray.kill(actor) ─► the run ref fails ─► the bridge closes the socket: the
  dispatcher sees EOF, as for a dead process, and fails or retries the item the slot names.

So chunking, retries, timeouts, interrupts, output routing and the dashboard are the local
engine's code, unchanged. What is Ray's: how a worker starts (an actor with ``num_cpus=1``), how
it is stopped (``ray.kill``; Ray also ends a driver's actors when the driver exits), and how a
death is seen (``RayActorError``).
"""

from __future__ import annotations

import array
import collections
import contextlib
import functools
import os
import socket
import sys
import threading
import time

from .._driver.handle import WorkerHandle
from .._errors import BackendUnavailableError, ClusterConnectionError
from .._worker.protocol import (
    STAGE_IDLE,
    Cancel,
    Channel,
    ChunkDone,
    Hello,
    InitFailed,
    Ready,
    RunChunk,
    Shutdown,
    channel_pair,
    readable,
)
from .._worker.runner import Runner, flush_std

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["RayWorker", "check_processes", "connect"]

INSTALL_HINT = "pip install 'nbpool[ray]'"
CONNECT_TIMEOUT_S = 5.0  # a TCP check of the head's port before Ray retries it for minutes
POLL_BUSY_S = 0.2  # how often a busy actor is asked which item it is on (and its output)
POLL_IDLE_S = 1.0  # ... and an idle one, for its CPU and memory
DEATH_WAIT_S = 5.0  # how long a stopped worker's reap waits for Ray to free its CPU
RESOURCE_WAIT_S = 3.0  # how long Pool() waits for CPUs a pool just stopped to come back
POLL_TIMEOUT_S = 10.0  # a poll that takes longer: the actor (or Ray) is not answering
BRIDGE_JOIN_S = 10.0  # reap's wait for a bridge thread (blocked in Ray at worst)
WAIT_S = 0.1  # the bridge's wait for a reply (it returns as soon as one is there)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the Ray engine needs Ray, which is not installed here: {INSTALL_HINT}"
        ) from exc
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` (or ``scheme://host:port``) split, or None if it is not one."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def _connect_error(address: str, timeout: float) -> OSError | None:
    """Why nothing answers at ``address`` within ``timeout`` (a TCP connect), or None."""
    target = _host_port(address)
    if target is None:
        return None  # not host:port: nothing to check
    try:
        with socket.create_connection(target, timeout=timeout):
            return None
    except OSError as exc:
        return exc


def _check_reachable(address: str) -> None:
    """Fail within CONNECT_TIMEOUT_S naming the address if nothing listens there (Ray itself
    would retry for minutes)."""
    if _host_port(address) is None:
        raise ValueError(
            f"ray_address={address!r} is not an address: give 'host:port' (a Ray head), "
            "'ray://host:port' (Ray Client), 'auto' (a head on this machine) or 'local'"
        )
    exc = _connect_error(address, CONNECT_TIMEOUT_S)
    if exc is not None:
        raise ClusterConnectionError(
            f"cannot reach a Ray head at {address}: {exc}. Is the head running "
            "(`ray start --head ...`), and is this the address it printed?"
        )


def connect(address: str | None) -> Any:
    """Connect this process to Ray (``ray.init``) unless it already is; return the module.

    ``address``: "host:port" (join the cluster as a driver), "ray://host:port" (Ray Client),
    "auto" (a head on this machine), "local" (a private Ray instance), None (the connection
    the user made with ``ray.init``, else a private instance).
    """
    ray = _import_ray()
    if ray.is_initialized():
        current = ""
        with contextlib.suppress(Exception):
            current = ray.get_runtime_context().gcs_address
        if address and ":" in address and "://" not in address and current != address:
            raise ClusterConnectionError(
                f"this process is already connected to the Ray cluster at {current or '?'} "
                f"(ray.init), not {address}. Omit ray_address to use that connection, or call "
                "ray.shutdown() first."
            )
        return ray
    kwargs: dict[str, Any] = {
        "log_to_driver": False,  # workers' output reaches the cell through nbpool only
        "configure_logging": False,
    }
    if address not in (None, "local", "auto"):
        _check_reachable(address)
        kwargs["address"] = address
    elif address in ("auto", "local"):
        # "local": always a new private instance (with no address, ray.init joins a cluster
        # that `ray start` left running on this machine)
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except Exception as exc:
        text = str(exc)
        if "version mismatch" in text.lower():
            raise ClusterConnectionError(_mismatch(address, text)) from exc
        raise ClusterConnectionError(f"could not connect to Ray at {address}: {text}") from exc
    return ray


def _mismatch(address: str | None, text: str) -> str:
    """Ray's version-mismatch report (two indented blocks, cluster then this process) in one
    sentence."""
    import re

    found = re.findall(r"Ray: (\S+)\s+Python: (\S+)", text)
    if len(found) != 2:
        return (
            f"the Ray cluster at {address} runs another version of Ray or Python than this "
            f"kernel; install the same versions on both sides. Ray said: {text.strip()}"
        )
    (ray_there, py_there), (ray_here, py_here) = found
    return (
        f"the Ray cluster at {address} runs Ray {ray_there} on Python {py_there}, but this "
        f"kernel has Ray {ray_here} on Python {py_here}: Ray needs the same versions of both "
        f"on each side, so run this notebook in an environment with ray=={ray_there} and "
        f"Python {py_there} (or restart the cluster with this kernel's versions)"
    )


def check_processes(ray: Any, processes: int | None, address: str | None) -> int:
    """The number of workers: the cluster's free CPUs by default (each actor takes one). More
    than it can place now is refused: Ray would wait for resources for ever."""
    total = int(ray.cluster_resources().get("CPU", 0))
    free = int(ray.available_resources().get("CPU", 0))
    wanted = min(total, processes or 1)
    deadline = time.monotonic() + RESOURCE_WAIT_S
    while free < wanted and time.monotonic() < deadline:  # a pool that just ended frees its
        time.sleep(0.05)  # CPUs a moment after (Ray's own bookkeeping)
        free = int(ray.available_resources().get("CPU", 0))
    where = f"the Ray cluster at {address}" if address else "the Ray cluster"
    if processes is None:
        if free < 1:
            raise ValueError(
                f"{where} has {total} CPUs and none is free: each nbpool worker needs one"
            )
        return free
    if processes > free:
        raise ValueError(
            f"processes={processes}, but {where} has {total} CPUs, {free} of them free (each "
            f"worker is an actor that takes one CPU). Use processes={free} or fewer, or add "
            "nodes to the cluster."
        )
    return processes


# ----------------------------------------------------------------------------- the actor


class _ActorImpl:
    """What runs inside the actor: a ``_worker.runner.Runner`` plus the output pipes it drains.

    Two concurrency groups: ``run`` (hello, run: one at a time, in call order) and ``ctl``
    (poll, cancel), so that the driver can ask which item a chunk is on while it runs.
    """

    def __init__(self) -> None:
        # fd 1 and 2 become pipes that poll() drains: print(), C code and subprocesses all
        # reach the caller through nbpool, and none of it goes to Ray's logs (printed twice).
        self._pipes = []
        for fd in (1, 2):
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)
            os.set_blocking(r, False)
            _enlarge(r)  # room for a burst between two polls
            self._pipes.append(r)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        self._io_lock = threading.Lock()
        self._logs: list[Any] = []
        self._slot = array.array("q", [0, 0, STAGE_IDLE, 0])
        self._runner = Runner(self._slot, self._logs.append)
        self._sentinel_r, self._sentinel_w = os.pipe()  # parent_process() stays alive
        self._proc: Any = None
        self._host = ""

    def _drain(self) -> tuple[bytes, bytes, list[Any]]:
        flush_std()
        out = []
        with self._io_lock:
            for r in self._pipes:
                parts = []
                while True:
                    try:
                        data = os.read(r, 1 << 20)
                    except BlockingIOError:
                        break
                    if not data:
                        break
                    parts.append(data)
                out.append(b"".join(parts))
            logs, self._logs[:] = list(self._logs), []
        return out[0], out[1], logs

    def hello(self, hello: Hello, *buffers: Any) -> tuple[Any, list[Any], tuple[Any, ...]]:
        import ray

        host = self._host = ray.util.get_node_ip_address()
        node = ray.get_runtime_context().get_node_id()
        reply = self._runner.hello(
            hello, list(buffers), os.getpid(), os.getppid(), self._sentinel_r, host, node
        )
        return reply, [], self._drain()

    def run(self, msg: RunChunk, *buffers: Any) -> tuple[Any, list[Any], tuple[Any, ...]]:
        reply, out = self._runner.run_chunk(msg, list(buffers))
        # Ray moves bytes; PickleBuffers (numpy results out of band) become bytes here.
        out = [bytes(b) if not isinstance(b, (bytes, bytearray)) else b for b in out]
        self._slot[2] = STAGE_IDLE
        return reply, out, self._drain()

    def poll(self) -> tuple[Any, ...]:
        cpu = rss = None
        try:
            import psutil

            if self._proc is None:
                self._proc = psutil.Process()
                self._proc.cpu_percent(None)
            cpu = self._proc.cpu_percent(None)
            rss = self._proc.memory_info().rss
        except Exception:
            pass
        who = (os.getpid(), self._host)
        return tuple(self._slot), time.monotonic_ns(), cpu, rss, self._drain(), who

    def cancel(self, job_id: int) -> None:
        self._runner.cancelled.add(job_id)


@functools.cache
def _actor_class(ray: Any) -> Any:
    """The actor class, made once: each method in its concurrency group."""
    groups = {"hello": "run", "run": "run", "poll": "ctl", "cancel": "ctl"}
    ns = {
        name: ray.method(concurrency_group=group)(getattr(_ActorImpl, name))
        for name, group in groups.items()
    }
    body = type("NbpoolWorker", (_ActorImpl,), ns)
    body.__module__ = __name__
    return ray.remote(concurrency_groups={"run": 1, "ctl": 1})(body)


# ----------------------------------------------------------------------------- driver side


class RayWorker(WorkerHandle):
    """A worker slot served by one Ray actor (see the module docstring)."""

    def __init__(self, wid: int, ray: Any) -> None:
        super().__init__(wid)
        self._ray = ray
        ch, bridge_fd = channel_pair()
        self.ch = ch
        self._bridge_ch = Channel(bridge_fd)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            _enlarge(fd)  # room for a burst the dispatcher reads later
        self.out_fds = {out_r: "stdout", err_r: "stderr"}
        self._out_w = {1: out_w, 2: err_w}
        self.slot = memoryview(array.array("q", [0, 0, STAGE_IDLE, 0]))
        self.node = ""
        self._stats: tuple[float | None, int | None] = (None, None)  # CPU %, RSS: last poll
        self._slot_at = 0.0  # when the copy in ``slot`` was true (see slot_seen_at)
        self._poll_sent = 0.0
        self._death = ""
        self._stopped = False
        self._queued: collections.deque[tuple[Any, Any, list[Any]]] = collections.deque()
        self._gcs = _gcs_address(ray)
        lost = _LOST.get(self._gcs)
        if lost is not None:  # no new actor on a cluster that is gone: the job fails now
            raise ClusterConnectionError(
                f"lost the Ray cluster at {self._gcs}: it no longer answers ({lost}). Start "
                "a new pool once it is back."
            )
        self.actor = _actor_class(ray).options(num_cpus=1, max_restarts=0).remote()
        self._thread = threading.Thread(
            target=self._bridge, name=f"nbpool-ray-bridge-{wid}", daemon=True
        )
        self._thread.start()

    # -- WorkerHandle

    def _stop(self) -> None:
        if self._stopped:  # (kill() then reap(): one kill is enough)
            return
        self._stopped = True
        # In a thread of its own: with the cluster gone, ray.kill can block, and a stop must
        # never hold the dispatcher or terminate().
        threading.Thread(target=self._kill_actor, name="nbpool-ray-kill", daemon=True).start()

    def _kill_actor(self) -> None:
        with contextlib.suppress(Exception):
            self._ray.kill(self.actor, no_restart=True)

    def reap(self) -> int | None:
        self._stop()
        self._thread.join(BRIDGE_JOIN_S)
        if not _LOST:
            self._await_death(DEATH_WAIT_S)  # its CPU is free for the next pool when we return
        self.ch.close()
        for fd in list(self.out_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.out_fds.clear()
        return None

    def _await_death(self, timeout: float) -> None:
        """Until Ray says the actor is dead (a call on it fails), up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._ray.get(
                    self.actor.poll.remote(), timeout=max(0.01, deadline - time.monotonic())
                )
            except Exception:  # RayActorError once it is dead; GetTimeoutError past the wait
                return
            time.sleep(0.02)

    def describe_exit(self, code: int | None) -> str:
        return self._death or "its actor was stopped"

    def rss(self) -> int | None:
        return self._stats[1]

    def stats(self) -> tuple[float | None, int | None] | None:
        return self._stats

    def slot_seen_at(self) -> float:
        return self._slot_at

    # -- the bridge thread

    def _bridge(self) -> None:
        ray = self._ray
        runs: list[Any] = []  # refs of hello/run calls, in call order
        poll_ref: Any = None
        last_poll = time.monotonic()
        shutdown = False
        gone = False  # a poll failed: the actor is dead or dying
        try:
            while True:
                if not runs and self._queued:
                    # One call at a time: the next chunk goes once the previous reply is here.
                    # A reply still in flight when the actor dies is lost with it (Ray fails
                    # that call too), which would charge the death to an item that had
                    # finished. The gap costs one round trip per chunk; chunks are ~0.2 s.
                    method, msg, buffers = self._queued.popleft()
                    runs.append(method.remote(msg, *buffers))
                if not runs:
                    if shutdown:
                        return
                    # Idle: wait for the dispatcher, polling now and then for CPU and memory.
                    if readable([self._bridge_ch.fd], POLL_IDLE_S):
                        shutdown = self._take(runs) or shutdown
                    elif not self._try_poll(self._new_poll()):
                        raise EOFError  # died while idle: the dispatcher replaces it
                    continue
                if poll_ref is None:
                    # The common short call: one get, not a wait and then a get (~0.1 ms).
                    try:
                        self._deliver(ray.get(runs[0], timeout=WAIT_S))
                        runs.pop(0)
                    except ray.exceptions.GetTimeoutError:
                        pass
                else:
                    ready, _ = ray.wait([runs[0], poll_ref], num_returns=1, timeout=WAIT_S)
                    if ready:
                        # (before the chunk's reply: its output comes before its last words)
                        gone = not self._try_poll(poll_ref)
                        poll_ref = None
                    if runs[0] in ready:
                        # A dead actor fails this get only if this very call died with it:
                        # the calls it finished before are delivered first, as a local
                        # worker's are.
                        self._deliver(ray.get(runs.pop(0)))
                if gone:
                    continue  # no more polls: the next run ref tells how it ended
                if runs and poll_ref is None and time.monotonic() - last_poll >= POLL_BUSY_S:
                    poll_ref = self._new_poll()
                    last_poll = time.monotonic()
                while readable([self._bridge_ch.fd], 0):
                    shutdown = self._take(runs) or shutdown
        except (EOFError, OSError):  # the dispatcher closed its end (reap, teardown)
            pass
        except Exception as exc:  # the actor died (RayActorError and kin), or Ray is gone
            if not self._stopped:
                self._death = _describe_death(exc)
                # Our copy of its slot may be a poll old: which item killed it is not known
                # for sure. The dispatcher then runs the chunk's items again one by one, and
                # the culprit fails alone (as for a local worker's untracked items).
                self.slot[2] = STAGE_IDLE
                if _connect_error(self._gcs, timeout=2.0) is not None:
                    _LOST[self._gcs] = self._death
                    _disconnect(ray)
                    self._death = f"the Ray cluster at {self._gcs} no longer answers"
                    self.fatal = ClusterConnectionError(
                        f"lost the Ray cluster at {self._gcs}: it no longer answers "
                        f"({_LOST[self._gcs]}). The job failed and the pool stopped; start a "
                        "new pool once the cluster is back."
                    )
        finally:
            with contextlib.suppress(Exception):
                ray.kill(self.actor, no_restart=True)
            for fd in self._out_w.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._bridge_ch.close()  # the dispatcher sees EOF: this worker is gone

    def _take(self, runs: list[Any]) -> bool:
        """One message from the dispatcher; True for Shutdown."""
        msg, buffers = self._bridge_ch.recv()
        if isinstance(msg, Hello):
            # The actor keeps its own import path: the kernel's may not exist on that node
            # (modules next to the notebook travel by value anyway).
            msg = Hello(msg.worker_id, (), msg.initializer, msg.log_levels)
            self._queued.append((self.actor.hello, msg, buffers))
        elif isinstance(msg, RunChunk):
            self._queued.append((self.actor.run, msg, buffers))
        elif isinstance(msg, Cancel):
            self.actor.cancel.remote(msg.job_id)
        elif isinstance(msg, Shutdown):
            return True
        return False

    def _deliver(self, got: tuple[Any, list[Any], tuple[Any, ...]]) -> None:
        reply, buffers, (out, err, logs) = got
        if isinstance(reply, Ready):
            self.pid, self.host, self.node = reply.pid, reply.host, reply.node
        self._write_output(out, err, logs)
        self._bridge_ch.send(reply, buffers)
        if isinstance(reply, ChunkDone):
            self.slot[2] = STAGE_IDLE
        if isinstance(reply, InitFailed):
            raise EOFError  # the worker is over, as a local one exits after InitFailed

    def _new_poll(self) -> Any:
        self._poll_sent = time.monotonic()
        return self.actor.poll.remote()

    def _try_poll(self, ref: Any) -> bool:
        """Apply a poll's reply; False if the actor is gone."""
        try:
            got = self._ray.get(ref, timeout=POLL_TIMEOUT_S)
        except Exception as exc:
            if not self._stopped and not self._death:
                self._death = _describe_death(exc)
            return False
        self._apply_poll(got)
        return True

    def _apply_poll(self, got: tuple[Any, ...]) -> None:
        slot, their_now, cpu, rss, (out, err, logs), (pid, host) = got
        if not self.pid:  # the next chunk may print before its Ready reaches the dispatcher
            self.pid, self.host = pid, host
        job, chunk, stage, started = slot
        # Their monotonic clock is not ours: move the item's start time onto our clock.
        if started:
            started = started - their_now + time.monotonic_ns()
        self.slot[3] = started
        self.slot[0], self.slot[1], self.slot[2] = job, chunk, stage
        self._slot_at = self._poll_sent  # (the actor read its slot after we asked)
        self._stats = (cpu, rss)
        self._write_output(out, err, logs)

    def _write_output(self, out: bytes, err: bytes, logs: list[Any]) -> None:
        for fd, data in ((self._out_w[1], out), (self._out_w[2], err)):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        for record in logs:
            self._bridge_ch.send(record)


# GCS address -> why we think that cluster is gone (its port stopped answering while an actor
# call failed). New workers there fail at once instead of waiting on Ray.
_LOST: dict[str, str] = {}


def _gcs_address(ray: Any) -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:
        return ""


def _disconnect(ray: Any) -> None:
    """Leave a cluster that is gone (``ray.shutdown()``, in a thread of its own). Ray ends a
    driver process that stays connected to a lost head for 60 s: that would be the kernel."""

    def shutdown() -> None:
        with contextlib.suppress(Exception):
            ray.shutdown()

    threading.Thread(target=shutdown, name="nbpool-ray-disconnect", daemon=True).start()


def _enlarge(fd: int) -> None:
    """A 1 MiB pipe buffer (F_SETPIPE_SZ, Linux), where allowed."""
    with contextlib.suppress(OSError):
        import fcntl

        fcntl.fcntl(fd, 1031, 1 << 20)


def _describe_death(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"its Ray actor died ({type(exc).__name__}{': ' + first if first else ''})"
