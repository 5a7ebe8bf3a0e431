"""The Dask engine: each worker slot is a Dask actor that hosts one nbpool worker process.

Only this module imports ``distributed``, and only ``Pool(address="tcp://...")`` (or a
``distributed.Client``, ``DASK_SCHEDULER_ADDRESS``, ``NBPOOL_ADDRESS``, ``backend="dask"``)
imports this module.

A slot is one thread of a Dask worker. Its actor (``_DaskHost``, placed with ``workers=[...]``)
is an ``_engines.host.Host``: it starts an nbpool worker process on that node and relays the
bridge's calls to it (``_engines.bridge``, shared with the Ray engine)::

  dispatcher ── socket ──► bridge thread ── actor.run(msg) ──► Dask worker: _DaskHost (actor)
             ◄── pipes ───               ◄── poll every 0.2 s ─     └─ nbpool worker process
  kill() ─► actor.stop(): SIGKILL that process ─► the run call fails ─► EOF for the dispatcher

Shared objects and ``pool.put`` objects are scattered into Dask's memory once (``Stored``).
Before a slot's first message that needs one, a small task on the slot's Dask worker takes it
(Dask fetches it there from whichever worker holds it, not from the caller) and pickles it once
for all the worker processes that Dask worker hosts (``_engines.host``); the message names it.
Should that task fail, the message carries the pickle from the caller, as before.

Why actors and not one task per chunk: a task cannot be asked which item it is on, its output
comes only at its end, and running code cannot be stopped short of restarting the Dask worker
(seconds, and every other task on it). An actor's async methods run on the worker's event loop
while a chunk runs, so a poll or a stop is answered at once; the chunk waits in a thread of the
actor's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
import time
import uuid

from .._errors import BackendUnavailableError, ClusterConnectionError
from . import bridge
from .bridge import BridgedWorker, connect_error, host_port

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DaskWorker", "Stored", "check_processes", "check_versions", "connect"]

INSTALL_HINT = "pip install 'nbpool[dask]'"
CONNECT_TIMEOUT_S = 5.0  # the TCP check of the scheduler's port
CLIENT_TIMEOUT_S = 10.0  # the Client's own connect
PLACE_WAIT_S = 30.0  # how long a new slot waits for a free thread (a nanny restarting a worker)
PLACE_CHECK_S = 1.0  # ... and how often it checks that the worker it waits on is still there
FETCH_WAIT_S = 60.0  # how long a slot waits for its Dask worker to fetch a scattered object
SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the Dask engine needs distributed, which is not installed here: {INSTALL_HINT}"
        ) from exc
    return distributed


# scheduler address -> the Client nbpool made for it (kept for the next pool: ~0.2 s each)
_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()
# Dask worker address -> how many of its threads nbpool's live slots hold (all pools)
_PLACED: dict[str, int] = {}
# Dask worker address -> resource name -> how much of it nbpool's live slots hold
# (``resources=``; Dask holds an actor's resources only while the actor is being created)
_RES_HELD: dict[str, dict[str, float]] = {}
# scheduler address -> slots created but not placed yet (a slot is placed by its bridge thread,
# after Pool() returned): counted as taken, so a pool created right after another cannot be
# promised the same threads
_UNPLACED: dict[str, int] = {}


def connect(address: Any) -> tuple[Any, str]:
    """A ``distributed.Client`` for ``address`` ("tcp://host:port", or a Client, used as it is)
    and the scheduler's address; fails within seconds naming an address nobody answers at."""
    distributed = _import_distributed()
    if isinstance(address, distributed.Client):
        return address, str(address.scheduler.address)
    if address is None:
        try:
            client = distributed.get_client()
        except ValueError:
            raise ValueError(
                "backend='dask' needs a scheduler: pass address='tcp://host:port' (or a "
                "distributed.Client), set DASK_SCHEDULER_ADDRESS, or create a Client first"
            ) from None
        return client, str(client.scheduler.address)
    if not isinstance(address, str) or not address.startswith(SCHEMES) or not host_port(address):
        raise ValueError(
            f"address={address!r} is not a Dask scheduler's address: give 'tcp://host:port' "
            "(or 'tls://host:port'), or a distributed.Client"
        )
    with _LOCK:
        client = _CLIENTS.get(address)
        if client is not None and client.status == "running":
            return client, address
        exc = connect_error(address, CONNECT_TIMEOUT_S)
        if exc is not None:
            raise ClusterConnectionError(
                f"cannot reach a Dask scheduler at {address}: {exc}. Is the scheduler running "
                "(`dask scheduler ...`), and is this the address it printed?"
            )
        try:
            client = distributed.Client(
                address,
                timeout=CLIENT_TIMEOUT_S,
                set_as_default=False,  # the notebook's own dask calls stay where they were
                direct_to_workers=True,  # actor calls go straight to the worker
            )
        except Exception as exc:
            raise ClusterConnectionError(
                f"could not connect to the Dask scheduler at {address}: {exc}"
            ) from exc
        _CLIENTS[address] = client
    return client, address


