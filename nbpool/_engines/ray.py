"""The Ray engine's transport: each worker slot is a Ray actor behind a bridge thread.

Only this module imports Ray, and only ``Pool(ray_address=...)`` (or ``RAY_ADDRESS``,
``NBPOOL_ADDRESS``, ``backend="ray"``) imports this module.

Each worker slot is an actor (``num_cpus=1``) that runs the same ``_worker.runner.Runner`` as a
local worker process, behind a bridge thread in the caller (``_engines.bridge``, shared with the
Dask engine), which gives the dispatcher the socket, output pipes and slot it knows::

  dispatcher ── socket ──► bridge thread ── actor.run.remote(msg) ──► actor: Runner.run_chunk()
             ◄── pipes ───               ◄── poll every 0.2 s ──────   fd 1/2 are pipes: output
  kill() ─► ray.kill(actor) ─► the run ref fails ─► the bridge closes the socket (EOF)

So chunking, retries, timeouts, interrupts, output routing and the dashboard are the local
engine's code, unchanged. What is Ray's: how a worker starts (an actor with ``num_cpus=1``), how
it is stopped (``ray.kill``; Ray also ends a driver's actors when the driver exits), and how a
death is seen (``RayActorError``).
"""

from __future__ import annotations

import array
import contextlib
import functools
import os
import sys
import threading
import time
import warnings

from .._errors import BackendUnavailableError, ClusterConnectionError
from .._worker.protocol import STAGE_IDLE, Hello, RunChunk
from .._worker.runner import Runner, flush_std
from . import bridge
from .bridge import BridgedWorker, connect_error, enlarge, host_port

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["RayWorker", "check_processes", "check_versions", "connect"]

INSTALL_HINT = "pip install 'nbpool[ray]'"
CONNECT_TIMEOUT_S = 5.0  # a TCP check of the head's port before Ray retries it for minutes
# GCS address -> resource -> what nbpool's live actors hold. Ray's own view of free resources
# lags a moment behind a new actor: without this, a pool made right after another could be
# promised the same CPUs (its actors would then wait for ever).
_HELD: dict[str, dict[str, float]] = {}
_HELD_LOCK = threading.Lock()
CREATE_WAIT_S = 10.0  # how long a stop waits for an actor still being created (_kill_remote)
RESOURCE_WAIT_S = 3.0  # how long Pool() waits for CPUs a pool just stopped to come back
PROBE_WAIT_S = 30.0  # how long Pool() waits for a node to say which Python and nbpool it has
# Ray Client: how many times to ask for a session. The head forks a server per session from a
# process that runs gRPC threads, and now and then that server dies at birth
# (ray-project/ray#63202, "~7 %"; seen twice in this project's CI): a new session is a new fork.
CLIENT_SESSION_TRIES = 3
# What ray.init("ray://...") raises then: the session's server died, or never answered.
_SESSION_SERVER_DIED = (
    "Starting Ray client server failed",
    "Proxy failed to Connect to backend",
    "ZombieProcess",
)
# (GCS address, node id) pairs whose Python and nbpool were found to match this kernel's
_CHECKED: set[tuple[str, str]] = set()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the Ray engine needs Ray, which is not installed here: {INSTALL_HINT}"
        ) from exc
    return ray


def _check_reachable(address: str) -> None:
    """Fail within CONNECT_TIMEOUT_S naming the address if nothing listens there (Ray itself
    would retry for minutes)."""
    if host_port(address) is None:
        raise ValueError(
            f"ray_address={address!r} is not an address: give 'host:port' (a Ray head), "
            "'ray://host:port' (Ray Client), 'auto' (a head on this machine) or 'local'"
        )
    exc = connect_error(address, CONNECT_TIMEOUT_S)
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
    for attempt in range(1, CLIENT_SESSION_TRIES + 1):
        try:
            ray.init(**kwargs)
            return ray
        except Exception as exc:
            died = _session_server_died(exc)
            if not died or attempt == CLIENT_SESSION_TRIES:
                raise ClusterConnectionError(_connect_failure(address, str(exc), died)) from exc
        warnings.warn(
            f"the Ray Client server that the head at {address} started for this session died "
            f"(ray-project/ray#63202); asking for a new session ({attempt + 1} of "
            f"{CLIENT_SESSION_TRIES})",
            RuntimeWarning,
            stacklevel=2,
        )
    raise AssertionError("unreachable")  # (the last try returns or raises)


def _session_server_died(exc: BaseException) -> bool:
    """``ray.init("ray://...")`` failed because the head's server for this session died."""
    text = str(exc)
    return (
        isinstance(exc, ConnectionAbortedError)
        and "Initialization failure from server" in text
        and any(sign in text for sign in _SESSION_SERVER_DIED)
    )


