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
