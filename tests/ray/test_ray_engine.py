"""What only the Ray engine has: connecting, placing workers, leaving nothing on the cluster.

Runs against the session's Ray head on 127.0.0.1 (``ray_head`` in tests/conftest.py), in the
Ray run only (``--engines=ray``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import nbfuncs as f
import psutil
import pytest
from conftest import clean_env
from proc_util import free_port, wait_until

import nbpool


def _alive_actors() -> int:
    from ray._private import state

    return sum(1 for a in state.actors().values() if a["State"] != "DEAD")


def _actor_processes() -> list[int]:
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        if "ray::NbpoolWorker" in " ".join(p.info["cmdline"] or []):
            pids.append(p.pid)
    return pids


@pytest.mark.parametrize("how", ["terminate", "close-join", "with"])
def test_no_actor_is_left_on_the_cluster(ray_head, how):
    pool = nbpool.Pool(2, ray_address=ray_head.address)
    assert pool.map(f.sq, range(10)) == [x * x for x in range(10)]
    assert _alive_actors() == 2
    if how == "terminate":
        pool.terminate()
    elif how == "close-join":
        pool.close()
        pool.join()
    else:
        with pool:
            pass
    assert wait_until(lambda: _alive_actors() == 0)
    assert wait_until(lambda: _actor_processes() == [])


def test_more_workers_than_the_cluster_has_cpus_is_refused(ray_head):
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"has 2 CPUs") as info:
        nbpool.Pool(3, ray_address=ray_head.address)
    assert "processes=3" in str(info.value)
    assert time.monotonic() - t0 < 10
    with nbpool.Pool(ray_address=ray_head.address) as pool:  # the default: its free CPUs
        assert pool._processes == 2
        # At once, before Ray's own view counts its actors: nbpool counts what they hold
        with pytest.raises(ValueError, match="none of them free now"):
            nbpool.Pool(1, ray_address=ray_head.address)
        assert pool.map(f.sq, [4]) == [16]


def test_backend_ray_uses_the_connection_ray_init_made(ray_head):
    with nbpool.Pool(backend="ray") as pool:
        assert pool.backend == "ray"
        assert pool.apply(f.sq, (7,)) == 49
        assert wait_until(lambda: len(pool._engine.worker_pids()) == 2, 30)  # both actors ready
        rows = pool._engine._snapshot(None, time.monotonic(), "running", _view())["workers"]
        assert {r["host"] for r in rows} == {"127.0.0.1"}


def test_another_address_than_the_current_connection_is_refused(ray_head):
    with pytest.raises(nbpool.ClusterConnectionError, match="already connected"):
        nbpool.Pool(ray_address="127.0.0.1:1")


def _view():
    from nbpool._progress import JobProgress

    return JobProgress(True, "text", None, "pool")


SCRIPT = """
import os, time, nbpool, nbfuncs
t0 = time.monotonic()
try:
    pool = nbpool.Pool()
except Exception as e:
    print(type(e).__name__, "|", e, "|", round(time.monotonic() - t0, 1))
    raise SystemExit(0)
print(pool.backend, pool.address, pool.map(nbfuncs.sq, [1, 2, 3]), pool._processes)
pool.terminate()
"""


@pytest.mark.parametrize("variable", ["RAY_ADDRESS", "NBPOOL_ADDRESS"])
def test_the_environment_switches_a_notebook_to_the_cluster(ray_head, variable):
    env = clean_env(**{variable: ray_head.address})
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == f"ray {ray_head.address} [1, 4, 9] 2"


def test_an_unreachable_address_fails_fast_naming_it(ray_head):
    address = f"127.0.0.1:{free_port()}"
    env = clean_env(RAY_ADDRESS=address)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    kind, message, seconds = out.stdout.strip().split(" | ")
    assert kind == "ClusterConnectionError"
    assert address in message
    assert float(seconds) < 10


CLIENT = """
import sys, nbpool
with nbpool.Pool(2, ray_address=sys.argv[1], progress=False) as pool:
    print(pool.backend, pool.address)
    print(pool.map(lambda x: x * x, range(6)))
    pool.apply(print, ("hello from an actor",))
