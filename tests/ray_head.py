"""A real Ray head on 127.0.0.1 for the tests (see ../shared/recipes/cluster.md).

Loopback only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps every listener there), token auth,
its own short temp folder, stopped by its PID (never ``ray stop``, which stops every Ray
process on the machine). The variables are set in this process too, before Ray is imported:
the driver needs the token, and must not auto-connect elsewhere.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from proc_util import free_port, kill_leftovers

START_TIMEOUT_S = 90


@dataclass
class RayHead:
    address: str  # "127.0.0.1:PORT"
    client_address: str  # "ray://127.0.0.1:PORT" (Ray Client)
    pid: int
    tmp: str
    log: str
    proc: subprocess.Popen

    def descendants(self) -> set[int]:
        import psutil

        try:
            return {p.pid for p in psutil.Process(self.pid).children(recursive=True)} | {self.pid}
        except psutil.Error:
            return set()


def ray_env(tmp: str, multi_node: bool = False) -> dict[str, str]:
    """``multi_node``: let a second node join. Ray then no longer keeps itself to 127.0.0.1,
    so only inside a network namespace whose one interface is loopback (``unshare -n``)."""
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1" if multi_node else "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_AUTO_CONNECT": "0",
        "RAY_TMPDIR": tmp,
    }


def start_ray_head(
    num_cpus: int = 2,
    multi_node: bool = False,
    driver: bool = True,
    extra_env: dict[str, str] | None = None,
) -> RayHead:
    """``driver``: this process will connect to it, so Ray's variables are set here too (a
    second head started by a test for its child processes leaves this process as it is).
    ``extra_env``: more environment for the head and the Ray workers it starts only."""
    tmp = tempfile.mkdtemp(prefix="nbrt", dir="/tmp")  # short: Ray's socket paths are long
    env = ray_env(tmp, multi_node)
    if driver:
        os.environ.update(env)
        os.environ.pop("RAY_ADDRESS", None)
    port, client_port = free_port(), free_port()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    log = os.path.join(tmp, "head.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                ray_bin, "start", "--head", "--block", f"--port={port}",
                "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                '--resources={"gpuish": 1}',  # for resources= (tests/parity)
                f"--ray-client-server-port={client_port}", "--include-dashboard=false",
                "--object-store-memory=100000000",
                f"--temp-dir={tmp}", "--disable-usage-stats",
            ],
            env={**os.environ, **env, **(extra_env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    head = RayHead(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", proc.pid, tmp, log, proc)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with open(log, "rb") as fh:
            if b"block forever" in fh.read():
                return head
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    with open(log, "rb") as fh:  # (read before the stop removes its folder)
        text = fh.read().decode(errors="replace")[-3000:]
    stop_ray_head(head)
    raise RuntimeError(f"the Ray head did not start:\n{text}")


def stop_ray_head(head: RayHead, graceful: bool = True) -> None:
    """SIGTERM the head's one PID, wait, then kill its whole session (and what is left).
    ``graceful=False``: SIGKILL everything at once (a head that crashes). Safe to call twice."""

    rest = head.descendants()
    if graceful:
        try:
            head.proc.send_signal(signal.SIGTERM)
            head.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    kill_leftovers([head.proc], rest)
    if graceful:  # (a driver may still write there: the graceful stop that follows removes it)
        shutil.rmtree(head.tmp, ignore_errors=True)
