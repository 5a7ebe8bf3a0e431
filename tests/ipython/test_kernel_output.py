"""Worker output lands in the cell that submitted the work, even after later cells ran."""

from __future__ import annotations

import time

import pytest
from kernel_util import kernel, run_cell

pytestmark = pytest.mark.kernel


def _collect_until_idle(kc, msg_ids: set[str], timeout: float = 30) -> list[dict]:
    """Every iopub message until each of ``msg_ids`` has gone idle."""
    msgs, idle, deadline = [], set(), time.monotonic() + timeout
    while idle != msg_ids:
        assert time.monotonic() < deadline, "cells did not finish"
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        msgs.append(msg)
        parent = msg["parent_header"].get("msg_id")
        state = msg["content"].get("execution_state")
        if msg["msg_type"] == "status" and state == "idle" and parent in msg_ids:
            idle.add(parent)
    return msgs


def test_async_output_goes_to_the_submitting_cell(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(
            kc,
            "import nbpool, time\n"
            "def late(x):\n    time.sleep(1.5)\n    print(f'late hello {x}', flush=True)\n"
            "    return x\n"
            "pool = nbpool.Pool(1)\npool.map(abs, [1])",
        )
        first = kc.execute("r = pool.map_async(late, [7], 1)")
        second = kc.execute("time.sleep(3)\nprint('second cell')")
        msgs = _collect_until_idle(kc, {first, second})
        run_cell(kc, "print(r.get(10)); pool.terminate()")
    streams = [
        (m["parent_header"].get("msg_id"), m["content"]["text"])
        for m in msgs
        if m["msg_type"] == "stream"
    ]
    late = [parent for parent, text in streams if "late hello 7" in text]
    assert late == [first], streams
    assert any(parent == second and "second cell" in text for parent, text in streams)
    text = next(t for _, t in streams if "late hello 7" in t)
    assert text.startswith("[w0 pid ")