# (scheduler address, Dask worker address) pairs whose Python and nbpool were found to match
_CHECKED: set[tuple[str, str]] = set()


def check_versions(client: Any, address: str) -> None:
    """Refuse Dask workers that cannot run this kernel's nbpool workers (another Python minor
    version, no nbpool, another nbpool: ``_engines.versions``), naming each. Each Dask worker
    is asked once."""
    from .. import __version__
    from .versions import probe, version_problems, versions_message

    workers = [a for a in _workers(client) if (address, a) not in _CHECKED]
    if not workers:
        return
    got = client.run(probe(), workers=workers, on_error="return")
    wrong = version_problems(got, sys.version_info[:3], __version__)
    _CHECKED.update((address, a) for a in got if a not in wrong)
    if wrong:
        cluster = f"the Dask cluster at {address}"
        raise ClusterConnectionError(versions_message(cluster, "Dask worker", wrong, __version__))


def _workers(client: Any) -> dict[str, tuple[int, dict[str, float]]]:
    """Dask worker address -> (its threads, its resources), as the scheduler knows them now."""
    try:
        info = client.scheduler_info(n_workers=-1)  # (newer versions list 5 workers by default)
    except TypeError:
        info = client.scheduler_info()
    return {
        addr: (int(w.get("nthreads", 1)), dict(w.get("resources") or {}))
        for addr, w in info["workers"].items()
    }