"""


def _client_server_logs(head) -> str:
    import glob

    out = []
    for path in sorted(glob.glob(f"{head.tmp}/session_latest/logs/ray_client_server*")):
        with open(path, errors="replace") as fh:
            out.append(f"\n== {os.path.basename(path)}\n{fh.read()[-2000:]}")
    return "".join(out)


def test_ray_client_address_runs_the_same_pool(ray_head):
    """``ray://`` (Ray Client, how a laptop outside the cluster connects): the same pool, its
    output in the caller, and no actor left once it ends."""
    env = clean_env()
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, ray_head.client_address],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # (Ray's per-client server logs too: it failed to start once on a loaded machine)
    assert out.returncode == 0, out.stderr[-3000:] + _client_server_logs(ray_head)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == f"ray {ray_head.client_address}"
    assert lines[1] == "[0, 1, 4, 9, 16, 25]"
    assert lines[2].startswith("[w") and lines[2].endswith("on 127.0.0.1] hello from an actor")
    assert wait_until(lambda: _alive_actors() == 0)


LOCAL = """
import json, psutil, nbpool
pool = nbpool.Pool(2, ray_address="local", progress=False)
print(pool.backend, pool.address, pool.map(abs, [-1, -2]))
me = psutil.Process()
ray_pids = [p.pid for p in me.children(recursive=True)]
listening = {
    c.laddr.ip for p in [me] + me.children(recursive=True)
    for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN
}
pool.terminate()
print(json.dumps([ray_pids, sorted(listening)]))
"""


def test_local_starts_a_private_ray_on_loopback_and_leaves_nothing(ray_head):
    """``ray_address="local"``: a new private Ray instance (not the session's head, though
    one is running here), listening on loopback only, gone when the process ends."""
    import json
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="nbrl", dir="/tmp")  # short: Ray's socket paths are long
    try:
        env = clean_env(RAY_TMPDIR=tmp)
        out = subprocess.run(
            [sys.executable, "-c", LOCAL], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-3000:]
        first, last = out.stdout.strip().splitlines()[0], out.stdout.strip().splitlines()[-1]
        assert first == "ray local [1, 2]"
        ray_pids, listening = json.loads(last)
        assert ray_pids and set(ray_pids).isdisjoint(ray_head.descendants())
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in listening)
        assert wait_until(lambda: not any(psutil.pid_exists(p) for p in ray_pids), 30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


MISMATCH = """
import sys, ray, nbpool
{change}
try:
    nbpool.Pool(ray_address=sys.argv[1])
except nbpool.ClusterConnectionError as e:
    print(e)
"""


@pytest.mark.parametrize(
    "change, here",
    [
        ('ray.__version__ = "2.0.0"', "Ray 2.0.0 on Python {py}"),
        ('sys.version_info = (3, 11, 99, "final", 0)', "Ray {ray} on Python 3.11.99"),
    ],
)
def test_a_version_mismatch_is_one_clear_sentence(ray_head, change, here):
    """Ray's own version check runs for real against the head; what this driver says it runs
    is changed (installing a second Ray or Python here would cost minutes)."""
    import platform

    import ray

    env = clean_env()
    code = MISMATCH.format(change=change)
    out = subprocess.run(
        [sys.executable, "-c", code, ray_head.address],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    message = out.stdout.strip()
    py = platform.python_version()
    assert message.startswith(
        f"the Ray cluster at {ray_head.address} runs Ray {ray.__version__} on Python {py}, "
        f"but this kernel has {here.format(py=py, ray=ray.__version__)}: "
    )
    assert f"ray=={ray.__version__}" in message and "\n" not in message


LOSE = """
import sys, time, nbpool
def slow(x):
    time.sleep(0.5)
    return x
pool = nbpool.Pool(2, ray_address=sys.argv[1], progress=False)
print("warm", pool.map(slow, range(2)), flush=True)
t0 = time.monotonic()
try:
    pool.map(slow, range(200), 1)
except nbpool.ClusterConnectionError as e:
    print("failed after", round(time.monotonic() - t0, 1), "|", e, flush=True)
t0 = time.monotonic()
pool.terminate()
print("terminate", round(time.monotonic() - t0, 1), flush=True)
time.sleep(20)  # Ray ends a driver still connected to a lost head after its reconnect timeout
print("alive", flush=True)
"""


def test_losing_the_cluster_fails_the_job_at_once_and_spares_the_kernel(ray_head, tmp_path):
    """The head dies mid-job: the job fails with ClusterConnectionError within seconds,
    terminate() returns at once, and the process (a kernel) lives on: nbpool disconnects from
    the lost cluster, which Ray would otherwise do by ending the process."""
    from conftest import CLUSTER_PIDS
    from ray_head import start_ray_head, stop_ray_head

    doomed = start_ray_head(num_cpus=2, driver=False)  # (the same token: it is in our env)
    CLUSTER_PIDS.append(doomed)
    try:
        env = clean_env(RAY_gcs_rpc_server_reconnect_timeout_s="15")
        with open(tmp_path / "stderr", "w") as err:
            child = subprocess.Popen(
                [sys.executable, "-c", LOSE, doomed.address],
                env=env, stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
        try:
            assert child.stdout.readline().startswith("warm")
            time.sleep(1.0)
            stop_ray_head(doomed, graceful=False)
            out, _ = child.communicate(timeout=120)
        finally:
            child.kill()
            child.wait(30)
        lines = dict((line + " ").split(" ", 1) for line in out.strip().splitlines())
        seconds, message = lines["failed"].strip().removeprefix("after ").split(" | ")
        assert float(seconds) < 15
        assert f"lost the Ray cluster at {doomed.address}" in message
        assert float(lines["terminate"].strip()) < 5
        assert "alive" in out and child.returncode == 0, (tmp_path / "stderr").read_text()[-3000:]
    finally:
        stop_ray_head(doomed)
        CLUSTER_PIDS.remove(doomed)


@pytest.mark.timeout(300)  # two nodes start one after the other (~60 s here)
def test_two_nodes_give_two_rows_with_their_node_ids(tmp_path):
    """A real two-node cluster, inside a network namespace this test makes (root only)."""
    import json
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to make a network namespace")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "two_nodes.py")
    env = clean_env()
    for name in (
        "RAY_ADDRESS",
        "RAY_AUTH_TOKEN",
        "RAY_TMPDIR",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
    ):
        env.pop(name, None)  # the namespace gets a cluster (and a token) of its own
    out = subprocess.run(
        ["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {sys.executable} {script}"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 2
    assert all(r["host"] == "127.0.0.1" and r["pid"] for r in rows)
    assert len({r["node"] for r in rows}) == 2  # one actor on each node


# A sitecustomize for the head: the first Ray Client session server (``--mode=specific-server``)
# it starts dies at birth, as Ray's own does now and then (ray-project/ray#63202); later ones live.
SESSION_SERVER_DIES_ONCE = """
import os
with open("/proc/self/cmdline", "rb") as fh:
    _cmd = fh.read()
