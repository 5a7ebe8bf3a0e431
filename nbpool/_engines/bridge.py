"""A cluster worker behind a bridge thread: ``BridgedWorker``, shared by the Ray and Dask engines.

The dispatcher (``_driver.dispatcher``) does not know it talks to a cluster. A ``BridgedWorker``
gives it what a local worker process gives it: a socket that carries ``_worker.protocol``
messages, two pipes with the worker's stdout and stderr, and a 4-slot array that says which item
the worker is on. Behind them, one bridge thread per worker turns messages into calls on a
remote object (a Ray actor, a Dask actor) and replies back::

  dispatcher thread          bridge thread (one per worker)              remote object
  ─────────────────          ──────────────────────────────              ─────────────
  RunChunk ── socket ──►     recv ─► queue ─► call("run", msg, ...) ───► Runner.run_chunk()
                             (one run call in flight: the next when its     (the same code as a
                             reply is here)                                 local worker's)
                             wait(run, poll; 0.1 s)
                             every 0.2 s while busy: call("poll") ──────►  which item, output,
  slot (which item) ◄─────── slot, CPU, RSS  ◄── poll reply ◄───────────   CPU, memory
  stdout/stderr pipes ◄───── output bytes   ◄──
  LogRecord ◄── socket ◄──── log records    ◄──
  ChunkDone ◄── socket ◄──── run reply (after the last poll's output) ◄──
  kill() ─► stop the remote worker ─► the run call fails ─► the bridge closes the socket:
  the dispatcher sees EOF, as for a dead process, and fails or retries the item the slot names.

So chunking, retries, timeouts, interrupts, output routing and the dashboard are the local
engine's code, unchanged. An engine (``_engines.ray``, ``_engines.dask``) subclasses
``BridgedWorker`` and says how a remote call is made, awaited and stopped, and how a lost
cluster is recognised. Every remote method returns ``(reply, buffers, (stdout, stderr, logs))``
except ``poll``: ``(slot, their monotonic ns, CPU %, RSS, (stdout, stderr, logs), (pid, host))``.
"""

from __future__ import annotations

import array
import collections
import contextlib
import itertools
import os
import socket
import threading
import time

from .._driver.handle import WorkerHandle
from .._errors import ClusterConnectionError
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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "BridgedWorker",
    "Stored",
    "connect_error",
    "enlarge",
    "host_port",
    "unstore",
    "with_stored",
]

POLL_BUSY_S = 0.2  # how often a busy worker is asked which item it is on (and its output)
POLL_IDLE_S = 1.0  # ... and an idle one, for its CPU and memory
DEATH_WAIT_S = 5.0  # how long a stopped worker's reap waits for the cluster to free its slot
POLL_TIMEOUT_S = 10.0  # a poll that takes longer: the worker (or the cluster) is not answering
BRIDGE_JOIN_S = 10.0  # reap's wait for a bridge thread (blocked in the cluster's client at worst)
KILL_JOIN_S = 15.0  # reap's wait for the kill to be sent (an engine may wait for a start first)
WAIT_S = 0.1  # the bridge's wait for a reply (it returns as soon as one is there)

# cluster address -> why we think that cluster is gone (its port stopped answering while a
# remote call failed). New workers there fail at once instead of waiting on the cluster.
LOST: dict[str, str] = {}