def _connect_failure(address: str | None, text: str, died: bool) -> str:
    """Why ``ray.init`` failed, for ``ClusterConnectionError``; ``died``: on the last try, the
    session server died (``_session_server_died``)."""
    if "version mismatch" in text.lower():
        return _mismatch(address, text)
    if died:
        return (
            f"could not connect to Ray at {address}: the Ray Client server that the head "
            f"starts for each session died {CLIENT_SESSION_TRIES} times in a row (a known Ray "
            "issue, ray-project/ray#63202; its log is ray_client_server_*.err in the head's "
            "session_latest/logs). Try again, or connect from a machine inside the cluster "
            f"with the head's address (host:6379). Ray said: {text}"
        )
    return f"could not connect to Ray at {address}: {text}"


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


def check_versions(ray: Any, address: str | None) -> None:
    """Refuse Ray nodes that cannot run this kernel's nbpool workers (no nbpool, another nbpool,
    another Python minor version: ``_engines.versions``), naming each; Ray's own connection
    only compares Ray's and Python's versions with the head's. Each node is asked once, with a
    task that takes no CPU; a node that does not answer in PROBE_WAIT_S is not held against."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .. import __version__
    from .versions import probe, version_problems, versions_message

    gcs = _gcs_address(ray)
    nodes = {
        n["NodeID"]: f"node {n.get('NodeManagerAddress', '?')} ({n['NodeID'][:8]})"
        for n in ray.nodes()
        if n.get("Alive") and (gcs, n["NodeID"]) not in _CHECKED
    }
    if not nodes:
        return
    task = ray.remote(num_cpus=0, max_retries=0)(probe())
    refs = {
        node: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote()
        for node in nodes
    }
    got: dict[str, Any] = {}
    deadline = time.monotonic() + PROBE_WAIT_S
    for node, ref in refs.items():
        try:
            got[node] = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
        except Exception as exc:
            got[node] = exc
    wrong = version_problems(got, sys.version_info[:3], __version__)
    _CHECKED.update((gcs, node) for node in got if node not in wrong)
    if wrong:
        cluster = f"the Ray cluster at {address}" if address else "the Ray cluster"
        named = {nodes[node]: what for node, what in wrong.items()}
        raise ClusterConnectionError(versions_message(cluster, "Ray node", named, __version__))


def check_processes(
    ray: Any, processes: int | None, address: str | None, resources: dict[str, float] | None = None
) -> int:
    """The number of workers: as many as the cluster's free resources allow (each actor takes
    one CPU, or what ``resources`` asks) by default. More than it can place now is refused:
    Ray would wait for resources for ever."""
    need = _needs(resources)
    where = f"the Ray cluster at {address}" if address else "the Ray cluster"
    totals = ray.cluster_resources()
    for name in need:
        if totals.get(name, 0) <= 0:
            have = ", ".join(sorted(k for k in totals if "node:" not in k)) or "none"
            raise ValueError(
                f"resources={resources!r}: {where} has no {name!r} resource (it has {have}); "
                f"start its nodes with it (ray start --resources='{{\"{name}\": 1}}', or "
                "--num-gpus for GPU) or leave it out"
            )

    def fits(free: dict[str, float]) -> int:
        return min(int(free.get(name, 0) // amount) for name, amount in need.items())

    def available() -> dict[str, float]:
        with _HELD_LOCK:
            held = dict(_HELD.get(_gcs_address(ray), {}))
        view = ray.available_resources()
        return {n: min(view.get(n, 0), totals.get(n, 0) - held.get(n, 0)) for n in need}

    total = fits(totals)
    wanted = min(total, processes or 1)
    deadline = time.monotonic() + RESOURCE_WAIT_S
    free = fits(available())
    while free < wanted and time.monotonic() < deadline:  # a pool that just ended frees its
        time.sleep(0.05)  # CPUs a moment after (Ray's own bookkeeping)
        free = fits(available())
    each = _describe_need(need)
    cpus = f"{totals.get('CPU', 0):g} CPUs"
    if processes is None:
        if free < 1:
            raise ValueError(
                f"{where} has {cpus}, room for {total} workers ({each} each), and none is "
                "free now: close another pool on it, or add nodes"
            )
        return free
    if processes > free:
        use = f"Use processes={free} or fewer" if free else "Close another pool on it"
        raise ValueError(
            f"processes={processes}, but {where} has {cpus}, room for {total} workers ({each} "
            f"each), {free or 'none'} of them free now (each worker is an actor that holds them). "
            f"{use}, or add nodes to the cluster."
        )
    return processes


def _needs(resources: dict[str, float] | None) -> dict[str, float]:
    """What one worker's actor takes: one CPU unless ``resources`` says otherwise."""
    need = {"CPU": 1.0}
    need.update(resources or {})
    return {name: amount for name, amount in need.items() if amount > 0}


