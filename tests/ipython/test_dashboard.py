"""The live dashboard in a real kernel: the widget traffic a frontend receives (jupyter_client).

Every check is on the IOPub messages themselves: comm_open of the Dashboard model, the
display_data that places it in the submitting cell, comm_msg updates that arrive while the cell
is still blocked in ``map()``, and the final state (also in the output's text/html fallback).
"""

from __future__ import annotations

import time
from typing import Any

import psutil
import pytest
from kernel_util import kernel, run_cell

pytestmark = pytest.mark.kernel

SETUP = (
    "import nbpool, time, os\n"
    "def slow(x):\n"
    "    time.sleep(0.02)\n"
    "    return x\n"
    "def fails_on_7(x):\n"
    "    time.sleep(0.02)\n"
    "    if x == 7:\n"
    "        raise ValueError('seven')\n"
    "    return x\n"
    "pool = nbpool.Pool(2)\n"
)
WIDGET = "application/vnd.jupyter.widget-view+json"


def timed_cell(
    kc: Any, code: str, timeout: float = 60, ok: bool = True
) -> tuple[dict, list[tuple[float, dict]]]:
    """Execute a cell; return its reply and every iopub message (whichever cell it names) seen
    until the cell's kernel is idle again, with arrival times. (``execute_interactive`` would
    drop the messages that name an earlier cell, which is what the async test looks for.)"""
    msg_id = kc.execute(code)
    msgs: list[tuple[float, dict]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"cell did not finish in {timeout} s: {code}"
        try:
            m = kc.get_iopub_msg(timeout=min(left, 1))
        except Exception:  # queue.Empty: keep waiting until the deadline
            continue
        msgs.append((time.monotonic(), m))
        if (
            m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
            and m["parent_header"].get("msg_id") == msg_id
        ):
            break
    reply = kc.get_shell_msg(timeout=10)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=10)
    if ok:
        errors = [m["content"] for _, m in msgs if m["msg_type"] == "error"]
        assert reply["content"]["status"] == "ok", (code, errors)
    return reply, msgs


def dashboard_traffic(msgs: list[tuple[float, dict]]) -> dict[str, Any]:
    """The Dashboard's comm id, its display messages and its snapshots, in order."""
    opened = [
        m
        for _, m in msgs
        if m["msg_type"] == "comm_open"
        and m["content"]["data"]["state"].get("_anywidget_id", "").endswith("Dashboard")
    ]
    if not opened:
        return {"comm": None, "snapshots": [], "displays": [], "updates": []}
    (op,) = opened
    comm = op["content"]["comm_id"]
    snaps = [(0.0, op["content"]["data"]["state"]["snapshot"])]
    for t, m in msgs:
        c = m["content"]
        if m["msg_type"] == "comm_msg" and c["comm_id"] == comm:
            snap = c["data"].get("state", {}).get("snapshot")
            if snap is not None:
                snaps.append((t, snap))
    displays = [
        m for _, m in msgs if m["msg_type"] == "display_data" and WIDGET in m["content"]["data"]
    ]
    updates = [m for _, m in msgs if m["msg_type"] == "update_display_data"]
    return {"comm": comm, "snapshots": snaps, "displays": displays, "updates": updates, "open": op}