def _room(addr: str, threads: int, has: dict[str, float], need: dict[str, float]) -> int:
    """How many more slots a Dask worker takes: a free thread each, and ``need`` of its
    resources each (under ``_LOCK``)."""
    room = threads - _PLACED.get(addr, 0)
    held = _RES_HELD.get(addr, {})
    for name, amount in need.items():
        room = min(room, int((has.get(name, 0) - held.get(name, 0)) // amount))
    return max(0, room)


def _fit(threads: int, has: dict[str, float], need: dict[str, float]) -> int:
    """How many slots a Dask worker holds when no pool uses it."""
    return min([threads, *(int(has.get(name, 0) // amount) for name, amount in need.items())])


def check_processes(
    client: Any, processes: int | None, address: str, resources: dict[str, float] | None = None
) -> int:
    """The number of workers: as many as the cluster's free worker threads (and resources,
    with ``resources=``) allow, by default. More than it has now is refused: a slot would wait
    for a thread for ever."""
    need = dict(resources or {})
    workers = _workers(client)
    total = sum(n for n, _ in workers.values())
    for name in need:
        if not any(has.get(name, 0) > 0 for _, has in workers.values()):
            raise ValueError(
                f"resources={resources!r}: no worker of the Dask cluster at {address} has a "
                f"{name!r} resource; start workers with it (dask worker ... --resources "
                f"'{name}=1') or leave it out"
            )
    with _LOCK:
        free = sum(_room(a, n, has, need) for a, (n, has) in workers.items())
        free = max(0, free - _UNPLACED.get(address, 0))
        fit = sum(_fit(n, has, need) for n, has in workers.values())
    what = f"worker threads with {need}" if need else "worker threads"
    if processes is None:
        if free < 1:
            raise ValueError(
                f"the Dask cluster at {address} has room for {fit} nbpool workers ({what}) "
                "and none is free: each nbpool worker takes one thread"
            )
        return free
    if processes > free:
        use = f"Use processes={free} or fewer" if free else "Close another pool on it"
        raise ValueError(
            f"processes={processes}, but the Dask cluster at {address} has {total} worker "
            f"threads ({len(workers)} workers) and room for {fit} nbpool workers ({what}), "
            f"{free or 'none'} of them free (each nbpool worker takes one thread, and other "
            f"pools hold the rest). {use}, or add workers to the cluster."
        )
    return processes


# ----------------------------------------------------------------------------- Dask's memory

# key -> (the Dask future of a scattered object, the object): shared objects and put objects.
# The object itself is kept (no copy) for a slot whose Dask worker does not hold the key.
_STORED: dict[int, tuple[Any, Any]] = {}
_STORE_LOCK = threading.Lock()
SENT_BY_CALLER = 0  # how many times a slot got a pickle from the caller instead (for the tests)


class Stored(bridge.Stored):
    """An object scattered to every Dask worker (see ``_engines.bridge.Stored``)."""

    table = _STORED

    def __init__(self, client: Any, obj: Any, key: int | None = None) -> None:
        # Once, to one worker: not broadcast, which Dask's memory manager (ReduceReplicas, on
        # by default) would undo within seconds. Workers fetch it when a slot needs it.
        [future] = client.scatter([obj], hash=False)
        self._client = client
        super().__init__((future, obj), key)

    def close(self) -> None:
        got = self.table.pop(self.key, None)
        if got is not None:
            future = got[0]
            future.release()  # (thread-safe: the Client's loop does it)
            with contextlib.suppress(Exception):  # (a worker that is gone has forgotten it)
                self._client.run(_forget_pickled, [future.key], wait=False)


def _rescatter(client: Any, key: int) -> Any:
    """Scatter a stored object again (Dask lost it); its new future."""
    with _STORE_LOCK:
        future, obj = _STORED[key]
        if future.status != "finished":
            lost = future.key
            [future] = client.scatter([obj], hash=False)
            _STORED[key] = (future, obj)
            # A Dask worker that outlived the copies keeps its pickle of the lost key (Dask
            # drops a fetched copy once the task is done; our pickle stays): nothing would ever
            # forget it under its old key.
            with contextlib.suppress(Exception):
                client.run(_forget_pickled, [lost], wait=False)
        return future


def _pickle_on_worker(obj: Any, key: str) -> None:
    """A task on a slot's Dask worker, given the scattered object (Dask brought it there): its
    pickle, made once for all the worker processes this Dask worker hosts."""
    from .host import keep_pickled

    keep_pickled(key, obj)


async def _forget_pickled(keys: list[str]) -> None:
    # A coroutine: Client.run(..., wait=False) runs nothing else on a worker (distributed
    # asserts "wait or is_coro" there). In a thread, as keep_pickled may hold the lock while
    # it pickles a large object: the worker's event loop never waits for that.
    import asyncio

    from .host import forget_pickled

    await asyncio.to_thread(forget_pickled, keys)


# ----------------------------------------------------------------------------- the actor


class _DaskHost:
    """The actor: an ``_engines.host.Host`` whose blocking calls wait in a thread of its own
    (Dask runs every actor of a worker in one shared thread otherwise), while ``poll``,
    ``cancel`` and ``stop`` are answered on the worker's event loop."""

    def __init__(self) -> None:
        from distributed import get_worker

        from .host import Host

        worker = get_worker()
        where = host_port(worker.address)
        self._host = Host(where[0] if where else worker.address, str(worker.address))
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nbpool")

    async def hello(self, msg: Any, *buffers: Any) -> Any:
        return await self._blocking(self._host.hello, msg, buffers)

    async def run(self, msg: Any, *buffers: Any) -> Any:
        return await self._blocking(self._host.run, msg, buffers)

    async def exit(self, msg: Any) -> Any:
        return await self._blocking(self._host.exit, msg, ())

    async def poll(self) -> Any:
        return self._host.poll()

    async def cancel(self, job_id: int) -> None:
        self._host.cancel(job_id)

    async def stop(self) -> None:
        # (in a thread: reaping the process may take a moment, and this loop is the Dask
        # worker's, heartbeats included)
        await asyncio.get_running_loop().run_in_executor(None, self._host.stop)
        self._thread.shutdown(wait=False)

    async def _blocking(self, fn: Any, msg: Any, buffers: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, fn, msg, list(buffers))


# ----------------------------------------------------------------------------- driver side


class DaskWorker(BridgedWorker):
    """A worker slot served by one Dask actor (see the module docstring)."""

    engine = "Dask"

    def __init__(
        self, wid: int, client: Any, address: str, resources: dict[str, float] | None = None
    ) -> None:
        self._client = client
        self._need = dict(resources or {})
        self._loop = client.loop.asyncio_loop
        self._future: Any = None
        self.actor: Any = None
        self._worker_address = ""
        self._kill_lock = threading.Lock()
        self._killed = False
        self._scheduler = address
        with _LOCK:
            _UNPLACED[address] = _UNPLACED.get(address, 0) + 1
            self._unplaced = True  # until _placed()
        try:
            super().__init__(wid, address)
        except BaseException:
            with _LOCK:
                self._placed()
            raise

    def _placed(self) -> None:
        """No longer counted in ``_UNPLACED`` (placed, or never will be); under ``_LOCK``."""
        if self._unplaced:
            self._unplaced = False
            _UNPLACED[self._scheduler] -= 1

    def _start(self) -> None:
        pass  # the actor is placed by the bridge thread (placing may wait for a free thread)

    def _bridge(self) -> None:
        try:
            self._place()
        except Exception as exc:
            with _LOCK:
                self._placed()
            self._died(exc)
            self._bridge_ch.close()
            return
        super()._bridge()

    def _place(self) -> None:
        deadline = time.monotonic() + PLACE_WAIT_S
        while True:
            self._choose(deadline)
            self._future = self._client.submit(
                _DaskHost,
                actor=True,
                workers=[self._worker_address],
                allow_other_workers=False,
                pure=False,
                key=f"nbpool-worker-{self.wid}-{uuid.uuid4().hex[:12]}",
            )
            actor = self._await_actor(deadline)
            if actor is not None:
                break
            # Its Dask worker left before the actor started there (it had died, and the
            # scheduler saw that only now): place it again, on a worker that is there.
            self._release()
        with self._kill_lock:
            if self._killed:  # stopped while it was being placed: nothing else will free it
                self._release()
                raise RuntimeError("stopped while it was being placed")
            self.actor = actor

    def _choose(self, deadline: float) -> None:
        """Take a free thread (and resources) of the Dask worker with the most of them."""
        while True:
            workers = _workers(self._client)
            with _LOCK:
                free = {a: _room(a, n, has, self._need) for a, (n, has) in workers.items()}
                best = max(free, key=lambda a: free[a], default=None)
                if best is not None and free[best] > 0:
                    _PLACED[best] = _PLACED.get(best, 0) + 1
                    held = _RES_HELD.setdefault(best, {})
                    for name, amount in self._need.items():
                        held[name] = held.get(name, 0) + amount
                    self._worker_address = best
                    self._placed()
                    return
            if time.monotonic() > deadline or self._stopped:
                raise RuntimeError(
                    f"no free Dask worker thread{' with ' + str(self._need) if self._need else ''}"
                    f" within {PLACE_WAIT_S:.0f} s"
                )
            time.sleep(0.1)

    def _await_actor(self, deadline: float) -> Any:
        """The actor once it runs; None if its Dask worker left the cluster meanwhile."""
        while True:
            try:
                with self._client.as_current():  # the actor handle binds to our Client
                    return self._future.result(timeout=PLACE_CHECK_S)
            except TimeoutError:
                pass
            if time.monotonic() > deadline or self._stopped:
                raise RuntimeError(
                    f"the Dask worker {self._worker_address} did not start this worker within "
                    f"{PLACE_WAIT_S:.0f} s"
                )
            if self._worker_address not in _workers(self._client):
                return None

    def _call(self, method: str, *args: Any) -> Any:
        actor = self.actor
        if actor is None or self._future is None:
            # Gone (stopped and cancelled): Dask would answer a call with a KeyError that
            # never reaches the caller's future.
            failed: concurrent.futures.Future = concurrent.futures.Future()
            failed.set_exception(RuntimeError("the actor was stopped"))
            return failed

        if method in ("hello", "run"):
            args = self._with_scattered(args)

        async def call() -> Any:
            return await getattr(actor, method)(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop)

    def _with_scattered(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """``(msg, *buffers)`` with each object-store placeholder replaced by ``Scattered``,
        once this slot's Dask worker holds the object's pickle (``_pickle_on_worker``), or by
        the pickle itself if that failed."""
        from .host import Scattered

        msg, buffers = args[0], list(args[1:])
        places = bridge.stored_at(msg, buffers)
        if not places:
            return args
        there = self._fetch({key for _, key in places})
        stored = {key: _STORED[key] for _, key in places}
        objects = {future.key: obj for future, obj in stored.values()}
        for at, key in places:
            buffers[at] = Scattered(stored[key][0].key)

        def pickled(placeholder: Any) -> Any:
            from .._worker.serialize import dumps_data

            if placeholder.key in there:
                return None  # (its Dask worker holds the pickle)
            global SENT_BY_CALLER
            SENT_BY_CALLER += 1
            data, oob = dumps_data(objects[placeholder.key])
            return data, [bytes(b) for b in oob], None

        msg, buffers = bridge.unstore(msg, buffers, pickled)
        return (msg, *buffers)

    def _fetch(self, keys: set[int]) -> set[str]:
        """The Dask keys of those stored objects whose pickle this slot's Dask worker holds now
        (each fetched with a task there: ``_pickle_on_worker``). An object Dask lost (the only
        worker that held it left) is scattered again, from the caller's reference to it."""
        there: set[str] = set()
        for attempt in range(2):
            tasks = {}
            for key in keys:
                future = _STORED[key][0]
                if attempt and future.status != "finished":
                    future = _rescatter(self._client, key)
                tasks[future.key] = self._client.submit(
                    _pickle_on_worker,
                    future,
                    future.key,
                    workers=[self._worker_address],
                    allow_other_workers=False,
                    pure=False,
                    key=f"nbpool-fetch-{uuid.uuid4().hex[:12]}",
                )
            deadline = time.monotonic() + FETCH_WAIT_S
            while time.monotonic() < deadline and not self._stopped:
                if all(task.done() for task in tasks.values()):
                    break
                time.sleep(0.005)
            done = {k for k, task in tasks.items() if task.status == "finished"}
            with contextlib.suppress(Exception):
                self._client.cancel(list(tasks.values()), force=True)
            there |= done
            keys = {key for key in keys if _STORED[key][0].key not in done}
            if not keys or self._stopped:
                break
        return there

    def _wait(self, refs: list[Any], timeout: float) -> list[Any]:
        done, _ = concurrent.futures.wait(
            refs, timeout, return_when=concurrent.futures.FIRST_COMPLETED
        )
        return list(done)

    def _get(self, ref: Any, timeout: float) -> Any:
        try:
            return ref.result(timeout)
        except concurrent.futures.TimeoutError:  # (not TimeoutError itself before 3.11)
            raise TimeoutError from None

    def _kill_remote(self) -> None:
        # Once (a stop thread and the bridge's exit both come here): a second stop sent after
        # the first one's cancel would get a KeyError that never reaches its future.
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
            try:
                if self.actor is not None:
                    self._get(self._call("stop"), 10.0)
            finally:
                self._release()

    def _release(self) -> None:
        with _LOCK:
            addr = self._worker_address
            if addr:
                _PLACED[addr] = max(0, _PLACED.get(addr, 1) - 1)
                held = _RES_HELD.get(addr, {})
                for name, amount in self._need.items():
                    held[name] = max(0.0, held.get(name, 0) - amount)
                self._worker_address = ""
        future, self._future = self._future, None
        self.actor = None
        if future is not None:
            # cancel, not release: the actor handle holds the key too, and the key must go
            with contextlib.suppress(Exception):
                self._client.cancel([future], force=True)

    def _disconnect(self) -> None:
        with _LOCK:
            ours = _CLIENTS.get(self.cluster) is self._client
            if ours:
                del _CLIENTS[self.cluster]
        if ours:  # (a Client the user made is theirs to close)
            self._client.close(timeout=5)

    def _cluster_gone(self) -> str:
        status = str(self._client.status)
        return "" if status == "running" else f"its Client is {status}"

    def _await_death(self, timeout: float) -> None:
        pass  # stop() returned when the process was gone; the thread is ours to count

    def describe_death(self, exc: BaseException) -> str:
        text = str(exc)
        if "Unable to contact Actor's worker" in text or "Worker holding Actor was lost" in text:
            return f"its Dask worker {self._worker_address or ''} died or left the cluster"
        return super().describe_death(exc)
