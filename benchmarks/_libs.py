"""One small adapter per library, so every benchmark row runs the same code for each of them.

Every adapter imports its library lazily, in ``start()``: the cold-start row times that import.
All pools have ``WORKERS`` workers started with ``spawn`` (or the library's equivalent: nbpool
and loky always start fresh interpreters; Ray starts its actors from its own raylet, Dask its
workers with ``spawn`` from their nannies). Ray and Dask get a private cluster of their own on
127.0.0.1, started by ``start()`` and counted in the cold-start rows.
"""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

WORKERS = 2
HERE = Path(__file__).resolve().parent

# Column order of the report; "serial" is the in-process baseline. Short labels keep the table
# narrow: mp = multiprocessing.Pool(spawn), PPE = concurrent.futures.ProcessPoolExecutor(spawn).
LIBS = ("nbpool", "mp_spawn", "ppe_spawn", "mpire", "loky", "ray", "dask", "serial")
LABELS = {
    "nbpool": "nbpool",
    "mp_spawn": "mp",
    "ppe_spawn": "PPE",
    "mpire": "mpire",
    "loky": "loky",
    "ray": "ray",
    "dask": "dask",
    "serial": "serial",
}
# The module each library needs, for the columns that are optional (extras ray and dask).
MODULES = {
    "nbpool": "nbpool",
    "mpire": "mpire",
    "loky": "loky",
    "ray": "ray",
    "dask": "distributed",
}

# Ray's object store: the 400 MB rows put a 400 MB argument or result in it, and a few of them
# may be alive at once (the caller's reference, the worker's, one being freed).
RAY_OBJECT_STORE_BYTES = 1_500_000_000
# Arguments this large go to Dask's workers with client.scatter (see DaskAdapter).
DASK_SCATTER_MIN = 1 << 20
# Dask has no imap (client.map refuses iterators): the generator is read in batches this size.
DASK_IMAP_BATCH = 1_000


def missing(lib: str) -> str | None:
    """Why ``lib`` cannot run here (its module is not installed), or None."""
    module = MODULES.get(lib)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    extra = {"ray": " (pip install -e '.[ray]')", "dask": " (pip install -e '.[dask]')"}
    return f"{module} is not installed{extra.get(lib, '')}"


def compile_nbpool() -> None:
    """Write nbpool's bytecode (``__pycache__``), as ``pip install`` does for a wheel.

    The checkout is installed in editable mode, and where ``PYTHONDONTWRITEBYTECODE`` is set
    (it is on our CI machines) nothing ever writes its ``.pyc`` files: every import of nbpool,
    in the caller and in each worker, would then compile it from source (~15 ms here), while
    the stdlib and the peers (installed from wheels) load bytecode. Reading ``.pyc`` files is
    not affected by that variable, so compiling once puts nbpool on the same footing.
    """
    import compileall
    from pathlib import Path

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "nbpool"), quiet=1)


def stdlib_chunksize(n: int, workers: int = WORKERS) -> int:
    """The chunksize ``multiprocessing.Pool.map`` picks by default: ceil(n / (4 * workers))."""
    return max(1, math.ceil(n / (4 * workers)))


class Adapter:
    key = ""
    # True where the library's own default chunksize for map is 1 (concurrent.futures-style),
    # which is pathological for many tiny items: the runner then passes stdlib_chunksize(n).
    chunksize_one_default = False

    def __init__(self, cold: bool = False) -> None:
        self.cold = cold
        self.pool: Any = None

    def start(self) -> None:
        raise NotImplementedError

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int | None) -> list:
        raise NotImplementedError

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """Lazy map with the library's DEFAULT chunksize."""
        raise NotImplementedError

    def apply(self, fn: Callable[..., Any], args: tuple) -> Any:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        """Shut the pool down (its workers exit)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what outlives a pool: Ray's local runtime, the adapter's temporary folder."""


class _PoolApiAdapter(Adapter):
    """Libraries with the multiprocessing.Pool API: only start() and pids() differ."""

    def map(self, fn, items, chunksize):
        return self.pool.map(fn, items, chunksize)

    def imap(self, fn, items):
        return self.pool.imap(fn, items)

    def apply(self, fn, args):
        return self.pool.apply(fn, args)

    def stop(self):
        self.pool.close()
        self.pool.join()