def test_blocking_map_streams_updates_while_the_cell_runs(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, SETUP)
        t0 = time.monotonic()
        reply, msgs = timed_cell(kc, "r = pool.map(slow, range(100)); print(r == list(range(100)))")
        t_end = time.monotonic()
        assert reply["content"]["status"] == "ok"
        d = dashboard_traffic(msgs)
        assert d["comm"], [m["msg_type"] for _, m in msgs]
        cell_id = reply["parent_header"]["msg_id"]
        (display,) = d["displays"]
        assert display["parent_header"]["msg_id"] == cell_id
        assert display["content"]["data"][WIDGET]["model_id"] == d["comm"]
        assert "text/html" in display["content"]["data"]
        snaps = d["snapshots"]
        running = [(t, s) for t, s in snaps[1:] if s["state"] == "running"]
        assert len(running) >= 3, snaps
        # live: updates came well before the cell's end, with growing counts
        assert running[0][0] < t_end - 0.3
        dones = [s["done"] for _, s in running]
        assert dones == sorted(dones) and dones[-1] > dones[0]
        # at most ~10 updates a second
        span = running[-1][0] - running[0][0]
        assert (len(running) - 1) / max(span, 0.1) <= 12, (len(running), span)
        rows = running[-1][1]["workers"]
        assert len(rows) == 2 and all(r["pid"] for r in rows)
        assert {r["state"] for r in rows} <= {"busy", "idle"}
        assert any(isinstance(r["item"], int) and r["arg"] for r in rows)
        final = snaps[-1][1]
        assert final["state"] == "finished"
        assert final["done"] == final["total"] == 100 and final["failed"] == 0
        assert sum(r["done"] for r in final["workers"]) == 100
        # the output itself ends with the final summary, for viewers without widgets
        (upd,) = d["updates"]
        assert upd["parent_header"]["msg_id"] == cell_id
        assert "finished" in upd["content"]["data"]["text/plain"]
        assert "100 / 100 items" in upd["content"]["data"]["text/html"]
        assert t_end - t0 < 10


def test_quick_calls_and_progress_false_show_nothing(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, SETUP)
        for code in (
            "pool.map(slow, range(4))",  # over in well under 0.5 s: "auto" shows nothing
            "pool.map(slow, range(60), progress=False)",
            "nbpool.Pool(2, progress=False).map(slow, range(60))",
        ):
            _, msgs = timed_cell(kc, code)
            types = [m["msg_type"] for _, m in msgs]
            assert "comm_open" not in types and "display_data" not in types, (code, types)


def test_queued_calls_show_nothing_until_they_run_long_enough(tmp_path):
    """100 apply_async calls of 20 ms: half wait in the queue longer than 0.5 s, but none runs
    that long, so "auto" shows no dashboard at all."""
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, SETUP)
        code = (
            "rs = [pool.apply_async(slow, (i,)) for i in range(100)]\n"
            "print(sum(r.get() for r in rs))"
        )
        _, msgs = timed_cell(kc, code)
        types = [m["msg_type"] for _, m in msgs]
        assert "comm_open" not in types and "display_data" not in types, types


def test_a_generator_that_raises_counts_its_error_as_an_item(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, SETUP)
        code = (
            "def gen():\n    yield from range(30)\n    raise KeyError('input broke')\n"
            "out = []\nit = pool.imap(slow, gen(), progress=True)\n"
            "try:\n    out.extend(it)\nexcept KeyError:\n    print(len(out), 'then KeyError')\n"
        )
        _, msgs = timed_cell(kc, code)
        _, later = timed_cell(kc, "time.sleep(0.5)")
        snaps = [s for _, s in dashboard_traffic(msgs + later)["snapshots"]]
        assert all(s["total"] is None or s["done"] <= s["total"] for s in snaps), snaps
        final = snaps[-1]
        assert final["state"] == "failed" and final["total"] == 31 and final["done"] == 31


def test_progress_true_shows_a_short_call_too(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, SETUP)
        _, msgs = timed_cell(kc, "pool.map(slow, range(4), progress=True)")
        final = dashboard_traffic(msgs)["snapshots"][-1][1]
        assert final["state"] == "finished" and final["done"] == 4