def _describe_need(need: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in need.items())


def _actor_options(resources: dict[str, float] | None) -> dict[str, Any]:
    need = dict(resources or {})
    options: dict[str, Any] = {"num_cpus": need.pop("CPU", 1), "max_restarts": 0}
    if "GPU" in need:
        options["num_gpus"] = need.pop("GPU")
    if "memory" in need:
        options["memory"] = need.pop("memory")
    if need:
        options["resources"] = need
    return options


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
            enlarge(r)  # room for a burst between two polls
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

    def exit(self, msg: Any) -> tuple[Any, list[Any], tuple[Any, ...]]:
        reply, out = self._runner.exit()
        out = [bytes(b) if not isinstance(b, (bytes, bytearray)) else b for b in out]
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
    groups = {"hello": "run", "run": "run", "exit": "run", "poll": "ctl", "cancel": "ctl"}
    ns = {
        name: ray.method(concurrency_group=group)(getattr(_ActorImpl, name))
        for name, group in groups.items()
    }
    body = type("NbpoolWorker", (_ActorImpl,), ns)
    body.__module__ = __name__
    return ray.remote(concurrency_groups={"run": 1, "ctl": 1})(body)


# ----------------------------------------------------------------------------- object store

# key -> ray.ObjectRef: shared objects and pool.put objects, put once in Ray's object store.
# The bridge thread passes the ObjectRef for the message's placeholder, and Ray hands the actor
# the object (each node holds one copy; numpy arrays are read from it without a copy, read-only).
_STORED: dict[int, Any] = {}


class Stored(bridge.Stored):
    """An object in Ray's object store (see ``_engines.bridge.Stored``)."""

    table = _STORED

    def __init__(self, ray: Any, obj: Any, key: int | None = None) -> None:
        super().__init__(ray.put(obj), key)


# ----------------------------------------------------------------------------- driver side


class RayWorker(BridgedWorker):
    """A worker slot served by one Ray actor (see ``_engines.bridge``)."""

    engine = "Ray"

    def __init__(self, wid: int, ray: Any, resources: dict[str, float] | None = None) -> None:
        self._ray = ray
        self._options = _actor_options(resources)
        self._need = _needs(resources)
        self._gcs = _gcs_address(ray)
        self._holding = False
        self._hold(+1)
        try:
            super().__init__(wid, self._gcs)
        except BaseException:
            self._hold(-1)
            raise

    def _hold(self, sign: int) -> None:
        """Count (+1) or stop counting (-1, once) what this worker's actor holds."""
        with _HELD_LOCK:
            if (sign > 0) == self._holding:
                return
            self._holding = sign > 0
            held = _HELD.setdefault(self._gcs, {})
            for name, amount in self._need.items():
                held[name] = held.get(name, 0) + sign * amount

    def reap(self) -> int | None:
        try:
            return super().reap()  # (Ray has seen the actor die when this returns)
        finally:
            self._hold(-1)

    def _start(self) -> None:
        self.actor = _actor_class(self._ray).options(**self._options).remote()

    def _call(self, method: str, *args: Any) -> Any:
        if method in ("hello", "run"):
            args = bridge.with_stored(args, _STORED.__getitem__)
        return getattr(self.actor, method).remote(*args)

    def _wait(self, refs: list[Any], timeout: float) -> list[Any]:
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=timeout)
        return list(ready)

    def _get(self, ref: Any, timeout: float) -> Any:
        return self._ray.get(ref, timeout=timeout)  # GetTimeoutError is a TimeoutError

    def _kill_remote(self) -> None:
        try:
            if not self.pid:
                # It never answered: maybe still being created. Ray can lose track of the CPU
                # of an actor killed while its worker is being leased (ray-project/ray#27743
                # and kin): the CPU then stays "in use" for the life of the cluster, and the
                # next pools find it gone. Seen here once in a few hundred such kills, and in
                # CI after a pool stopped at once. So: let it come up (or fail to), then kill.
                with contextlib.suppress(Exception):
                    self._ray.wait([self.actor.__ray_ready__.remote()], timeout=CREATE_WAIT_S)
            self._ray.kill(self.actor, no_restart=True)
        finally:
            # (Ray's own view now says it is held until it sees the death: Pool() waits for it)
            self._hold(-1)

    def _disconnect(self) -> None:
        # Ray ends a driver process that stays connected to a lost head for 60 s: that would
        # be the kernel.
        self._ray.shutdown()

    def describe_death(self, exc: BaseException) -> str:
        return super().describe_death(exc).replace("its Ray worker", "its Ray actor")


def _gcs_address(ray: Any) -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:
        return ""
