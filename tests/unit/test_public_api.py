"""The public surface is explicit and pinned; ``import nbpool`` stays light."""

from __future__ import annotations

import pytest
from proc_util import run_python

import nbpool

EXPECTED = {
    "ApplyResult",
    "AsyncResult",
    "BackendUnavailableError",
    "CancelledError",
    "ClusterConnectionError",
    "IMapIterator",
    "IMapUnorderedIterator",
    "MapResult",
    "MemoryLimitError",
    "NbpoolError",
    "ObjectRef",
    "Pool",
    "PoolClosedError",
    "RemoteTraceback",
    "SerializationError",
    "TaskExitError",
    "TaskTimeoutError",
    "TimeoutError",
    "WorkerInfo",
    "WorkerLostError",
    "__version__",
    "current_worker",
    "wait",
}


@pytest.mark.smoke
def test_all_is_pinned():
    assert set(nbpool.__all__) == EXPECTED
    for name in nbpool.__all__:
        assert hasattr(nbpool, name), name


@pytest.mark.smoke
def test_import_is_light():
    code = (
        "import sys, nbpool\n"
        "heavy = ['IPython', 'ipywidgets', 'anywidget', 'ray', 'dask', 'distributed', 'numpy',"
        " 'psutil', 'dill', 'ipykernel', 'tqdm']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    assert run_python(code) == "[]"


def test_the_local_engine_never_imports_a_cluster_engine():
    code = (
        "import sys, nbpool\n"
        "with nbpool.Pool(2) as pool:\n"
        "    assert pool.map(abs, [-1]) == [1]\n"
        "cluster = ['ray', 'dask', 'distributed', 'nbpool._engines.ray',"
        " 'nbpool._engines.dask', 'nbpool._engines.bridge',"
        " 'multiprocessing.pool']\n"  # (imported only for a worker's exception: ~10 ms)
        "print(sorted(m for m in cluster if m in sys.modules))\n"
    )
    assert run_python(code) == "[]"


def test_error_tree():
    import multiprocessing
    import pickle

    assert issubclass(nbpool.PoolClosedError, ValueError)
    assert issubclass(nbpool.TimeoutError, multiprocessing.TimeoutError)
    assert issubclass(nbpool.WorkerLostError, RuntimeError)
    assert issubclass(nbpool.SerializationError, pickle.PicklingError)
    assert issubclass(nbpool.BackendUnavailableError, ImportError)
    assert issubclass(nbpool.ClusterConnectionError, ConnectionError)
    for cls in (nbpool.PoolClosedError, nbpool.WorkerLostError, nbpool.SerializationError):
        assert issubclass(cls, nbpool.NbpoolError)
    # the stdlib's own classes where code written for it checks them
    import multiprocessing.pool

    from nbpool._mp_errors import UnpicklableResultError

    assert nbpool.RemoteTraceback is multiprocessing.pool.RemoteTraceback
    assert issubclass(UnpicklableResultError, multiprocessing.pool.MaybeEncodingError)
    assert issubclass(UnpicklableResultError, nbpool.SerializationError)
    back = pickle.loads(pickle.dumps(UnpicklableResultError("item 3", "TypeError()", "<lock>")))
    assert (str(back), back.exc, back.value) == ("item 3", "TypeError()", "<lock>")
    err = nbpool.WorkerLostError("x", worker_id=1, pid=2, exitcode=-9, index=4, host="n2")
    back = pickle.loads(pickle.dumps(err))
    assert (back.worker_id, back.pid, back.exitcode, back.index, back.host) == (1, 2, -9, 4, "n2")


@pytest.mark.smoke
def test_worker_imports_stay_small():
    """A worker imports nbpool._engines.local_main only: no multiprocessing, no caller-side
    machinery."""
    code = (
        "import sys, nbpool._engines.local_main\n"
        "print(sorted(m for m in ['multiprocessing', 'nbpool._pool', 'nbpool._driver.dispatcher',"
        " 'subprocess', 'cloudpickle', 'dill'] if m in sys.modules))\n"
    )
    assert run_python(code) == "[]"


def test_map_over_dict_set_and_deque():
    import collections

    with nbpool.Pool(1) as p:
        assert p.map(abs, {-1: "a", -2: "b"}) == [1, 2]
        assert sorted(p.map(abs, {-3, 4})) == [3, 4]
        assert p.map(abs, collections.deque([-5, 6])) == [5, 6]
        assert list(p.imap(abs, collections.deque([-7]))) == [7]