def test_a_failed_map_raises_at_once_and_its_dashboard_ends_failed(tmp_path):
    """Its dashboard is final ("failed") by the time its cell ends (it used to say "running",
    and a saved notebook kept that), while the other items finish in the background."""
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, SETUP)
        # item 7 fails early; the other 92 items keep the workers busy for about 1 s more
        reply, msgs = timed_cell(kc, "pool.map(fails_on_7, range(100), progress=True)", ok=False)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "ValueError"
        mine = dashboard_traffic(msgs)
        final = mine["snapshots"][-1][1]
        assert final["state"] == "failed" and final["failed"] == 1, final
        assert "background" in final["note"]
        assert final["done"] < 100  # raised at the failure, not after the last item
        (shown,) = mine["updates"]  # the output itself, in this cell
        assert "failed" in shown["content"]["data"]["text/plain"]
        _, later = timed_cell(kc, "time.sleep(1.5)")  # the other items finish meanwhile
        # ... and the dashboard stays as it was when its cell ended
        assert dashboard_traffic(msgs + later)["snapshots"][-1][1] == final
        out, _ = run_cell(kc, "print(pool.map(slow, range(3)))")
        assert out.strip() == "[0, 1, 2]"


def test_async_call_keeps_updating_its_own_cell_after_it_ended(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, SETUP)
        reply_a, msgs_a = timed_cell(kc, "res = pool.map_async(slow, range(100))")
        cell_a = reply_a["parent_header"]["msg_id"]
        # Cell B waits; the dashboard is placed in cell A and keeps updating while B runs.
        reply_b, msgs_b = timed_cell(kc, "res.wait(30); time.sleep(0.3)")
        assert reply_b["content"]["status"] == "ok"
        seen = [m for _, m in msgs_b]
        d = dashboard_traffic(msgs_a + msgs_b)
        assert d["comm"]
        (display,) = d["displays"]
        assert display["parent_header"]["msg_id"] == cell_a
        upd = [
            m for m in seen if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == d["comm"]
        ]
        assert upd  # live while cell B runs
        assert d["snapshots"][-1][1]["state"] == "finished"
        (final,) = d["updates"]  # the output in cell A, updated by its display id
        assert final["content"]["transient"] == display["content"]["transient"]
        assert "100 / 100 items" in final["content"]["data"]["text/plain"]


def test_interrupt_marks_rows_interrupted_and_leaves_no_process(tmp_path):
    with kernel(str(tmp_path)) as (km, kc):
        out, _ = run_cell(
            kc,
            SETUP + "def sleepy(x):\n    time.sleep(5)\n    return x\n"
            "print(*pool._engine.worker_pids())",
        )
        old_pids = [int(p) for p in out.split()]
        msgs: list[dict] = []
        msg_id = kc.execute("pool.map(sleepy, range(6), 1)")
        deadline = time.monotonic() + 20
        interrupted_at = None
        while time.monotonic() < deadline:
            try:
                m = kc.get_iopub_msg(timeout=1)
            except Exception:
                continue
            msgs.append(m)
            if interrupted_at is None and m["msg_type"] == "comm_msg":
                interrupted_at = time.monotonic()
                km.interrupt_kernel()  # the ■ button, once the dashboard is live
            if (
                m["msg_type"] == "status"
                and m["content"]["execution_state"] == "idle"
                and m["parent_header"].get("msg_id") == msg_id
            ):
                break
        assert interrupted_at is not None, "the dashboard never updated"
        time.sleep(0.5)  # the final snapshot is rendered right after the cancel
        while True:
            try:
                msgs.append(kc.get_iopub_msg(timeout=0.5))
            except Exception:
                break
        d = dashboard_traffic([(0.0, m) for m in msgs])
        final = d["snapshots"][-1][1]
        assert final["state"] == "interrupted", final
        states = [r["state"] for r in final["workers"]]
        assert states == ["interrupted", "interrupted"], final["workers"]
        assert all(r["item"] is not None for r in final["workers"])
        # the workers that were on the cancelled items are gone; the pool has new ones
        time.sleep(1)
        assert not [p for p in old_pids if psutil.pid_exists(p)]
        out, _ = run_cell(kc, "print(pool.map(abs, [-1, -2]))")
        assert out.strip() == "[1, 2]"
        run_cell(kc, "pool.terminate()")