class NbpoolAdapter(_PoolApiAdapter):
    key = "nbpool"

    def start(self) -> None:
        import nbpool

        self.pool = nbpool.Pool(WORKERS)

    def pids(self):
        return list(self.pool._engine.worker_pids())


class MpSpawnAdapter(_PoolApiAdapter):
    key = "mp_spawn"

    def start(self) -> None:
        import multiprocessing

        self.pool = multiprocessing.get_context("spawn").Pool(WORKERS)

    def pids(self):
        return [p.pid for p in self.pool._pool]


class _ExecutorAdapter(Adapter):
    chunksize_one_default = True

    def map(self, fn, items, chunksize):
        return list(self.pool.map(fn, items, chunksize=chunksize or 1))

    def imap(self, fn, items):
        return self.pool.map(fn, items)

    def apply(self, fn, args):
        return self.pool.submit(fn, *args).result()

    def pids(self):
        return list(self.pool._processes)

    def stop(self):
        self.pool.shutdown(wait=True)


class PpeSpawnAdapter(_ExecutorAdapter):
    key = "ppe_spawn"

    def start(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))


class LokyAdapter(_ExecutorAdapter):
    key = "loky"

    def start(self) -> None:
        import loky

        if self.cold:  # a fresh executor, never one left over by an earlier call
            self.pool = loky.ProcessPoolExecutor(max_workers=WORKERS)
        else:
            self.pool = loky.get_reusable_executor(max_workers=WORKERS)


class MpireAdapter(Adapter):
    key = "mpire"

    def start(self) -> None:
        from mpire import WorkerPool

        # keep_alive=True: without it mpire starts and stops its workers on every map call, so
        # a "warm pool" would not exist. The cold-start row uses mpire's defaults.
        self.pool = WorkerPool(n_jobs=WORKERS, start_method="spawn", keep_alive=not self.cold)

    def map(self, fn, items, chunksize):
        # concatenate_numpy_output=False: return a list of arrays like every other library
        # (mpire's default would concatenate returned arrays into one big array).
        return self.pool.map(fn, items, chunk_size=chunksize, concatenate_numpy_output=False)

    def imap(self, fn, items):
        return self.pool.imap(fn, items)

    def apply(self, fn, args):
        return self.pool.apply(fn, args=args)

    def pids(self):
        return [w.pid for w in self.pool._workers if w is not None]

    def stop(self):
        self.pool.stop_and_join()