def host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` (or ``scheme://host:port``) split, or None if it is not one."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def connect_error(address: str, timeout: float) -> OSError | None:
    """Why nothing answers at ``address`` within ``timeout`` (a TCP connect), or None."""
    target = host_port(address)
    if target is None:
        return None  # not host:port: nothing to check
    try:
        with socket.create_connection(target, timeout=timeout):
            return None
    except OSError as exc:
        return exc


def enlarge(fd: int) -> None:
    """A 1 MiB pipe buffer (F_SETPIPE_SZ, Linux), where allowed."""
    with contextlib.suppress(OSError):
        import fcntl

        fcntl.fcntl(fd, 1031, 1 << 20)


# ----------------------------------------------------------------------------- object stores

# A pool's shared objects (key: negative) and its pool.put objects (key: the ObjectRef's id)
# live in the cluster's object store: Ray's (``ray.put``) or Dask's (``scatter``). The
# dispatcher sends an empty placeholder buffer for each (``Hello.stored_shared``, a
# ``RunChunk.refs`` entry with -1 buffers); the bridge thread puts the engine's handle there
# (``with_stored``), and the cluster hands the remote side the object.
_stored_keys = itertools.count(-1, -1)


class Stored:
    """An object in a cluster's object store, as long as the pool needs it (``close``).
    An engine subclasses it with its own ``table`` (key -> the store's handle)."""

    table: dict[int, Any]

    def __init__(self, handle: Any, key: int | None = None) -> None:
        self.key = next(_stored_keys) if key is None else key
        self.table[self.key] = handle

    def close(self) -> None:
        self.table.pop(self.key, None)


def stored_at(msg: Any, buffers: list[Any]) -> list[tuple[int, int]]:
    """``(buffer index, key)`` of each object-store placeholder in a message's buffers."""
    if isinstance(msg, Hello) and msg.stored_shared:
        return [(msg.init_buffers, msg.stored_shared)]
    if not isinstance(msg, RunChunk) or not any(n < 0 for _, n in msg.refs):
        return []
    out = []
    at = len(buffers) - sum(max(n, 1) for _, n in msg.refs)
    for ref_id, n in msg.refs:
        if n < 0:
            out.append((at, ref_id))
        at += max(n, 1)
    return out


def with_stored(args: tuple[Any, ...], handle: Any) -> tuple[Any, ...]:
    """``(msg, *buffers)`` with each placeholder replaced by ``handle(key)``."""
    msg, buffers = args[0], list(args[1:])
    for at, key in stored_at(msg, buffers):
        buffers[at] = handle(key)
    return (msg, *buffers)


def unstore(msg: Any, buffers: list[Any], pickled: Any) -> tuple[Any, list[Any]]:
    """The message for a worker process that reads pickles: each placeholder for which
    ``pickled(placeholder)`` gives ``(data, out-of-band buffers, shared-memory segments or
    None)`` replaced by that pickle; one for which it gives None is left as it is."""
    places = stored_at(msg, buffers)
    out: list[Any] = []
    shm: list[tuple[int, int, int, str]] = []
    done: dict[int, int] = {}  # key -> its buffers now
    prev = 0
    for at, key in places:
        out += buffers[prev:at]
        got = pickled(buffers[at])
        if got is None:
            out.append(buffers[at])
        else:
            data, oob, segments = got
            if segments is not None:
                from .._shm import describe

                shm += describe(segments, offset=len(out) + 1)
            out += [data, *oob]
            done[key] = 1 + len(oob)
        prev = at + 1
    if not done:
        return msg, buffers
    out += buffers[prev:]
    # (msg.shm is empty: a cluster's messages never name the caller's own segments)
    if isinstance(msg, Hello):
        return msg.replace(stored_shared=0, shm=tuple(shm)), out
    refs = tuple((r, done.get(r, n)) if n < 0 else (r, n) for r, n in msg.refs)
    return msg.replace(refs=refs, shm=tuple(shm)), out


# ----------------------------------------------------------------------------- the worker


class BridgedWorker(WorkerHandle):
    """A worker slot served by a remote object (see the module docstring)."""

    engine = "cluster"  # "Ray", "Dask": for messages
    # Hello's sys.path is the kernel's; a remote worker keeps its own (the kernel's folders may
    # not exist on that node; modules next to the notebook travel by value anyway).
    keep_sys_path = False

    def __init__(self, wid: int, cluster: str) -> None:
        super().__init__(wid)
        self.cluster = cluster
        lost = LOST.get(cluster)
        if lost is not None:  # no new worker on a cluster that is gone: the job fails now
            raise self._lost_error(lost, fatal=False)
        ch, bridge_fd = channel_pair()
        self.ch = ch
        self._bridge_ch = Channel(bridge_fd)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            enlarge(fd)  # room for a burst the dispatcher reads later
        self.out_fds = {out_r: "stdout", err_r: "stderr"}
        self._out_w = {1: out_w, 2: err_w}
        self._wake_r, self._wake_w = os.pipe()  # a stop wakes an idle bridge at once
        self._wake_lock = threading.Lock()  # (a stop may come from any thread)
        self.slot = memoryview(array.array("q", [0, 0, STAGE_IDLE, 0]))
        self._stats: tuple[float | None, int | None] = (None, None)  # CPU %, RSS: last poll
        self._slot_at = 0.0  # when the copy in ``slot`` was true (see slot_seen_at)
        self._poll_sent = 0.0
        self._death = ""
        self._exit_code: int | None = None
        self._stopped = False
        self._killer: threading.Thread | None = None  # the thread that stops the remote side
        self._queued: collections.deque[tuple[str, Any, list[Any]]] = collections.deque()
        self._start()
        self._thread = threading.Thread(
            target=self._bridge, name=f"nbpool-{self.engine.lower()}-bridge-{wid}", daemon=True
        )
        self._thread.start()

    # -- what an engine provides

    def _start(self) -> None:
        """Create the remote object (may block briefly; raise to refuse)."""
        raise NotImplementedError

    def _call(self, method: str, *args: Any) -> Any:
        """Call ``method`` of the remote object; a reference to its reply."""
        raise NotImplementedError

    def _wait(self, refs: list[Any], timeout: float) -> list[Any]:
        """Those of ``refs`` that are done, after at most ``timeout`` (one is enough)."""
        raise NotImplementedError

    def _get(self, ref: Any, timeout: float) -> Any:
        """The reply; raises TimeoutError past ``timeout``, or why the call failed."""
        raise NotImplementedError

    def _kill_remote(self) -> None:
        """Stop the remote worker now (busy or not). May block: runs in a thread of its own."""
        raise NotImplementedError

    def _disconnect(self) -> None:
        """Leave a cluster that is gone (in a thread of its own)."""

    def _cluster_gone(self) -> str:
        """Why the cluster is known to be gone without a call failing ("": it is not)."""
        return ""

    def describe_death(self, exc: BaseException) -> str:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        return f"its {self.engine} worker died ({what})"

    # -- WorkerHandle

    def _stop(self) -> None:
        if self._stopped:  # (kill() then reap(): one kill is enough)
            return
        self._stopped = True
        with self._wake_lock, contextlib.suppress(OSError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")
        # In a thread of its own: with the cluster gone, a stop can block, and a stop must
        # never hold the dispatcher or terminate().
        self._killer = threading.Thread(target=self._kill_quietly, name="nbpool-kill", daemon=True)
        self._killer.start()

    def _kill_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._kill_remote()

    def reap(self) -> int | None:
        self._stop()
        self._thread.join(BRIDGE_JOIN_S)
        if self.cluster not in LOST:
            # the kill sent (Ray's waits for an actor still being created: _engines.ray), and
            # seen: its slot is free for the next pool when we return
            if self._killer is not None:
                self._killer.join(KILL_JOIN_S)
            self._await_death(DEATH_WAIT_S)
        self.ch.close()
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1
        for fd in list(self.out_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.out_fds.clear()
        return self._exit_code

    def _await_death(self, timeout: float) -> None:
        """Until a call on the remote object fails (it is gone), up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._get(self._call("poll"), max(0.01, deadline - time.monotonic()))
            except Exception:  # gone (or past the wait)
                return
            time.sleep(0.02)

    def describe_exit(self, code: int | None) -> str:
        return self._death or f"its {self.engine} worker was stopped"

    def rss(self) -> int | None:
        return self._stats[1]

    def stats(self) -> tuple[float | None, int | None] | None:
        return self._stats

    def slot_seen_at(self) -> float:
        return self._slot_at

    # -- the bridge thread

    def _bridge(self) -> None:
        runs: list[Any] = []  # refs of hello/run calls, in call order
        poll_ref: Any = None
        last_poll = time.monotonic()
        shutdown = False
        gone = False  # a poll failed: the remote worker is dead or dying
        try:
            while True:
                if self._stopped:
                    return  # (a call in flight fails or ends on its own; nobody waits for it)
                if not runs and self._queued:
                    # One call at a time: the next chunk goes once the previous reply is here.
                    # A reply still in flight when a worker dies is lost with it (the call
                    # fails too), which would charge the death to an item that had finished.
                    # The gap costs one round trip per chunk; chunks are ~0.2 s.
                    method, msg, buffers = self._queued.popleft()
                    runs.append(self._call(method, msg, *buffers))
                if not runs:
                    if shutdown:
                        return
                    # Idle: wait for the dispatcher, polling now and then for CPU and memory.
                    ready = readable([self._bridge_ch.fd, self._wake_r], POLL_IDLE_S)
                    if self._bridge_ch.fd in ready:
                        shutdown = self._take() or shutdown
                    elif ready:
                        continue  # woken by a stop
                    elif not self._try_poll(self._new_poll()):
                        # died while idle: the dispatcher replaces it
                        raise RuntimeError(self._death or "it stopped answering")
                    continue
                if poll_ref is None:
                    # The common short call: one get, not a wait and then a get.
                    try:
                        self._deliver(self._get(runs[0], WAIT_S))
                        runs.pop(0)
                    except TimeoutError:
                        pass
                else:
                    # (``in``, not ``is``: Ray Client returns new ref objects for the same refs)
                    ready = self._wait([runs[0], poll_ref], WAIT_S)
                    if poll_ref in ready:
                        # (before the chunk's reply: its output comes before its last words)
                        gone = not self._try_poll(poll_ref)
                        poll_ref = None
                    if runs[0] in ready:
                        # A dead worker fails this get only if this very call died with it:
                        # the calls it finished before are delivered first, as a local
                        # worker's are.
                        self._deliver(self._get(runs.pop(0), POLL_TIMEOUT_S))
                if gone:
                    continue  # no more polls: the next run ref tells how it ended
                if runs and poll_ref is None and time.monotonic() - last_poll >= POLL_BUSY_S:
                    poll_ref = self._new_poll()
                    last_poll = time.monotonic()
                while readable([self._bridge_ch.fd], 0):
                    shutdown = self._take() or shutdown
        except _Over:  # the dispatcher closed its end (reap, teardown), or the worker ended
            pass
        except Exception as exc:  # the remote worker died, or the cluster is gone
            self._died(exc)
        finally:
            self._kill_quietly()
            for fd in self._out_w.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._bridge_ch.close()  # the dispatcher sees EOF: this worker is gone

    def _died(self, exc: BaseException) -> None:
        if self._stopped:
            return
        from .host import WorkerExited

        if isinstance(exc, WorkerExited):  # a host's worker process: how it ended is known
            self._death, self._exit_code = str(exc), exc.code
        if not self._death:
            self._death = self.describe_death(exc)
        self._last_words()
        # Our copy of its slot may be a poll old: which item killed it is not known for sure.
        # The dispatcher then runs the chunk's items again one by one, and the culprit fails
        # alone (as for a local worker's untracked items).
        self.slot[2] = STAGE_IDLE
        if connect_error(self.cluster, timeout=2.0) is not None:
            LOST[self.cluster] = self._death
            threading.Thread(target=self._disconnect, name="nbpool-disconnect", daemon=True).start()
            self.fatal = self._lost_error(LOST[self.cluster], fatal=True)
            self._death = f"the {self.engine} cluster at {self.cluster} no longer answers"

    def _last_words(self) -> None:
        """What a dead worker wrote since the last poll, where the remote side still has it
        (a Dask host outlives its worker process; a dead Ray actor does not answer)."""
        try:
            got = self._get(self._call("poll"), 2.0)
        except Exception:
            return
        with contextlib.suppress(_Over):
            self._write_output(*got[4])

    def _lost_error(self, why: str, fatal: bool) -> ClusterConnectionError:
        then = (
            "The job failed and the pool stopped; start a new pool once the cluster is back."
            if fatal
            else "Start a new pool once it is back."
        )
        return ClusterConnectionError(
            f"lost the {self.engine} cluster at {self.cluster}: it no longer answers ({why}). "
            + then
        )

    def _take(self) -> bool:
        """One message from the dispatcher; True for Shutdown."""
        try:
            msg, buffers = self._bridge_ch.recv()
        except (EOFError, OSError):
            raise _Over from None
        if isinstance(msg, Hello):
            if not self.keep_sys_path:
                msg = msg.replace(sys_path=())
            self._queued.append(("hello", msg, buffers))
        elif isinstance(msg, RunChunk):
            self._queued.append(("run", msg, buffers))
        elif isinstance(msg, Cancel):
            self._call("cancel", msg.job_id)
        elif isinstance(msg, Shutdown):
            # its answer (ExitDone, after the worker_exit hook) is the last call's
            self._queued.append(("exit", msg, []))
            return True
        return False

    def _deliver(self, got: tuple[Any, list[Any], tuple[Any, ...]]) -> None:
        reply, buffers, (out, err, logs) = got
        if isinstance(reply, Ready):
            self.pid, self.host, self.node = reply.pid, reply.host, reply.node
        self._write_output(out, err, logs)
        try:
            self._bridge_ch.send(reply, buffers)
        except OSError:
            raise _Over from None
        if isinstance(reply, ChunkDone):
            self.slot[2] = STAGE_IDLE
        if isinstance(reply, InitFailed):
            raise _Over  # the worker is over, as a local one exits after InitFailed

    def _new_poll(self) -> Any:
        gone = self._cluster_gone()
        if gone:
            raise ClusterConnectionError(f"the {self.engine} cluster at {self.cluster}: {gone}")
        self._poll_sent = time.monotonic()
        return self._call("poll")

    def _try_poll(self, ref: Any) -> bool:
        """Apply a poll's reply; False if the remote worker is gone."""
        try:
            got = self._get(ref, POLL_TIMEOUT_S)
        except Exception as exc:
            if not self._stopped and not self._death:
                self._death = self.describe_death(exc)
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
        self._slot_at = self._poll_sent  # (the remote side read its slot after we asked)
        self._stats = (cpu, rss)
        self._write_output(out, err, logs)

    def _write_output(self, out: bytes, err: bytes, logs: list[Any]) -> None:
        try:
            for fd, data in ((self._out_w[1], out), (self._out_w[2], err)):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            for record in logs:
                self._bridge_ch.send(record)
        except OSError:  # the dispatcher closed its ends
            raise _Over from None


class _Over(Exception):
    """The bridge's work is over: the dispatcher closed its end, or the worker ended."""
