"""The ■ button in a real kernel: interrupt_kernel() during map(), then the next cell runs."""

from __future__ import annotations

import glob
import os
import re
import time

import psutil
import pytest
from kernel_util import collect_until_idle, kernel, run_cell

pytestmark = pytest.mark.kernel


def interrupt_after(km, kc, code: str, delay: float = 1.0) -> tuple[dict, float]:
    """Run ``code``, press ■ after ``delay`` s; the cell's reply and how long it took to come."""
    msg_id = kc.execute(code)
    time.sleep(delay)
    t0 = time.monotonic()
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=10)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=10)
    took = time.monotonic() - t0
    # ipykernel sends an error reply *before* it starts aborting queued execute requests
    # (stop_on_error) and stops aborting on a later loop turn, so a cell sent the moment the
    # reply arrives can come back "aborted" unrun (ipython/ipykernel#609). The cell's idle
    # status is published after that abort window has been scheduled to close: wait for it,
    # as a notebook front end does before it runs the next cell.
    collect_until_idle(kc, {msg_id}, timeout=10)
    return reply, took


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
        reply, took = interrupt_after(km, kc, "pool.map(work, range(6), 1)")
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


def test_threading_pool_in_a_kernel_prints_in_the_cell_and_stops_on_interrupt(tmp_path):
    """start_method="threading": a task's print shows in its cell; ■ stops running Python
    tasks (their threads end and new ones take their slots) and the next cell runs."""
    with kernel(str(tmp_path)) as (km, kc):
        out, _ = run_cell(
            kc,
            "import nbpool, threading, time\n"
            "pool = nbpool.Pool(2, start_method='threading')\n"
            "def hello(x):\n    print('hello from', x)\n    return x\n"
            "def spin(x):\n    while True:\n        pass\n"
            "print(pool.map(hello, range(4), 1))",
        )
        for i in range(4):  # routed to the cell and tagged, as a process worker's print
            assert re.search(rf"^\[w[01] thread\] hello from {i}$", out, re.M), out
        assert "[0, 1, 2, 3]" in out
        reply, took = interrupt_after(km, kc, "pool.map(spin, range(2), 1)")
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert took < 2.0
        out, _ = run_cell(
            kc,
            "time.sleep(0.5)\nprint(pool.map(abs, [-1, -2]))\n"
            "print(sorted(t.name.rsplit('-', 1)[0] for t in threading.enumerate() "
            "if t.name.startswith('nbpool-thread')))",
        )
        # the spinning threads are gone: two fresh ones serve the slots
        assert "[1, 2]" in out
        assert "['nbpool-thread-worker-0', 'nbpool-thread-worker-1']" in out
        run_cell(kc, "pool.terminate()")