def test_pool_dashboard_and_pmap_progress_flags(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, "%load_ext nbpool\nimport time")
        _, msgs = timed_cell(kc, "%pool start -n 2")
        _, msgs = timed_cell(kc, "%pool")
        d = dashboard_traffic(msgs)
        assert d["comm"] and len(d["displays"]) == 1
        first = d["snapshots"][-1][1]
        assert first["state"] in ("idle", "running") and len(first["workers"]) == 2
        pool_comm = d["comm"]
        # %%pmap with --no-progress shows nothing of its own, and the pool dashboard updates
        _, msgs = timed_cell(kc, "%%pmap --no-progress x in range(30)\ntime.sleep(0.03)\nx")
        assert not dashboard_traffic(msgs)["comm"]
        pool_updates = [
            m["content"]["data"]["state"]["snapshot"]
            for _, m in msgs
            if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == pool_comm
        ]
        assert pool_updates and max(s["done"] for s in pool_updates) >= 1
        _, msgs = timed_cell(kc, "%%pmap --progress x in range(6)\nx * 2")
        final = dashboard_traffic(msgs)["snapshots"][-1][1]
        assert final["state"] == "finished" and final["done"] == 6
        # A second %pool shows a new dashboard; the first one ends, saying why.
        _, msgs = timed_cell(kc, "%pool")
        second = dashboard_traffic(msgs)
        assert second["comm"] and second["comm"] != pool_comm and len(second["displays"]) == 1
        ended = [
            m["content"]["data"]["state"]["snapshot"]
            for _, m in msgs
            if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == pool_comm
        ]
        assert ended and ended[-1]["state"] == "stopped" and "replaced" in ended[-1]["note"]
        assert second["snapshots"][-1][1]["rate"] < 1000  # counted from when it was shown
        run_cell(kc, "%pool stop")


def test_a_loop_of_calls_in_one_cell_shares_one_dashboard(tmp_path):
    """Each call used to stack a dashboard of its own under the cell; now the cell has one
    area: the newest call in full, the earlier ones as a summary line each."""
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, SETUP)
        _, msgs = timed_cell(
            kc, "for k in range(3):\n    pool.map(slow, range(20 + k), progress=True)"
        )
    opened = [
        m
        for _, m in msgs
        if m["msg_type"] == "comm_open"
        and m["content"]["data"]["state"].get("_anywidget_id", "").endswith("Dashboard")
    ]
    assert len(opened) == 1
    d = dashboard_traffic(msgs)
    assert len(d["displays"]) == 1
    final = d["snapshots"][-1][1]
    assert final["state"] == "finished" and final["total"] == 22
    assert [(h["state"], h["title"]) for h in final["history"]] == [
        ("finished", "map(slow) · 20 items"),
        ("finished", "map(slow) · 21 items"),
    ]
    shown = d["updates"][-1]["content"]["data"]["text/plain"]
    assert "map(slow) · 20 items · finished" in shown and "22 / 22 items" in shown


def test_insights_show_under_the_final_dashboard(tmp_path):
    """enable_insights=True: the call's final snapshot carries the pool's insights (time
    shares and the slowest items with their arguments), in the widget and its text/html."""
    code = (
        "ipool = nbpool.Pool(2, enable_insights=True)\n"
        "def sleepy(x):\n"
        "    time.sleep(0.4 if x == 'the slow one' else 0.01)\n"
        "    return x\n"
        "ipool.map(sleepy, ['a', 'the slow one', 'b', 'c'], 1, progress=True)"
    )
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, SETUP)
        _, msgs = timed_cell(kc, code)
        final = dashboard_traffic(msgs)["snapshots"][-1][1]
        assert final["state"] == "finished"
        first, slow, *_ = final["insights"]
        assert first.startswith("insights: working ") and "over 2 workers" in first
        assert slow.startswith("slow: 0.4") and "item 1" in slow and "'the slow one'" in slow
        assert "_insights" not in final
        html = [
            m["content"]["data"]["text/html"]
            for _, m in msgs
            if m["msg_type"] in ("display_data", "update_display_data")
            and "text/html" in m["content"].get("data", {})
        ]
        assert "insights: working" in html[-1]
        run_cell(kc, "ipool.terminate()")
