"""``nbpool.Pool``: the ``multiprocessing.Pool`` API over nbpool's engine.

This module checks arguments, keeps the pool's state (running, closed, terminated) and builds
jobs; it starts no thread and touches no pipe (that is ``_driver.dispatcher``'s job).
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping

from ._backends import choose
from ._driver.output import caller_log_levels, capture_target, notebook_target
from ._engines.local import Worker
from ._options import (
    check_chunksize,
    check_initargs_pickle,
    check_int,
    check_seconds,
    parse_bytes,
)
from ._options import start_method as context_method
from ._progress import (
    FINAL_RENDER_WAIT_S,
    JobProgress,
    await_final_render,
    check_progress,
    describe_call,
    wants_view,
)
from ._worker.functions import dumps_fn

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from ._driver.dispatcher import Engine
    from ._driver.handle import WorkerHandle
    from ._errors import PoolClosedError
    from ._jobs import IteratorSource, Job, SequenceSource
    from ._results import ApplyResult, IMapIterator, IMapUnorderedIterator, MapResult


def _import_the_rest() -> None:
    """Import what only a running pool needs, once its workers are already starting.

    A worker's start-up and these imports (~30 ms) are both on a pool's cold-start path; this
    way they overlap. Pool methods use these names only after ``__init__`` has run this.
    """
    global Engine, PoolClosedError, IteratorSource, Job, SequenceSource
    global ApplyResult, IMapIterator, IMapUnorderedIterator, MapResult
    from ._driver.dispatcher import Engine
    from ._errors import PoolClosedError
    from ._jobs import IteratorSource, Job, SequenceSource
    from ._results import ApplyResult, IMapIterator, IMapUnorderedIterator, MapResult


__all__ = ["Pool"]

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"
# terminate(): how long the dispatcher gets to stop before the workers are killed from the
# calling thread, and how long the callbacks already queued get to finish.
TERMINATE_WAIT_S = 5.0
# Pool(max_memory_per_worker=...) waits this long for a worker to be ready to check the limit.
IDLE_CHECK_WAIT_S = 30.0
CALLBACK_WAIT_S = 1.0
_SERIALIZERS = ("cloudpickle", "dill")


def _check_serializer(serializer: str) -> None:
    if serializer not in _SERIALIZERS:
        raise ValueError(f"serializer must be one of {_SERIALIZERS}, not {serializer!r}")
    if serializer == "dill":  # an optional extra: fail here, not at the first pickle
        try:  # (imported only to see that it is there, hence the noqa)
            import dill  # noqa: F401
        except ImportError as exc:
            from ._errors import BackendUnavailableError

            raise BackendUnavailableError(
                "serializer='dill' needs dill, which is not installed here: "
                "pip install 'nbpool[dill]'"
            ) from exc


# "spawn": a fresh interpreter per worker (subprocess); "forkserver": forked from a server that
# was itself spawned, with nbpool and cloudpickle imported (_engines.forkserver)
# "threading": threads of the caller, nothing pickled (_engines.threads)
# None (the default): spawned until the process's fork server is up (started 0.3 s after a
# first worker ended: nothing waits for it), forked from it after that.
_START_METHODS = ("spawn", "forkserver", "threading")
_job_ids = itertools.count(1)
_DROPPED = KeyboardInterrupt("the iterator was dropped before its end: its job was cancelled")


class _WorkerView:
    """What ``Pool._pool`` shows of one worker slot: ``pid`` and ``is_alive()``."""

    __slots__ = ("_w", "pid")

    def __init__(self, w: WorkerHandle | None) -> None:
        self._w = w
        self.pid = (w.pid or None) if w is not None else None

    def is_alive(self) -> bool:
        return self._w is not None and not self._w.dead and self.pid is not None

    def __repr__(self) -> str:
        return f"<nbpool worker pid={self.pid} alive={self.is_alive()}>"


def _wait(result: Any) -> Any:
    """``result.get()`` for the blocking methods, then the dashboard's final render (see
    ``await_final_render``); not after an interrupt: that must return at once."""
    __tracebackhide__ = True
    try:
        value = result.get()
    except KeyboardInterrupt:
        raise
    except BaseException:
        # A failed map raises at its first failure while its other items still run: raise
        # now rather than wait for them, with its dashboard final (the cell ends now).
        conclude = result._conclude
        if conclude is not None and result._progress is not None:
            conclude()
        await_final_render(result._progress)
        raise
    await_final_render(result._progress)
    return value


_NO_INITIAL = object()  # map_reduce(): no initial value given (None is a value)


def _worker_args(pass_worker_id: Any, shared_objects: Any, use_worker_state: Any) -> tuple:
    """What each task gets before its item, in mpire's order: worker id, shared objects,
    worker state (see ``_worker.protocol.Hello``)."""
    for name, value in (("pass_worker_id", pass_worker_id), ("use_worker_state", use_worker_state)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, not {value!r}")
    return tuple(
        name
        for name, on in (
            ("id", pass_worker_id),
            ("shared", shared_objects is not None),
            ("state", use_worker_state),
        )
        if on
    )


def _cpu_pins(cpu_ids: Any, processes: int, here: bool) -> list[tuple[int, ...]] | None:
    """``cpu_ids`` as mpire takes it (one entry for every worker, or one per worker; an entry
    is a CPU id or a list of them) -> the CPU ids of each worker slot. ``here``: the workers run
    on this machine, so the ids are checked against its CPUs now."""
    if cpu_ids is None:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("cpu_ids= needs Linux (os.sched_setaffinity); leave it out here")
    if isinstance(cpu_ids, (str, bytes)) or not isinstance(cpu_ids, (list, tuple)):
        raise TypeError(
            f"cpu_ids must be a list (of CPU ids, or of lists of them), not {cpu_ids!r}"
        )
    if len(cpu_ids) not in (1, processes):
        raise ValueError(
            f"cpu_ids has {len(cpu_ids)} entries: give one (for every worker) or one per worker "
            f"({processes})"
        )
    pins = []
    mine = os.sched_getaffinity(0) if here else None
    for entry in cpu_ids:
        ids = tuple(entry) if isinstance(entry, (list, tuple, set, frozenset)) else (entry,)
        for cpu in ids:
            if isinstance(cpu, bool) or not isinstance(cpu, int):
                raise TypeError(f"cpu_ids: a CPU id must be an int, not {cpu!r}")
            if cpu < 0 or (mine is not None and cpu not in mine):
                have = f": it has {sorted(mine)}" if mine is not None else ""
                raise ValueError(f"cpu_ids: this machine has no CPU {cpu} (for nbpool){have}")
        if not ids:
            raise ValueError("cpu_ids: an entry is an empty list; give at least one CPU id")
        pins.append(ids)
    return pins * processes if len(pins) == 1 else pins


def _gpu_slices(gpus: Any, processes: int) -> list[tuple[tuple[str, str], ...]] | None:
    """``gpus=`` -> each worker slot's ``CUDA_VISIBLE_DEVICES``. ``gpus``: how many of this
    machine's GPUs to use (the first N of the caller's ``CUDA_VISIBLE_DEVICES``, or ids 0..N-1)
    or their ids (ints, or strings such as ``"GPU-4b1c..."`` UUIDs). With at least as many GPUs
    as workers, each worker gets its own contiguous slice; with fewer, worker i gets GPU
    i mod len(gpus) (workers share them)."""
    if gpus is None:
        return None
    if isinstance(gpus, bool):
        raise TypeError(f"gpus must be a number of GPUs or a list of GPU ids, not {gpus!r}")
    if isinstance(gpus, int):
        if gpus < 1:
            raise ValueError(f"gpus must be 1 or more (GPUs to use), not {gpus}")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
        if ids is None:
            ids = [str(i) for i in range(gpus)]
        elif len(ids) < gpus:
            raise ValueError(
                f"gpus={gpus}, but CUDA_VISIBLE_DEVICES={visible!r} makes {len(ids)} visible here"
            )
        ids = ids[:gpus]
    elif isinstance(gpus, (list, tuple)):
        ids = []
        for g in gpus:
            if isinstance(g, bool) or not isinstance(g, (int, str)):
                raise TypeError(f"gpus: a GPU id must be an int or a string, not {g!r}")
            if (isinstance(g, int) and g < 0) or (isinstance(g, str) and not g.strip()):
                raise ValueError(f"gpus: a GPU id must be 0 or more (or a UUID), not {g!r}")
            ids.append(str(g))
        if not ids:
            raise ValueError("gpus is an empty list: give at least one GPU id, or leave it out")
    else:
        raise TypeError(f"gpus must be a number of GPUs or a list of GPU ids, not {gpus!r}")
    if len(ids) < processes:
        groups = [[ids[i % len(ids)]] for i in range(processes)]
    else:
        size, extra = divmod(len(ids), processes)
        groups, at = [], 0
        for i in range(processes):
            n = size + (1 if i < extra else 0)
            groups.append(ids[at : at + n])
            at += n
    return [(("CUDA_VISIBLE_DEVICES", ",".join(g)),) for g in groups]


def _drop_ref(engine_ref: Any, ref_id: int) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.drop_ref(ref_id)


def _store_shared(shared_objects: Any, store: Callable[..., Any]) -> Any:
    """The shared objects put once in the cluster's object store (see ``_engines.bridge.Stored``);
    pickled first, in the caller (an unpicklable one fails here, naming it)."""
    _dump_shared(shared_objects, False)
    return (b"", [], store(shared_objects))


def _in_process_fn(fn: Any, role: str = "function") -> Any:
    from ._worker.functions import in_process_fn

    return in_process_fn(fn, role)


def _in_process(obj: Any) -> Any:
    from ._worker.serialize import InProcess

    return InProcess(obj)


def _to_shm(buffers: list[Any], local: bool) -> tuple[list[Any], Any]:
    """``buffers`` with the large ones moved to shared memory (``_shm``) when the workers run
    on this machine; and their segments (None when none moved)."""
    from . import _shm

    return _shm.share(buffers) if local else (list(buffers), None)


def _check_resources(resources: Any, backend: str) -> dict[str, float] | None:
    """``resources=``: what each worker holds on a cluster (Ray: its actor's resources, Dask:
    resources its Dask worker was started with), as ``{name: amount}``."""
    if resources is None:
        return None
    if backend == "local":
        raise ValueError(
            "resources= is for a Ray or Dask cluster (what each worker holds there); on this "
            "machine, processes= sets the CPUs and gpus= the GPUs"
        )
    if not isinstance(resources, Mapping) or not resources:
        raise TypeError(
            f"resources must be a non-empty dict such as {{'GPU': 1}}, not {resources!r}"
        )
    out: dict[str, float] = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"resources: a resource name must be a string, not {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"resources[{name!r}] must be a number, not {amount!r}")
        if not amount > 0:
            raise ValueError(f"resources[{name!r}] must be > 0, not {amount}")
        out[name] = float(amount)
    return out


def _dump_shared(shared_objects: Any, local: bool) -> Any:
    """Pickled once for all workers (large buffers out of band: on this machine, in shared
    memory, see ``_shm``); an unpicklable one fails here, in the caller, naming what it is.
    Returns (pickle, buffers, segments or None)."""
    from ._errors import SerializationError
    from ._worker.serialize import dumps_data

    try:
        data, oob = dumps_data(shared_objects)
        return (data, *_to_shm(oob, local))
    except Exception as exc:
        raise SerializationError(
            f"shared_objects cannot be pickled ({type(exc).__name__}: {exc}): pass data the "
            "workers can rebuild (arrays, dicts, paths), or open the resource in the task"
        ) from exc


class Pool:
    """A process pool with the ``multiprocessing.Pool`` API that works in notebooks.

    Workers are fresh interpreters started outside the calling process (never a fork of it);
    functions, lambdas, closures and classes defined in ``__main__`` (a notebook) are shipped by
    value. See the user guide for everything nbpool adds.

    Args:
        processes: number of workers (default ``os.cpu_count()``).
        initializer: called as ``initializer(*initargs)`` in each worker when it starts.
        initargs: arguments for ``initializer``.
        maxtasksperchild: items a worker runs before it is replaced by a fresh one.
        context: accepted for compatibility and ignored: nbpool always starts fresh workers.
            A ``fork`` context gets a ``RuntimeWarning`` saying so.
        serializer: ``"cloudpickle"`` (default) or ``"dill"``, used for the function and the
            initializer (and whatever they carry from the notebook). ``"dill"`` needs
            ``pip install 'nbpool[dill]'``.
        retries: how many times an item whose worker died (signal, segfault, ``os._exit``) is
            run again, on a fresh worker, before it fails with ``WorkerLostError``.
        task_timeout: seconds an item may run; past that its worker is killed and replaced and
            the item fails with ``TaskTimeoutError``. The job goes on.
        max_memory_per_worker: bytes (or ``"2GB"``, ``"512MiB"``). A worker above it is replaced
            once its current chunk is done; one above 1.5 times it is killed at once and its
            item fails with ``MemoryLimitError``. Checked every 0.5 s.
        progress: the live dashboard. ``"auto"`` (default): in a notebook, under the cell, for
            calls that run longer than 0.5 s; nothing elsewhere. ``True``: always, from the
            start (a tqdm bar on stderr outside notebooks). ``False``: never. Every method
            also takes ``progress=`` to override it for one call.
        ray_address: run the workers on a Ray cluster instead of this machine: ``"host:port"``
            of a Ray head (this process joins the cluster as a driver), ``"ray://host:port"``
            (Ray Client), ``"auto"`` (the head running on this machine) or ``"local"`` (a
            private Ray instance). Each worker is an actor that takes one CPU; ``processes``
            defaults to the cluster's free CPUs, and more than that is a ``ValueError``.
            Without it, ``NBPOOL_ADDRESS`` and then ``RAY_ADDRESS`` in the environment do the
            same, so a notebook moves to a cluster with no code change. Needs
            ``pip install 'nbpool[ray]'``.
        address: run the workers on a Dask cluster: ``"tcp://host:port"`` (or ``tls://``) of
            its scheduler, or a ``distributed.Client``. Each worker takes one Dask worker
            thread; ``processes`` defaults to the free threads, and more is a ``ValueError``.
            ``DASK_SCHEDULER_ADDRESS`` in the environment does the same. Needs
            ``pip install 'nbpool[dask]'``.
        backend: ``"ray"`` / ``"dask"`` runs on that engine even without an address (the
            connection ``ray.init`` made, the current ``distributed.Client``); ``"local"``
            runs on this machine whatever the environment says; ``None`` (default) decides
            from ``address``, ``ray_address`` and the environment (see ``docs/clusters.md``).
        n_jobs: mpire's name for ``processes`` (give one of them).
        pass_worker_id: ``True``: each task gets its worker's id (0 .. processes-1) before its
            item, ``fn(worker_id, item)``.
        shared_objects: any picklable object, pickled once and unpickled once per worker;
            each task gets it before its item (after the worker id). On this machine its
            large buffers are in shared memory that every worker maps copy-on-write.
        use_worker_state: ``True``: each task gets a dict its worker keeps across items and
            calls, after the worker id and the shared objects.
        worker_lifespan: mpire's name for ``maxtasksperchild`` (give one of them).
        cpu_ids: pin workers to CPUs (Linux): one entry for every worker, or one per worker;
            an entry is a CPU id or a list of them.
        worker_init: called once in each worker after ``initializer``, with what a task gets
            before its item (worker id, shared objects, worker state, as enabled).
        worker_exit: called when a worker exits on its own (``close()``, ``worker_lifespan``),
            with the same arguments; ``get_exit_results()`` returns what it returned.
        worker_init_timeout: seconds a worker may take to start (``initializer`` and
            ``worker_init``); past that it is stopped and its items fail with ``TimeoutError``.
        worker_exit_timeout: seconds ``worker_exit`` may run; past that the worker is stopped
            and ``get_exit_results()`` raises ``TimeoutError``.
        max_tasks_active: at most this many items in flight (sent to workers, results not
            back yet), all calls together; a lazy input is pulled no further ahead.
        enable_insights: ``True``: time each worker's start-up, waiting and working, and keep
            the 5 slowest items (``get_insights()``, ``print_insights()``).
        gpus: this machine only. Each worker's ``CUDA_VISIBLE_DEVICES``: a number of GPUs or
            a list of GPU ids, split between the workers.
        resources: clusters only. What each worker holds there, ``{name: amount}``, such as
            ``{"GPU": 1}``.
        start_method: this machine only. ``None`` (default): spawned until nbpool's fork
            server is up, forked from it after that; ``"spawn"``: always a fresh interpreter;
            ``"forkserver"``: always forked from the fork server; ``"threading"``: threads of
            this process, for I/O-bound work (nothing is pickled).

    Examples:
        Functions, lambdas and closures defined in a notebook (``__main__``) run in the
        workers; results come back in input order:

        >>> def square(x):
        ...     return x * x
        >>> with nbpool.Pool(2) as pool:
        ...     pool.map(square, range(10))
        ...     pool.map(lambda s: s.upper(), ["a", "b"])
        [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
        ['A', 'B']

        The same code runs on a cluster once the pool is given its address:

        ```python
        with nbpool.Pool(ray_address="10.0.0.5:6379") as pool:     # a Ray head
            squares = pool.map(square, range(10))
        with nbpool.Pool(address="tcp://10.0.0.5:8786") as pool:   # a Dask scheduler
            squares = pool.map(square, range(10))
        ```
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        serializer: str = "cloudpickle",
        retries: int = 0,
        task_timeout: float | None = None,
        max_memory_per_worker: int | str | None = None,
        progress: bool | str = "auto",
        ray_address: str | None = None,
        address: Any = None,
        backend: str | None = None,
        n_jobs: int | None = None,
        pass_worker_id: bool = False,
        shared_objects: Any = None,
        use_worker_state: bool = False,
        worker_lifespan: int | None = None,
        cpu_ids: Any = None,
        worker_init: Callable[..., object] | None = None,
        worker_exit: Callable[..., object] | None = None,
        worker_init_timeout: float | None = None,
        worker_exit_timeout: float | None = None,
        max_tasks_active: int | None = None,
        enable_insights: bool = False,
        gpus: int | list[int | str] | None = None,
        resources: dict[str, float] | None = None,
        start_method: str | None = None,
    ) -> None:
        self._state = _RUN  # set first: __del__ and close() read it even if __init__ fails
        self._engine: Engine | None = None
        if n_jobs is not None:
            if processes is not None:
                raise TypeError("give processes= or its alias n_jobs= (mpire's name), not both")
            if isinstance(n_jobs, bool) or not isinstance(n_jobs, int):
                raise TypeError(f"n_jobs must be an int or None, not {n_jobs!r}")
            processes = n_jobs
        worker_args = _worker_args(pass_worker_id, shared_objects, use_worker_state)
        if processes is not None and (
            isinstance(processes, bool) or not isinstance(processes, int)
        ):
            raise TypeError(f"processes must be an int or None, not {processes!r}")
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        _check_serializer(serializer)  # before any cluster is contacted
        self.backend, self.address = choose(backend, ray_address, address)
        need = _check_resources(resources, self.backend)
        if start_method is not None and start_method not in _START_METHODS:
            raise ValueError(
                f"start_method must be None or one of {', '.join(map(repr, _START_METHODS))}, "
                f"not {start_method!r}"
            )
        if start_method not in (None, "spawn") and self.backend != "local":
            raise ValueError(
                f"start_method={start_method!r} is for this machine's workers; on a "
                f"{self.backend.capitalize()} cluster leave it out"
            )
        new_worker: Callable[[int], WorkerHandle] | None = None
        # obj, key=None -> _engines.bridge.Stored: the cluster's object store, for shared objects
        # and put() objects
        self._store: Callable[..., Any] | None = None
        if self.backend == "ray":
            from ._engines import ray as _ray

            ray = _ray.connect(self.address)
            _ray.check_versions(ray, self.address)
            processes = _ray.check_processes(ray, processes, self.address, need)
            new_worker = functools.partial(_ray.RayWorker, ray=ray, resources=need)
            self._store = functools.partial(_ray.Stored, ray)
        elif self.backend == "dask":
            from ._engines import dask as _dask

            client, self.address = _dask.connect(self.address)
            _dask.check_versions(client, self.address)
            processes = _dask.check_processes(client, processes, self.address, need)
            new_worker = functools.partial(
                _dask.DaskWorker, client=client, address=self.address, resources=need
            )
            self._store = functools.partial(_dask.Stored, client)
        elif processes is None:
            processes = os.cpu_count() or 1
        if worker_lifespan is not None:
            if maxtasksperchild is not None:
                raise TypeError(
                    "give maxtasksperchild= or its alias worker_lifespan= (mpire's name), not both"
                )
            if (
                isinstance(worker_lifespan, bool)
                or not isinstance(worker_lifespan, int)
                or worker_lifespan <= 0
            ):
                raise ValueError(
                    f"worker_lifespan must be a positive int (items) or None, not "
                    f"{worker_lifespan!r}"
                )
            maxtasksperchild = worker_lifespan
        if maxtasksperchild is not None and (
            isinstance(maxtasksperchild, bool)
            or not isinstance(maxtasksperchild, int)
            or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        pins = _cpu_pins(cpu_ids, processes, self.backend == "local")
        if gpus is not None and self.backend != "local":
            raise ValueError(
                f"gpus= hands out this machine's GPUs; on a {self.backend.capitalize()} cluster "
                "the cluster places work on its GPUs: leave gpus out"
            )
        slot_env = _gpu_slices(gpus, processes)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        for name, hook in (("worker_init", worker_init), ("worker_exit", worker_exit)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be a callable or None, not {hook!r}")
        hook_timeouts = (
            check_seconds("worker_init_timeout", worker_init_timeout),
            check_seconds("worker_exit_timeout", worker_exit_timeout),
        )
        if max_tasks_active is not None:
            check_int("max_tasks_active", max_tasks_active, minimum=1)
        if not isinstance(enable_insights, bool):
            raise TypeError(f"enable_insights must be True or False, not {enable_insights!r}")
        self._retries = check_int("retries", retries, minimum=0)
        self._task_timeout = check_seconds("task_timeout", task_timeout)
        self._progress = check_progress(progress)
        max_memory = parse_bytes("max_memory_per_worker", max_memory_per_worker)
        method = context_method(context)
        if method == "fork":
            warnings.warn(
                "nbpool never forks the calling process (forking a Jupyter kernel, which runs "
                "threads, can deadlock the child). The 'fork' context is ignored: workers are "
                "fresh interpreters and notebook code is shipped to them by value.",
                RuntimeWarning,
                stacklevel=2,
            )
        self._processes = processes
        self._serializer = serializer
        self._threads = threads = start_method == "threading"
        if threads:
            for name, value in (
                ("max_memory_per_worker", max_memory),
                ("cpu_ids", pins),
                ("gpus", slot_env),
            ):
                if value is not None:
                    raise ValueError(
                        f"{name}= needs worker processes; start_method='threading' runs the "
                        "workers as threads of this process: leave one of them out"
                    )
        pack_fn = _in_process_fn if threads else functools.partial(dumps_fn, serializer=serializer)
        init_payload = None
        if initializer is not None:
            # Without an initializer the stdlib never looks at initargs; neither do we.
            try:
                initargs = tuple(initargs)
            except TypeError:
                raise TypeError(
                    f"initargs must be an iterable of arguments for initializer, not {initargs!r}"
                ) from None
            init_payload = pack_fn(initializer, role="initializer")
            if not threads:
                check_initargs_pickle(initargs)
        else:
            initargs = ()
        init_output = capture_target()  # the initializer's output goes to this cell
        lifeline = os.pipe()
        started: list[Worker] = []
        try:
            if threads:
                from ._engines.threads import ThreadWorker

                new_worker = ThreadWorker
            elif new_worker is None:
                how = start_method or "auto"
                started.extend(Worker(i, lifeline[0], how) for i in range(processes))
                new_worker = functools.partial(Worker, lifeline=lifeline[0], start_method=how)
            _import_the_rest()
            self._engine = Engine(
                processes,
                init_payload,
                initargs,
                maxtasksperchild,
                max_memory=max_memory,
                init_output=init_output,
                lifeline=lifeline,
                started=started,
                new_worker=new_worker,
                worker_args=worker_args,
                cpu_pins=pins,
                slot_env=slot_env,
                hooks=(
                    pack_fn(worker_init, role="worker_init") if worker_init else None,
                    pack_fn(worker_exit, role="worker_exit") if worker_exit else None,
                ),
                hook_timeouts=hook_timeouts,
                shared=(
                    None
                    if "shared" not in worker_args
                    else (_in_process(shared_objects), [], None)
                    if threads
                    else _store_shared(shared_objects, self._store)
                    if self._store is not None
                    else _dump_shared(shared_objects, self.backend == "local")
                ),
                in_process=threads,
                max_active=max_tasks_active,
                insights=enable_insights,
            )
        except BaseException:
            for w in started:  # don't leave early-started workers behind
                w.kill()
                w.reap()
            for fd in lifeline:
                os.close(fd)
            raise
        # Terminate the workers when the pool is garbage collected, as the stdlib does. The
        # finalizer holds the engine, never the pool, so it does not keep the pool alive.
        self._finalizer = weakref.finalize(self, self._engine.terminate)
        if max_memory is not None and self.backend == "local":
            try:
                self._check_idle_memory(max_memory, max_memory_per_worker)
            except BaseException:  # an interrupt during the wait too: no pool, no workers
                self.terminate()
                raise

    def _check_idle_memory(self, limit: int, spec: object) -> None:
        """Refuse a memory limit that an idle worker is already over: every worker would be
        replaced as soon as it started, for ever. Waits for the first worker to be ready (its
        initializer included), up to IDLE_CHECK_WAIT_S."""
        engine = self._engine
        assert engine is not None
        if not engine.first_ready.wait(IDLE_CHECK_WAIT_S):
            return  # not ready yet (a slow initializer): the dispatcher's guard still holds
        try:
            import psutil

            rss = psutil.Process(engine.first_ready_pid).memory_info().rss
        except Exception:
            return
        if rss < limit:
            return
        self.terminate()
        what = " and its initializer" if engine._initializer is not None else ""
        raise ValueError(
            f"max_memory_per_worker={spec!r} ({limit / 1e6:.1f} MB) is below what a worker uses "
            f"when idle: {rss / 1e6:.1f} MB measured after its start-up{what}. Every worker "
            f"would be replaced as soon as it started. Give it room for the work too, e.g. "
            f"max_memory_per_worker='{max(2 * rss, rss + 200e6) / 1e6:.0f}MB'."
        )

    # ------------------------------------------------------------------ state

    def _check_running(self) -> None:
        if self._state != _RUN:
            raise PoolClosedError("Pool not running")

    def close(self) -> None:
        """No more work may be submitted; workers exit once the submitted work is done.

        Examples:
            >>> pool = nbpool.Pool(2)
            >>> pending = pool.map_async(abs, [-1, -2])
            >>> pool.close()        # the submitted work still runs
            >>> pool.join()         # wait for the workers to exit
            >>> pending.get()
            [1, 2]
        """
        if self._state == _RUN:
            self._state = _CLOSE
            assert self._engine is not None
            self._engine.close()

    def terminate(self) -> None:
        """Stop the workers now; results not yet ready fail with ``PoolClosedError``.

        Returns within a few seconds whatever the pool is doing: if its dispatcher does not
        stop in time (it is stuck in your code, say an input iterator that blocks), the workers
        are killed from here and every waiting result fails. Leaving a ``with nbpool.Pool()``
        block calls it, as with the stdlib.

        Examples:
            >>> import time
            >>> pool = nbpool.Pool(2)
            >>> pending = pool.apply_async(time.sleep, (60,))
            >>> pool.terminate()    # returns at once: the sleeping worker is killed
            >>> pending.get()
            Traceback (most recent call last):
            ...
            nbpool.PoolClosedError: the pool was terminated before this result was ready
        """
        self._state = _TERMINATE
        engine = self._engine
        if engine is not None:
            engine.terminate()
            engine.join(TERMINATE_WAIT_S)
            if engine.is_alive():
                engine.force_stop()
            engine.events.join(CALLBACK_WAIT_S)

    def join(self) -> None:
        """Wait for the workers to exit; call ``close()`` or ``terminate()`` first.

        A running pool raises ``ValueError("Pool is still running")``, as the stdlib does.

        Examples:
            >>> pool = nbpool.Pool(2)
            >>> pool.map(abs, [-3])
            [3]
            >>> pool.close()
            >>> pool.join()
        """
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        if self._engine is not None:
            self._engine.join()
            self._engine.events.join(CALLBACK_WAIT_S)

    def map_reduce(
        self, func, iterable, reducer, initial=_NO_INITIAL, chunksize=None, *, progress=None
    ):
        """``functools.reduce(reducer, map(func, iterable)[, initial])``, in parallel: each
        chunk is folded inside its worker (one value comes back per chunk, not a list), then
        the partial results are combined here, left to right, starting from ``initial`` if
        given. ``reducer`` must be associative (``operator.add``, ``max``, ``min``, a merge of
        dicts): chunks are folded separately. An empty input returns ``initial``, and without
        one raises ``TypeError`` as ``functools.reduce`` does. The dashboard counts chunks.

        Examples:
            >>> import operator
            >>> with nbpool.Pool(2) as pool:
            ...     pool.map_reduce(lambda x: x * x, range(1_000), operator.add)  # sum of squares
            ...     pool.map_reduce(len, ["a", "bcd", "ef"], max, initial=0)      # longest string
            332833500
            3
        """
        __tracebackhide__ = True
        self._check_running()
        if not callable(reducer):
            raise TypeError(f"reducer must be callable, not {type(reducer).__name__}")
        check_chunksize(chunksize)
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        if not items:
            if initial is _NO_INITIAL:
                raise TypeError("map_reduce() of an empty iterable with no initial value")
            return initial
        from ._worker.fold import fold

        size = chunksize or max(1, -(-len(items) // (4 * self._processes)))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        partials = self.map(functools.partial(fold, func, reducer), chunks, 1, progress=progress)
        if initial is _NO_INITIAL:
            return functools.reduce(reducer, partials)
        return functools.reduce(reducer, partials, initial)

    def submit(self, fn, /, *args, **kwargs):
        """``fn(*args, **kwargs)`` in a worker, as a ``concurrent.futures.Future`` (Ray's and
        ``concurrent.futures``' way): it works with ``concurrent.futures.wait`` and
        ``as_completed``, and with ``nbpool.wait``.

        The future is running from the start (the pool takes the call at once), so its
        ``cancel()`` returns False, as a ``ProcessPoolExecutor``'s does for a call a worker has
        taken; to stop the call itself, use ``pool.apply_async(...).cancel()``.

        Examples:
            >>> import concurrent.futures
            >>> with nbpool.Pool(2) as pool:
            ...     futures = [pool.submit(pow, 2, n) for n in range(4)]
            ...     sorted(f.result() for f in concurrent.futures.as_completed(futures))
            [1, 2, 4, 8]
        """
        import concurrent.futures

        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        self.apply_async(
            fn, args, kwargs, callback=future.set_result, error_callback=future.set_exception
        )
        return future

    def get_exit_results(self) -> list[Any]:
        """What the ``worker_exit`` hooks returned, one entry per worker that exited on its own
        (at ``close()``/``join()``, or replaced after ``worker_lifespan``), in the order they
        exited. Call it after ``join()``. If a hook raised (or ran past
        ``worker_exit_timeout``), that exception is raised here.

        Examples:
            >>> def count(state, item):
            ...     state["n"] = state.get("n", 0) + 1
            >>> pool = nbpool.Pool(2, use_worker_state=True, worker_exit=lambda state: state)
            >>> _ = pool.map(count, range(100))
            >>> pool.close()
            >>> pool.join()
            >>> sum(state["n"] for state in pool.get_exit_results())   # items, all workers
            100
        """
        if self._state == _RUN:
            raise ValueError("get_exit_results() is for after close() and join()")
        engine = self._engine
        if engine is None:
            return []
        if engine.exit_errors:
            raise engine.exit_errors[0]
        return list(engine.exit_results)

    def put(self, obj: Any) -> Any:
        """Store ``obj`` once and get a reference to pass instead of it (Ray's ``ray.put``):
        an ``ObjectRef`` given as an argument, or inside one, to any call of this pool reaches
        the task as ``obj``. Each worker gets its pickle once, with the first chunk that needs
        it, and unpickles it once: every item it runs gets the same object. The pickle is kept
        until the last reference is dropped. Pickled now: an unpicklable object fails here.

        Examples:
            >>> table = {n: n * n for n in range(10_000)}   # stands for a large object
            >>> with nbpool.Pool(2) as pool:
            ...     ref = pool.put(table)                   # sent to each worker once,
            ...     pool.starmap(lambda key, t: t[key], [(3, ref), (4, ref)])   # not per item
            [9, 16]
        """
        self._check_running()
        if self._threads:  # threads share this process's memory: the object is its reference
            return obj
        from ._errors import SerializationError
        from ._worker.refs import ObjectRef
        from ._worker.serialize import dumps_data, short_repr

        try:
            data, oob = dumps_data(obj)
        except Exception as exc:
            raise SerializationError(
                f"put() got {short_repr(obj)} (a {type(obj).__name__}), which cannot be pickled: "
                f"{exc}"
            ) from exc
        ref = ObjectRef(len(data) + sum(memoryview(b).nbytes for b in oob))
        engine = self._engine
        assert engine is not None
        if self._store is not None:  # once in the cluster's store (see _engines.bridge.Stored)
            engine.add_ref(ref.id, (b"", [], self._store(obj, ref.id)))
        else:
            engine.add_ref(ref.id, (data, *_to_shm(oob, self.backend == "local")))
        # (the engine weakly: a reference kept after the pool ended must not keep the pool's
        # engine alive)
        weakref.finalize(ref, _drop_ref, weakref.ref(engine), ref.id)
        return ref

    def get_insights(self) -> dict[str, Any]:
        """Where the workers' time went (``enable_insights=True``), as data, at any time (also
        after ``join()``): ``workers`` (one dict per worker slot: ``id``, ``pid``, ``host``,
        ``workers_started``, ``items``, ``start_up_s``, ``waiting_s``, ``working_s``),
        ``total`` (the same summed), ``ratios`` (each time's share of all of them),
        ``elapsed_s`` and ``slowest`` (the 5 slowest items: ``seconds``, ``item`` (its index),
        ``worker``, ``call``, ``args`` (a short repr)). Start-up includes the initializer and
        ``worker_init``; working is the chunks' time in the worker; waiting is the rest.

        Examples:
            >>> import time
            >>> with nbpool.Pool(2, enable_insights=True) as pool:
            ...     _ = pool.map(time.sleep, [0.01, 0.2, 0.01])
            ...     slowest = pool.get_insights()["slowest"][0]
            >>> slowest["item"], slowest["args"]        # its index and its argument
            (1, '0.2')
        """
        insights = self._insights()
        engine = self._engine
        assert engine is not None
        return insights.report(list(engine._slots))

    def print_insights(self) -> None:
        """Print ``get_insights()`` as a table: one row per worker slot, the time shares,
        the slowest items with their arguments.

        Examples:
            >>> with nbpool.Pool(2, enable_insights=True) as pool:
            ...     _ = pool.map(abs, range(100))
            ...     pool.print_insights()
            nbpool insights: 2 worker slots, 100 items, ...
        """
        from ._driver.insights import format_report

        print(format_report(self.get_insights()))

    def _insights(self) -> Any:
        engine = self._engine
        insights = engine.insights if engine is not None else None
        if insights is None:
            raise ValueError(
                "insights are off for this pool: create it with Pool(..., enable_insights=True)"
            )
        return insights

    def dashboard(self) -> None:
        """Show a live dashboard of the whole pool (every worker, every call) under the cell.

        It updates until the pool is closed or terminated (``%pool`` shows the session pool's).
        Only in a Jupyter notebook: elsewhere it raises ``RuntimeError``; use ``progress=True``
        for a text bar per call.

        Examples:
            In a notebook cell:

            ```python
            pool = nbpool.Pool(4)
            pool.dashboard()                          # stays under this cell
            pool.map(work, range(30), progress=False)   # counted in the pool dashboard only
            ```
        """
        self._check_running()
        target = notebook_target()
        if target is None:
            raise RuntimeError(
                "Pool.dashboard() needs a Jupyter notebook; outside one, pass progress=True to "
                "a call for a text progress bar"
            )
        p = JobProgress(True, "widget", target, f"pool · {self._processes} workers")
        assert self._engine is not None
        self._engine.watch(p)
        # Wait until it is on screen: the cell must not end first (a saved notebook would
        # miss it). A frontend-less kernel renders it in milliseconds.
        p.displayed.wait(FINAL_RENDER_WAIT_S)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        state = {_RUN: "running", _CLOSE: "closed", _TERMINATE: "terminated"}[self._state]
        where = "" if self.backend == "local" else f" {self.backend}={self.address or 'connected'}"
        return f"<nbpool.Pool state={state} processes={self._processes}{where}>"

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    # The stdlib pool's private ``_pool`` (its worker processes) and ``_repopulate_pool()``:
    # private there too, but code written against ``multiprocessing.Pool`` (CPython's own Pool
    # tests among it) reads them, so they answer the same questions here.

    @property
    def _pool(self) -> list[_WorkerView]:
        """One entry per worker slot with ``pid`` (None while the slot is between workers)
        and ``is_alive()``, like the stdlib's list of ``Process`` objects."""
        engine = self._engine
        slots = list(engine._slots) if engine is not None else []  # a copy: the dispatcher
        return [_WorkerView(w) for w in slots]  # replaces entries; it never resizes the list

    def _repopulate_pool(self) -> None:
        """The stdlib starts workers here for those that exited; nbpool's dispatcher already
        replaces a worker as soon as it exits (lifespan, crash, timeout), so nothing is left to
        do."""

    # ------------------------------------------------------------------ submission

    def _submit(
        self, fn: Any, kind: str, source: Any, sink: Any, chunksize: int | None, progress: Any
    ) -> None:
        self._check_running()
        if not callable(fn):
            raise TypeError(f"func must be callable, not {type(fn).__name__}")
        mode = self._progress if progress is None else check_progress(progress)
        # pre-flight: an unpicklable function fails here, in the caller (threads of this
        # process get the function itself)
        payload = _in_process_fn(fn) if self._threads else dumps_fn(fn, self._serializer)
        job = Job(next(_job_ids), payload, kind, source, sink, chunksize)
        job.retries, job.task_timeout = self._retries, self._task_timeout
        job.output = capture_target()  # the caller's streams and cell, now (see _driver.output)
        job.cell = job.output.cell
        job.log_levels = caller_log_levels()
        view = wants_view(mode, job.cell is not None)
        if view is not None:
            name = getattr(fn, "__name__", None) or type(fn).__name__
            title = describe_call(kind, name, source.length)
            job.progress = sink._progress = JobProgress(mode, view, job.cell, title)
        engine = self._engine
        assert engine is not None
        reason = KeyboardInterrupt(
            "interrupted: the job was cancelled (queued items dropped, running ones stopped); "
            "results already delivered stay available"
        )
        # The job's id, never the job: a result must not keep the job's payload alive.
        sink._canceller = functools.partial(engine.cancel, job.id, reason)
        sink._cancel_job = functools.partial(engine.cancel, job.id)
        sink._events, sink._cell = engine.events, job.cell
        sink._conclude = functools.partial(engine.conclude, job.id)
        if kind == "map" and isinstance(sink, IMapIterator):
            # An iterator the caller dropped (``break``, or garbage) cancels its job: nobody
            # can read its results, so its queued items are dropped and running ones stopped.
            job.hold_weakly(functools.partial(engine.cancel, job.id, _DROPPED, "dropped"))
        engine.submit(job)

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        progress: bool | str | None = None,
    ) -> ApplyResult:
        """Run ``func(*args, **kwds)`` in a worker; return an ``ApplyResult`` at once.

        ``callback`` gets the value, ``error_callback`` the exception, before ``get()``
        returns. They run one at a time in a thread of the pool's own, so a callback may call
        the pool. ``progress`` overrides the pool's dashboard setting for this call.

        Examples:
            >>> with nbpool.Pool(2) as pool:
            ...     result = pool.apply_async(pow, (2, 10))
            ...     result.get(timeout=10)
            1024
        """
        self._check_running()
        result = ApplyResult(callback, error_callback)
        item = (tuple(args), dict(kwds or {}))
        self._submit(func, "apply", SequenceSource([item]), result, 1, progress)
        return result

    def apply(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        progress: bool | str | None = None,
    ) -> Any:
        """``func(*args, **kwds)``, run in a worker: its value, or the exception it raised
        (with the worker's traceback as ``__cause__``).

        Examples:
            >>> with nbpool.Pool(2) as pool:
            ...     pool.apply(divmod, (17, 5))
            (3, 2)
        """
        __tracebackhide__ = True
        return _wait(self.apply_async(func, args, kwds, progress=progress))

    def _map_async(
        self, func, iterable, kind, chunksize, callback=None, error_callback=None, progress=None
    ) -> MapResult:
        self._check_running()
        check_chunksize(chunksize)
        if progress is not None:  # checked here too: an empty input submits nothing
            check_progress(progress)
        if not isinstance(iterable, (list, tuple, range)):
            # As the stdlib does, take it all now: the iterable's own errors surface here, and
            # a dict maps over its keys, a set over its members.
            iterable = list(iterable)
        source = SequenceSource(iterable)
        result = MapResult(len(iterable), callback, error_callback)
        if len(iterable):
            self._submit(func, kind, source, result, chunksize, progress)
        return result

    def map_async(
        self, func, iterable, chunksize=None, callback=None, error_callback=None, *, progress=None
    ):
        """``map`` without waiting: a ``MapResult`` whose ``get()`` is the list of results.

        ``callback`` gets that list, ``error_callback`` the first failure's exception.

        Examples:
            >>> with nbpool.Pool(2) as pool:
            ...     pending = pool.map_async(abs, [-1, -2, -3])
            ...     pending.get(timeout=10)
            [1, 2, 3]
        """
        return self._map_async(func, iterable, "map", chunksize, callback, error_callback, progress)

    def map(self, func, iterable, chunksize=None, *, progress=None):
        """``[func(x) for x in iterable]``, run in the workers, in input order.

        An iterable without ``len()`` is read into a list first (use ``imap`` for a
        generator). Items travel in chunks: ``chunksize=None`` sizes them from measurements
        (a chunk takes about 0.2 s), a given ``chunksize`` is used as it is. If an item
        raises, ``map`` raises that exception as soon as it comes back, with the worker's
        traceback as its ``__cause__``; the other items keep running.

        Examples:
            >>> with nbpool.Pool(2) as pool:
            ...     pool.map(str.upper, ["a", "b", "c"])
            ['A', 'B', 'C']
        """
        __tracebackhide__ = True
        return _wait(self._map_async(func, iterable, "map", chunksize, progress=progress))

    def starmap_async(
        self, func, iterable, chunksize=None, callback=None, error_callback=None, *, progress=None
    ):
        """``starmap`` without waiting: a ``MapResult`` whose ``get()`` is the list of results.

        Examples:
            >>> with nbpool.Pool(2) as pool:
            ...     pool.starmap_async(pow, [(2, 3), (3, 2)]).get(timeout=10)
            [8, 9]
        """
        return self._map_async(
            func, iterable, "star", chunksize, callback, error_callback, progress
        )

    def starmap(self, func, iterable, chunksize=None, *, progress=None):
        """Like ``map``, but each item is a tuple of arguments: ``func(*item)``.

        Examples:
            >>> with nbpool.Pool(2) as pool:
            ...     pool.starmap(pow, [(2, 3), (3, 2), (10, 0)])
            [8, 9, 1]
        """
        __tracebackhide__ = True
        return _wait(self._map_async(func, iterable, "star", chunksize, progress=progress))

    def _imap(self, func, iterable, chunksize, result, progress, iterable_len=None) -> Any:
        self._check_running()
        check_chunksize(chunksize)
        if iterable_len is not None:
            if isinstance(iterable_len, bool) or not isinstance(iterable_len, int):
                raise TypeError(f"iterable_len must be an int or None, not {iterable_len!r}")
            if iterable_len < 0:
                raise ValueError(f"iterable_len must be 0 or more, not {iterable_len}")
        if isinstance(iterable, (list, tuple, range)):
            if iterable_len is not None and iterable_len < len(iterable):
                iterable = iterable[:iterable_len]
            source: Any = SequenceSource(iterable)
        else:
            source = IteratorSource(iterable, iterable_len)
        self._submit(func, "map", source, result, chunksize, progress)
        return result

    def imap(
        self, func, iterable, chunksize=None, *, iterable_len=None, progress=None
    ) -> IMapIterator:
        """An iterator over ``func(x)`` for each ``x`` of ``iterable``, in input order, each
        result as soon as it and those before it are in.

        A generator is consumed lazily, only as workers have room for its items, so an
        endless or huge one does not fill memory. ``iterable_len=N`` takes at most ``N``
        items (and gives the dashboard a total). A failed item raises its exception at its
        position; iterating further goes on with the next item. Dropping the iterator before
        its end (a ``break`` out of ``for y in pool.imap(...)``) cancels the rest of the job.

        Examples:
            >>> def numbers():
            ...     yield from range(5)
            >>> with nbpool.Pool(2) as pool:
            ...     for y in pool.imap(lambda x: 10 * x, numbers()):
            ...         print(y, end=" ")
            0 10 20 30 40
        """
        return self._imap(func, iterable, chunksize, IMapIterator(), progress, iterable_len)

    def imap_unordered(
        self, func, iterable, chunksize=None, *, iterable_len=None, progress=None
    ) -> IMapUnorderedIterator:
        """Like ``imap``, but yields each result as soon as it is in: completion order.

        Examples:
            >>> with nbpool.Pool(2) as pool:
            ...     done = set()
            ...     for y in pool.imap_unordered(abs, [-3, -1, -2]):   # in any order
            ...         done.add(y)
            >>> sorted(done)
            [1, 2, 3]
        """
        return self._imap(
            func, iterable, chunksize, IMapUnorderedIterator(), progress, iterable_len
        )

    def map_unordered(self, func, iterable, chunksize=None, *, iterable_len=None, progress=None):
        """``map`` whose list is in completion order (mpire's ``map_unordered``): the results
        of ``imap_unordered``, collected.

        Examples:
            >>> with nbpool.Pool(2) as pool:
            ...     sorted(pool.map_unordered(abs, [-3, -1, -2]))   # any order: sorted here
            [1, 2, 3]
        """
        __tracebackhide__ = True
        return list(
            self.imap_unordered(
                func, iterable, chunksize, iterable_len=iterable_len, progress=progress
            )
        )

    def __del__(self) -> None:
        # As the stdlib: a running pool that is garbage collected warns (its finalizer then
        # terminates the workers). Never raise from here, least of all at interpreter exit.
        if getattr(self, "_state", None) != _RUN or getattr(self, "_engine", None) is None:
            return
        try:
            warnings.warn(
                # the stdlib's words first: code that filters this warning by its text matches
                f"unclosed running multiprocessing pool {self!r}",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
        except Exception:
            pass
