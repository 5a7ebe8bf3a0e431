"""Shared fixtures. Every test must leave no child process and no extra thread behind."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import time
from typing import Any

import psutil
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# A test run started in the background by a non-interactive shell (`make test &`) has SIGINT
# ignored, and so would every process the tests start (an ignored signal stays ignored across
# exec, and Python then installs no KeyboardInterrupt handler): the interrupt tests, where
# SIGINT stands for Jupyter's stop button, would fail for that alone.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Processes of a test cluster (a Ray head and what it starts): they come and go on their own
# (Ray keeps idle workers), so they are not leftovers of a test. Whether a pool left an actor
# behind is checked by the cluster tests themselves.
CLUSTER_PIDS: list[object] = []  # objects with .descendants() -> set[int]


def pytest_addoption(parser):
    parser.addoption(
        "--engines",
        default="local,forkserver",
        help="engines the parity tests run on, comma-separated: local, forkserver (the local "
        "engine with start_method='forkserver'), ray, dask (default: local,forkserver). "
        "tests/ray and tests/dask run only when their engine is among them.",
    )


def _engines(config) -> list[str]:
    return [e.strip() for e in config.getoption("--engines").split(",") if e.strip()]


def pytest_ignore_collect(collection_path, config):
    # The core run never imports Ray or Dask: their own tests are collected only when asked for.
    if collection_path.name in ("ray", "dask") and collection_path.parent.name == "tests":
        return collection_path.name not in _engines(config)
    return None


def pytest_generate_tests(metafunc):
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", _engines(metafunc.config), indirect=True)


@pytest.fixture(scope="session")
def ray_head():
    """A real Ray head on 127.0.0.1 (2 CPUs) and this process connected to it as a driver."""
    from ray_head import start_ray_head, stop_ray_head

    head = start_ray_head(num_cpus=2)
    CLUSTER_PIDS.append(head)
    try:
        import ray

        ray.init(address=head.address, log_to_driver=False, configure_logging=False)
        yield head
    finally:
        try:
            import ray

            ray.shutdown()
        finally:
            stop_ray_head(head)
            CLUSTER_PIDS.remove(head)


@pytest.fixture(scope="session")
def dask_cluster():
    """A real Dask scheduler and two one-thread workers on 127.0.0.1, and nbpool's Client for
    it (made here: its threads live as long as the session)."""
    from dask_cluster import start_dask_cluster, stop_dask_cluster

    cluster = start_dask_cluster(workers=2)
    CLUSTER_PIDS.append(cluster)
    try:
        from nbpool._engines import dask as _dask

        _dask.connect(cluster.address)
        yield cluster
    finally:
        try:
            from nbpool._engines import dask as _dask

            for client in _dask._CLIENTS.values():
                client.close(timeout=10)
            _dask._CLIENTS.clear()
        finally:
            stop_dask_cluster(cluster)
            CLUSTER_PIDS.remove(cluster)


_CLUSTER_FIXTURES = {"ray": "ray_head", "dask": "dask_cluster"}


@pytest.fixture
def engine(request):
    """Keyword arguments that put a Pool on the engine under test."""
    if request.param == "ray":
        head = request.getfixturevalue("ray_head")
        return {"ray_address": head.address}
    if request.param == "dask":
        return {"address": request.getfixturevalue("dask_cluster").address}
    if request.param == "forkserver":
        return {"start_method": "forkserver"}
    # spawned: the default forks once the fork server is up (at a moment that depends on the
    # tests before), and the forkserver engine covers forked workers
    return {"start_method": "spawn"}


def on_cluster(engine: dict) -> bool:
    """Whether the ``engine`` fixture's pool runs on a cluster (Ray, Dask), not this machine."""
    return "address" in engine or "ray_address" in engine


def _children() -> set[int]:
    """Child processes, minus the stdlib's own long-lived helper (started by the parity tests'
    spawn pools on first use and kept for the life of the test process, by design) and a test
    cluster's processes."""
    pids = set()
    cluster: set[int] = set()
    for c in CLUSTER_PIDS:
        cluster |= c.descendants()  # type: ignore[attr-defined]
    for p in psutil.Process().children(recursive=True):
        if p.pid in cluster:
            continue
        try:
            cmdline = " ".join(p.cmdline())
            # the stdlib's resource tracker, and nbpool's fork server (kept for the life of
            # the test process, as in a kernel: its forked workers are still checked)
            if "resource_tracker" in cmdline or "nbpool._engines.forkserver" in cmdline:
                continue
        except psutil.Error:
            continue
        pids.add(p.pid)
    return pids


