"""Waiting for processes the tests did not start themselves (a task's subprocesses)."""

from __future__ import annotations

import os
import time

import psutil


def wait_for_file(path: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)
    with open(path) as fh:
        return fh.read()


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent (init, in a container) to reap it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pids: list[int], timeout: float = 5) -> list[int]:
    """The pids still alive after ``timeout`` seconds (empty when all are gone)."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def run_python(code: str, timeout: float = 60) -> str:
    """Run ``code`` in a fresh interpreter; its stdout, stripped (fails on a non-zero exit)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def wait_until(check, timeout: float = 15.0) -> bool:
    """Whether ``check()`` became true within ``timeout`` seconds (polled every 0.1 s)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_leftovers(leaders: list, rest: set[int]) -> None:
    """The end of a test cluster's stop: SIGKILL each leader's process group (they were
    started with ``start_new_session``), then every PID of ``rest`` still there, and reap the
    leaders (``subprocess.Popen``)."""
    import os
    import signal

    import psutil

    for proc in leaders:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in rest:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    for proc in leaders:
        if proc.poll() is None:
            proc.wait(10)


def dev_shm_files() -> set[str]:
    """Names in /dev/shm that nbpool could have left (it never makes any: its shared memory is
    anonymous). POSIX semaphores (``sem.*``), which other programs on the machine create and
    remove as they run (multiprocessing's locks), are not counted."""
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.")}


def semaphore_files() -> set[str]:
    """multiprocessing's named semaphores in /dev/shm (``sem.mp-*``): what the processes a test
    started must remove (the files ``dev_shm_files`` leaves out)."""
    return {name for name in os.listdir("/dev/shm") if name.startswith("sem.mp-")}
