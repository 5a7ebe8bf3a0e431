"""The ■ button in a real kernel: interrupt_kernel() during map(), then the next cell runs."""

from __future__ import annotations

import glob
import os
import time

import psutil
import pytest
from kernel_util import kernel, run_cell

pytestmark = pytest.mark.kernel


def test_interrupt_during_map_then_next_cell_runs(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    with kernel(str(tmp_path)) as (km, kc):
        out, _ = run_cell(
            kc,
            "import nbpool, os, time\n"
            "def work(i):\n"
            f"    time.sleep(4)\n    open(os.path.join({str(marks)!r}, str(i)), 'w').close()\n"
            "    return i\n"
            "pool = nbpool.Pool(2)\nprint(*pool._engine.worker_pids())",
        )
        pids = [int(p) for p in out.split()]
        msg_id = kc.execute("pool.map(work, range(6), 1)")
        time.sleep(1.0)
        t0 = time.monotonic()
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=10)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=10)
        took = time.monotonic() - t0
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert took < 2.0
        out, _ = run_cell(kc, "print(pool.map(abs, [-1, -2, -3]))")
        assert out.strip() == "[1, 2, 3]"
        out, _ = run_cell(kc, "print(*pool._engine.worker_pids()); pool.terminate()")
        pids += [int(p) for p in out.split()]
    time.sleep(4)  # an abandoned item that kept running would have finished by now
    assert glob.glob(os.path.join(marks, "*")) == []
    assert not [p for p in pids if psutil.pid_exists(p)]
