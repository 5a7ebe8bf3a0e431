"""Worker output lands in the cell that submitted the work, even after later cells ran."""

from __future__ import annotations

import re
import time

import pytest
from kernel_util import collect_until_idle, drain_iopub, kernel, run_cell, streams

pytestmark = pytest.mark.kernel


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
        msgs = collect_until_idle(kc, {first, second})
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


CHAT = "def chat(x):\n    print('chat', x)\n    return x\n"


def test_capture_and_redirect_capture_worker_output(tmp_path):
    """Worker output goes where the caller's sys.stdout points at submit time."""
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, "import nbpool, io, contextlib\npool = nbpool.Pool(2)\n" + CHAT)
        _, msgs = run_cell(kc, "%%capture cap\npool.map(chat, [1, 2])")
        assert streams(msgs) == []  # nothing escaped the capture
        out, _ = run_cell(kc, "print(sorted(cap.stdout.splitlines()))")
        assert "chat 1']" in out or "] chat 1'" in out
        assert out.count("chat") == 2
        out, msgs = run_cell(
            kc,
            "from IPython.utils.io import capture_output\n"
            "with capture_output() as c:\n    pool.map(chat, [3])\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    r = pool.map_async(chat, [4, 5])\n"
            "r.get()\n"
            "import time; time.sleep(0.3)\n"
            "got = sorted(line[-6:] for line in buf.getvalue().splitlines())\n"
            "print('captured:', 'chat 3' in c.stdout, got)",
        )
        assert "captured: True ['chat 4', 'chat 5']" in out
        assert "] chat" not in out  # ... and none of it reached the cell


def test_many_worker_lines_become_few_messages(tmp_path):
    """40,000 worker lines used to be 40,000 IOPub messages (a server drops past 1,000/s)."""
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(
            kc,
            "import nbpool, time\npool = nbpool.Pool(2)\n"
            "def lines(k):\n    for i in range(10_000):\n        print(f'line {k} {i}')\n"
            "    return k\n",
        )
        t0 = time.monotonic()
        _, msgs = run_cell(kc, "pool.map(lines, range(4), 1)")
        took = time.monotonic() - t0
    texts = [t for _, t in streams(msgs, "stdout")]
    got = "".join(texts).splitlines()
    assert len(got) == 40_000
    assert sorted(int(line.rsplit(" ", 1)[1]) for line in got if " line 2 " in line) == list(
        range(10_000)
    )
    # ipykernel sends what accumulated every 0.2 s: a handful per second, never one per line.
    assert len(texts) <= 10 + 10 * took, (len(texts), took)


def test_a_partial_line_lands_in_its_own_cell(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(
            kc,
            "import nbpool\npool = nbpool.Pool(1)\n"
            "def pr(x):\n    print('processing…', end='')\n    return x\n",
        )
        a = kc.execute("pool.map(pr, [1])")
        b = kc.execute("print('cell B')")
        msgs = collect_until_idle(kc, {a, b})
        msgs += drain_iopub(kc)
    partial = [(p, t) for p, t in streams(msgs) if "processing" in t]
    assert [p for p, _ in partial] == [a], partial
    assert re.fullmatch(r"\[w0 pid \d+\] processing…\n", partial[0][1])


def test_initializer_and_callback_output_land_in_their_cells(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, "import nbpool, time")
        make = kc.execute(
            "def init():\n    time.sleep(1.0)\n    print('init says hi')\n"
            "pool = nbpool.Pool(1, initializer=init)"
        )
        later = kc.execute("time.sleep(2)\nprint('later cell')")
        msgs = collect_until_idle(kc, {make, later})
        submit = kc.execute(
            "def slow(x):\n    time.sleep(1)\n    return x\n"
            "r = pool.apply_async(slow, (5,), callback=lambda v: print('callback got', v))"
        )
        after = kc.execute("time.sleep(2.5)\nprint('after')")
        msgs += collect_until_idle(kc, {submit, after})
        msgs += drain_iopub(kc)
        run_cell(kc, "pool.terminate()")
    out = streams(msgs)
    assert [p for p, t in out if "init says hi" in t] == [make]
    assert [p for p, t in out if "callback got 5" in t] == [submit]
    assert [p for p, t in out if "later cell" in t] == [later]


def test_a_tqdm_bar_in_a_task_is_one_updating_line(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(
            kc,
            "import nbpool, sys, time\npool = nbpool.Pool(1)\n"
            "def bar(x):\n    from tqdm import tqdm\n"
            "    for i in tqdm(range(40), mininterval=0.05, file=sys.stderr):\n"
            "        time.sleep(0.02)\n    return x\n",
        )
        _, msgs = run_cell(kc, "pool.map(bar, [1])")
    text = "".join(t for _, t in streams(msgs, "stderr"))
    assert text.count("\r") >= 3  # it was redrawn several times ...
    # ... and what a frontend shows (each line drawn over at "\r") is one line: the final bar
    shown = [line.split("\r")[-1] for line in text.split("\n") if line.strip()]
    assert len(shown) == 1 and "100%" in shown[0] and "40/40" in shown[0], shown
    assert shown[0].startswith("[w0 pid ")


def test_a_tasks_log_records_land_in_the_submitting_cell(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(
            kc,
            "import nbpool, logging, time\n"
            "logging.basicConfig(level=logging.INFO, format='%(processName)s %(message)s',"
            " force=True)\n"
            "pool = nbpool.Pool(1)\n"
            "def work(x):\n    time.sleep(1)\n"
            "    logging.getLogger('notebook').info('working on %s', x)\n    return x\n",
        )
        submit = kc.execute("r = pool.map_async(work, [7])")
        later = kc.execute("time.sleep(2.5)\nprint('later cell')")
        msgs = collect_until_idle(kc, {submit, later})
        msgs += drain_iopub(kc)
        run_cell(kc, "pool.terminate()")
    logged = [(p, t) for p, t in streams(msgs, "stderr") if "working on 7" in t]
    assert logged == [(submit, "SpawnPoolWorker-1 working on 7\n")], streams(msgs)
