"""A real Dask scheduler and two workers on 127.0.0.1 for the tests (see
../shared/recipes/cluster.md).

Loopback only (every listener, dashboards included, binds 127.0.0.1), its own config and temp
folders, each worker a "node" of one thread under its nanny; stopped by PID, workers first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from proc_util import free_port, kill_leftovers

START_TIMEOUT_S = 60


@dataclass
class DaskCluster:
    address: str  # "tcp://127.0.0.1:PORT"
    tmp: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def descendants(self) -> set[int]:
        """Every process of the cluster (scheduler, nannies, workers, what they started)."""
        import psutil

        out: set[int] = set()
        for proc in [self.scheduler, *self.workers]:
            try:
                p = psutil.Process(proc.pid)
                out |= {proc.pid} | {c.pid for c in p.children(recursive=True)}
            except psutil.Error:
                pass
        return out


def dask_env(tmp: str) -> dict[str, str]:
    return {
        "DASK_CONFIG": os.path.join(tmp, "config"),
        "DASK_TEMPORARY_DIRECTORY": os.path.join(tmp, "work"),
    }


def _wait_for(log: str, text: bytes, proc: subprocess.Popen, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with open(log, "rb") as fh:
            if text in fh.read():
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def start_dask_cluster(
    workers: int = 2, threads: int = 1, worker_env: list[dict[str, str]] | None = None
) -> DaskCluster:
    """``worker_env``: more environment for each worker (a node unlike the kernel)."""
    tmp = tempfile.mkdtemp(prefix="nbdask", dir="/tmp")
    env = {**os.environ, **dask_env(tmp)}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    port = free_port()
    bin_dir = os.path.dirname(sys.executable)
    address = f"tcp://127.0.0.1:{port}"

    def start(args: list[str], log: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
        with open(os.path.join(tmp, log), "wb") as out:
            return subprocess.Popen(
                [os.path.join(bin_dir, "dask"), *args], env={**env, **(extra or {})}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    scheduler = start(
        ["scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", "127.0.0.1:0"],
        "scheduler.log",
    )  # fmt: skip
    cluster = DaskCluster(address, tmp, scheduler)
    deadline = time.monotonic() + START_TIMEOUT_S
    ok = _wait_for(os.path.join(tmp, "scheduler.log"), b"Scheduler at:", scheduler, deadline)
    for i in range(workers if ok else 0):
        args = [
            "worker", address, "--host", "127.0.0.1", "--nworkers", "1",
            "--nthreads", str(threads), "--name", f"node{i}",
            "--dashboard-address", "127.0.0.1:0",
            "--local-directory", os.path.join(tmp, f"dt{i}"), "--death-timeout", "30",
            *(["--resources", "gpuish=1"] if i == 0 else []),  # for resources= (tests/parity)
        ]  # fmt: skip
        extra = worker_env[i] if worker_env else None
        cluster.workers.append(start(args, f"worker{i}.log", extra))
    for i, proc in enumerate(cluster.workers):
        ok = ok and _wait_for(
            os.path.join(tmp, f"worker{i}.log"), b"Registered to:", proc, deadline
        )
    if not ok:
        logs = ""
        for name in sorted(os.listdir(tmp)):
            if name.endswith(".log"):
                with open(os.path.join(tmp, name), errors="replace") as fh:
                    logs += f"--- {name}\n{fh.read()[-2000:]}"
        stop_dask_cluster(cluster)
        raise RuntimeError(f"the Dask cluster did not start:\n{logs}")
    return cluster


def stop_dask_cluster(cluster: DaskCluster, graceful: bool = True) -> None:
    """SIGTERM each worker then the scheduler, one by one (all at once took 8 s), then kill
    what is left. ``graceful=False``: SIGKILL the scheduler first (a lost scheduler), then
    SIGTERM the workers."""

    rest = cluster.descendants()
    order = [*cluster.workers, cluster.scheduler]
    if not graceful:
        order = [cluster.scheduler, *cluster.workers]
    for proc in order:
        if proc.poll() is None:
            # The workers always get SIGTERM: a nanny killed outright leaves its
            # multiprocessing semaphores in /dev/shm for good (six files a run).
            lost = not graceful and proc is cluster.scheduler
            proc.send_signal(signal.SIGKILL if lost else signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
    kill_leftovers(order, rest)
    shutil.rmtree(cluster.tmp, ignore_errors=True)