if b"--mode=specific-server" in _cmd:
    try:
        os.close(os.open(os.environ["NBPOOL_TEST_DIED"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        pass
    else:
        os._exit(3)
"""


# A head of its own, then Ray's wait for the dead server (about 2 x 20 s), then a session that
# lives: about 75 s here; over the default 120 s when the session's head also starts first.
@pytest.mark.timeout(300)
def test_ray_client_asks_again_when_its_session_server_dies_at_birth(ray_head, tmp_path):
    """Ray Client's per-session server on the head dies at start now and then (in this
    project's CI too): Pool(ray_address="ray://...") warns and asks for a new session, and the
    pool works. Before, the pool failed with Ray's "Initialization failure from server"."""
    from conftest import CLUSTER_PIDS
    from ray_head import start_ray_head, stop_ray_head

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SESSION_SERVER_DIES_ONCE)
    died = tmp_path / "died"
    env = {
        "PYTHONPATH": str(tmp_path / "site"),
        "NBPOOL_TEST_DIED": str(died),
        # (how long the head waits for a session server to answer: 30 s by default, per try)
        "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "20",
    }
    head = start_ray_head(num_cpus=2, driver=False, extra_env=env)  # (ray_head: our token)
    CLUSTER_PIDS.append(head)
    try:
        out = subprocess.run(
            [sys.executable, "-W", "always::RuntimeWarning", "-c", CLIENT, head.client_address],
            env=clean_env(), capture_output=True, text=True, timeout=200,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:] + _client_server_logs(head)
        assert died.exists()  # the first session's server did die
        assert "died (ray-project/ray#63202); asking for a new session (2 of 3)" in out.stderr
        lines = out.stdout.strip().splitlines()
        assert lines[:2] == [f"ray {head.client_address}", "[0, 1, 4, 9, 16, 25]"]
    finally:
        stop_ray_head(head)
        CLUSTER_PIDS.remove(head)


REFUSED = """
import sys, time, nbpool
t0 = time.monotonic()
try:
    nbpool.Pool(1, ray_address=sys.argv[1], progress=False)
except nbpool.ClusterConnectionError as e:
    print("refused after", round(time.monotonic() - t0, 1), "|", e, flush=True)
import os, psutil, ray
others = [p for p in psutil.process_iter(["cmdline"]) if p.pid != os.getpid()]
titles = [" ".join(p.info["cmdline"] or []) for p in others]
print("actors", sum("NbpoolWorker" in t for t in titles), flush=True)  # (its process title)
ray.shutdown()
"""


@pytest.mark.parametrize("how", ["old", "none"])
def test_ray_nodes_without_this_kernels_nbpool_are_refused_by_name(ray_head, tmp_path, how):
    """A head whose Ray workers find an older nbpool first on their path, or none at all.
    Pool() names the node and what to install, before any actor starts (without the check,
    each item failed with "its Ray actor died (ActorDiedError ...)" and the pool went on)."""
    from cluster_checks import unlike_the_kernel
    from conftest import CLUSTER_PIDS
    from ray_head import start_ray_head, stop_ray_head

    env = unlike_the_kernel(tmp_path, how)
    head = start_ray_head(num_cpus=2, driver=False, extra_env=env)  # (ray_head: our token)
    CLUSTER_PIDS.append(head)
    try:
        # (cwd: Ray puts the driver's folder first on its workers' path, and the repository's
        # root holds our nbpool)
        out = subprocess.run(
            [sys.executable, "-c", REFUSED, head.address], env=clean_env(), cwd=tmp_path,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = dict((line + " ").split(" ", 1) for line in out.stdout.strip().splitlines())
        assert "refused" in lines, out.stdout + out.stderr[-3000:]
        message = lines["refused"].split(" | ", 1)[1]
        what = "nbpool 0.0.1" if how == "old" else "no nbpool"
        assert f"the Ray cluster at {head.address} cannot run this kernel's nbpool" in message
        assert re.search(rf"node 127\.0\.0\.1 \(\w{{8}}\) has {what}\. ", message), message
        assert f"pip install nbpool=={nbpool.__version__}" in message
        assert lines["actors"].strip() == "0"  # no actor was started
    finally:
        stop_ray_head(head)
        CLUSTER_PIDS.remove(head)
