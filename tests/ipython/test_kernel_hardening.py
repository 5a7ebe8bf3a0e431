"""Issue 8 in a real kernel: what a new user broke in an afternoon of notebook work."""

from __future__ import annotations

import os
import signal

import pytest
from kernel_util import kernel, run_cell
from proc_util import alive, wait_for_file, wait_gone

pytestmark = pytest.mark.kernel


def test_a_kernel_restart_stops_what_tasks_started(tmp_path):
    path = str(tmp_path / "child")
    child = 0
    with kernel(str(tmp_path)) as (km, kc):
        try:
            out, _ = run_cell(
                kc,
                "import nbpool, nbfuncs\npool = nbpool.Pool(1)\n"
                f"r = pool.apply_async(nbfuncs.spawn_sleep, (({path!r}, False),))\n"
                "print(*pool._engine.worker_pids())",
            )
            workers = [int(p) for p in out.split()]
            child = int(wait_for_file(path))
            km.restart_kernel(now=True)
            assert wait_gone([*workers, child]) == []
        finally:
            if child and alive(child):
                os.kill(child, signal.SIGKILL)
