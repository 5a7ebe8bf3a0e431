"""One small adapter per library, so every benchmark row runs the same code for each of them.

Every adapter imports its library lazily, in ``start()``: the cold-start row times that import.
All pools have ``WORKERS`` workers started with ``spawn`` (or the library's equivalent: nbpool
and loky always start fresh interpreters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

WORKERS = 2

# Column order of the report; "serial" is the in-process baseline. Short labels keep the table
# narrow: mp = multiprocessing.Pool(spawn), PPE = concurrent.futures.ProcessPoolExecutor(spawn).
LIBS = ("nbpool", "mp_spawn", "ppe_spawn", "mpire", "loky", "serial")
LABELS = {
    "nbpool": "nbpool",
    "mp_spawn": "mp",
    "ppe_spawn": "PPE",
    "mpire": "mpire",
    "loky": "loky",
    "serial": "serial",
}


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
        raise NotImplementedError


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
        SerialAdapter,
    )
}


def make(key: str, cold: bool = False) -> Adapter:
    return ADAPTERS[key](cold=cold)