@pytest.fixture(autouse=True)
def no_leftovers(request):
    """Fail a test that leaves a child process or a thread behind (after a short grace)."""
    callspec = getattr(request.node, "callspec", None)
    fixture = _CLUSTER_FIXTURES.get(callspec.params.get("engine")) if callspec else None
    if fixture is not None:  # before the snapshot: the cluster client's threads are its own
        request.getfixturevalue(fixture)
    threads_before = set(threading.enumerate())
    children_before = _children()
    yield
    if fixture == "ray_head" or "ray_head" in request.fixturenames:
        _no_actor_left_on_the_ray_head()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra_children = _children() - children_before
        extra_threads = [
            t for t in threading.enumerate() if t not in threads_before and t.is_alive()
        ]
        if not extra_children and not extra_threads:
            return
        time.sleep(0.05)
    for pid in extra_children:  # don't let one leak cascade into the next tests
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    pytest.fail(
        f"test left behind processes {sorted(extra_children)} "
        f"and threads {[t.name for t in extra_threads]}"
    )


def _no_actor_left_on_the_ray_head(timeout: float = 10.0) -> None:
    """Fail a test after which the session's Ray head still runs an nbpool actor, or has
    CPUs that nbpool counts as held: the next tests would find fewer free (and fail far from
    the cause). What is left is stopped first, so that one leak fails one test."""
    import ray
    from proc_util import wait_until
    from ray._private import state

    from nbpool._engines import ray as _ray

    def left() -> tuple[list[dict], dict[str, float], float]:
        actors = [a for a in state.actors().values() if a["State"] != "DEAD"]
        with _ray._HELD_LOCK:
            held = {k: v for k, v in _ray._HELD.get(_ray._gcs_address(ray), {}).items() if v}
        busy = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)
        return actors, held, busy

    if wait_until(lambda: not any(left()), timeout):
        return
    actors, held, busy = left()
    for a in actors:
        with contextlib.suppress(Exception):
            psutil.Process(a["Pid"]).kill()
    with _ray._HELD_LOCK:
        _ray._HELD.clear()
    described = [
        {k: a.get(k) for k in ("ActorID", "State", "Pid", "ActorClassName", "StartTime")}
        for a in actors
    ]
    pytest.fail(
        f"after {timeout:g} s the Ray head still has {busy:g} CPUs in use; "
        f"nbpool counts {held} as held; actors not dead: {described}"
    )


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child interpreter or kernel: no pytest variables (a kernel that
    inherits PYTEST_CURRENT_TEST stops forwarding child output), tests/ importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


# Where a kernel, a Jupyter server or IPython would write: all of it goes under a test folder.
_JUPYTER_DIRS = {
    "HOME": "home",
    "JUPYTER_CONFIG_DIR": "jupyter/config",
    "JUPYTER_DATA_DIR": "jupyter/data",
    "JUPYTER_RUNTIME_DIR": "jupyter/runtime",
    "IPYTHONDIR": "ipython",
    "XDG_CONFIG_HOME": "xdg/config",
    "XDG_DATA_HOME": "xdg/data",
    "XDG_CACHE_HOME": "xdg/cache",
    "XDG_STATE_HOME": "xdg/state",
    "XDG_RUNTIME_DIR": "xdg/runtime",
    "MPLCONFIGDIR": "mpl",
    "TMPDIR": "tmp",
}


def jupyter_dirs(base: str | os.PathLike[str]) -> dict[str, str]:
    """HOME, the Jupyter, IPython and XDG folders and TMPDIR, created under ``base``: the
    variables to set (with ``clean_env(**...)``) so that nothing touches the user's own."""
    dirs = {}
    for var, sub in _JUPYTER_DIRS.items():
        path = os.path.join(base, sub)
        os.makedirs(path, exist_ok=True)
        dirs[var] = path
    os.chmod(dirs["XDG_RUNTIME_DIR"], 0o700)  # jupyter_core warns about a looser one
    return dirs


@pytest.fixture
def python() -> str:
    return sys.executable


@functools.cache
def run_notebook_tool() -> Any:
    """tools/run_notebook.py (the ``make tour`` tool) as a module, loaded once."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "run_notebook", os.path.join(ROOT, "tools", "run_notebook.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_notebook(path: str | os.PathLike[str]) -> Any:
    """A notebook of notebooks/ (a jupytext text file) as an nbformat notebook with its cells'
    ids: tools/run_notebook.py's reader, the one ``make tour`` uses."""
    return run_notebook_tool().read_notebook(path)