def _private_tmp(prefix: str) -> str:
    """A short folder of our own in /tmp (Ray's socket paths must stay under ~107 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class RayAdapter(_PoolApiAdapter):
    """``ray.util.multiprocessing.Pool(2)`` on a private local Ray started by ``start()``.

    Ray's Pool never shuts Ray down: ``stop()`` ends the pool's actors, and a second pool in the
    same process reuses the running Ray (as a user's second ``Pool()`` would); ``close()`` stops
    Ray. Its defaults: map's chunksize is the stdlib's (len / (4 * workers)), imap's is 1.
    """

    key = "ray"
    tmp = ""

    def start(self) -> None:
        if "ray" not in sys.modules:
            self._environment()
        import ray
        import ray.util.multiprocessing

        if not ray.is_initialized():
            ray.init(
                address="local",  # a new private Ray, never one found on the machine
                num_cpus=WORKERS,
                include_dashboard=False,
                object_store_memory=RAY_OBJECT_STORE_BYTES,
                _temp_dir=self.tmp or None,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
        self.pool = ray.util.multiprocessing.Pool(WORKERS)

    def _environment(self) -> None:
        """Ray reads these when it is imported (see ../shared/recipes/cluster.md)."""
        self.tmp = _private_tmp("nbrb")
        os.environ.update(
            {
                # Without it Ray swaps 127.0.0.1 for the machine's other address and listens on
                # every interface; with it every listener stays on loopback (one node only).
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(16),
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_ENABLE_AUTO_CONNECT": "0",
                "RAY_TMPDIR": self.tmp,
                # Ray's workers do not get the caller's sys.path; they inherit the environment.
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
                ),
            }
        )
        os.environ.pop("RAY_ADDRESS", None)

    def pids(self):
        # No pid on an actor handle: ask each actor (chunks of 1 are dealt round robin).
        from _tasks import nap

        return sorted(set(self.pool.map(nap, [0.1] * (2 * WORKERS), 1)))

    def close(self) -> None:
        if "ray" in sys.modules:
            import ray

            ray.shutdown()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


class DaskAdapter(Adapter):
    """A ``distributed.LocalCluster`` of 2 one-thread worker processes and its ``Client``.

    The cluster is the pool: ``start()`` creates both, ``stop()`` closes both. Every listener
    is on 127.0.0.1 (the scheduler's HTTP server too, on a free port; no dashboard).
    """

    key = "dask"
    chunksize_one_default = True  # client.map runs one task per item
    tmp = ""
    cluster: Any = None

    def start(self) -> None:
        if "distributed" not in sys.modules:  # Dask reads these when it is imported
            self.tmp = _private_tmp("nbdb")
            os.environ["DASK_CONFIG"] = os.path.join(self.tmp, "config")
            os.environ["DASK_TEMPORARY_DIRECTORY"] = os.path.join(self.tmp, "work")
        import distributed

        self.cluster = distributed.LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,  # no dashboard...
            # ...but the scheduler's HTTP server still listens, by default on 8787: any port.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            local_directory=os.path.join(self.tmp or tempfile.gettempdir(), "workers"),
        )
        self.pool = distributed.Client(self.cluster, set_as_default=False)

    def _send(self, items: list) -> list:
        """Large arrays go with client.scatter, as Dask's warning about large graphs advises:
        embedded in the task they travel through the scheduler (~3x slower here on row 6).
        ``hash=False``: no hashing of the data (each call sends its data anew, as elsewhere)."""
        if any(getattr(x, "nbytes", 0) >= DASK_SCATTER_MIN for x in items):
            return self.pool.scatter(items, hash=False)
        return items

    def map(self, fn, items, chunksize):
        from _tasks import Box, batch

        items = list(items)
        if not chunksize or chunksize == 1:  # Dask's own way: one task per item
            futures = self.pool.map(fn, self._send(items), pure=False)
            return self.pool.gather(futures)
        # Boxed batches both ways: Dask walks a plain list item by item (see _tasks.Box).
        batches = [Box(items[i : i + chunksize]) for i in range(0, len(items), chunksize)]
        futures = self.pool.map(batch, [fn] * len(batches), batches, pure=False)
        return [y for box in self.pool.gather(futures) for y in box.items]

    def imap(self, fn, items):
        """Batches of DASK_IMAP_BATCH items read from the iterator as results are consumed (at
        most 2 per worker in flight), results in order. One task per item costs ~1.7 ms here."""
        from _tasks import Box, batch

        it = iter(items)
        pending: deque = deque()

        def submit_next() -> None:
            chunk = list(islice(it, DASK_IMAP_BATCH))
            if chunk:
                pending.append(self.pool.submit(batch, fn, Box(chunk), pure=False))

        for _ in range(2 * WORKERS):
            submit_next()
        while pending:
            future = pending.popleft()
            submit_next()
            yield from future.result().items

    def apply(self, fn, args):
        return self.pool.submit(fn, *self._send(list(args)), pure=False).result()

    def pids(self):
        return sorted(self.pool.run(os.getpid).values())

    def stop(self):
        self.pool.close()
        self.cluster.close()

    def close(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


class SerialAdapter(Adapter):
    key = "serial"

    def start(self) -> None:
        pass

    def map(self, fn, items, chunksize):
        return list(map(fn, items))

    def imap(self, fn, items):
        return map(fn, items)

    def apply(self, fn, args):
        return fn(*args)

    def pids(self):
        return []

    def stop(self):
        pass


ADAPTERS: dict[str, type[Adapter]] = {
    a.key: a
    for a in (
        NbpoolAdapter,
        MpSpawnAdapter,
        PpeSpawnAdapter,
        MpireAdapter,
        LokyAdapter,
        RayAdapter,
        DaskAdapter,
        SerialAdapter,
    )
}


def make(key: str, cold: bool = False) -> Adapter:
    return ADAPTERS[key](cold=cold)
