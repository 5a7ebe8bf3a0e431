"""SIGINT to the whole process group (what Jupyter's ■ button does) during every blocking call.

Each scenario runs in its own session (``start_new_session``) so the signal reaches that caller
and its workers, never pytest. The caller interrupts itself from a timer thread with
``os.killpg``, at a random moment (to catch races), 20 times per blocking call.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import clean_env

SCRIPT = r"""
import glob, os, random, signal, sys, threading, time
import nbpool, nbfuncs

mode, reps, double, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "double", sys.argv[4]
rng = random.Random(1234)
pool = nbpool.Pool(2)
pool.map(nbfuncs.sq, range(4))

def blocking(items):
    if mode == "map":
        return pool.map(nbfuncs.sleep_then_mark, items, 1)
    if mode == "apply":
        return pool.apply(nbfuncs.sleep_then_mark, (items[0],))
    if mode == "map_async.get":
        return pool.map_async(nbfuncs.sleep_then_mark, items, 1).get()
    if mode == "apply_async.get":
        return pool.apply_async(nbfuncs.sleep_then_mark, (items[0],)).get()
    if mode == "wait":
        return pool.map_async(nbfuncs.sleep_then_mark, items).wait()
    if mode == "imap":
        return list(pool.imap(nbfuncs.sleep_then_mark, items))
    if mode == "imap_unordered":
        return list(pool.imap_unordered(nbfuncs.sleep_then_mark, items))
    raise AssertionError(mode)

def interrupt_later(delay):
    def fire():
        os.killpg(os.getpgrp(), signal.SIGINT)
        if double:
            time.sleep(rng.uniform(0.0, 0.03))
            os.killpg(os.getpgrp(), signal.SIGINT)
    t = threading.Timer(delay, fire)
    t.start()
    return t

worst = 0.0
for rep in range(reps):
    items = [(3.0, os.path.join(tmp, f"done-{rep}-{i}")) for i in range(4)]
    timer = interrupt_later(rng.uniform(0.02, 0.15))
    t0 = time.monotonic()
    try:
        try:
            blocking(items)
            raise SystemExit(f"rep {rep}: the call was not interrupted")
        except KeyboardInterrupt:
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.05)  # a second interrupt may land here
    except KeyboardInterrupt:
        pass
    timer.join()
    assert pool.map(abs, [-1, -2]) == [1, 2], "pool unusable after an interrupt"
# Anything still computing an abandoned item would finish (and leave its file) by now.
time.sleep(3.5)
left = glob.glob(os.path.join(tmp, "done-*"))
pool.terminate()
print(f"worst {worst:.3f} left {len(left)}")
"""

MODES = ["map", "apply", "map_async.get", "apply_async.get", "wait", "imap", "imap_unordered"]


def _run(mode: str, reps: int, double: bool, tmp_path) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            mode,
            str(reps),
            "double" if double else "single",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        env=clean_env(),
        start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr  # no worker printed one either
    return proc.stdout


@pytest.mark.parametrize("mode", MODES)
def test_interrupt_stops_the_job_and_keeps_the_pool(mode, tmp_path):
    out = _run(mode, 20, False, tmp_path)
    worst = float(out.split()[1])
    assert worst < 1.0, out
    assert out.split()[3] == "0", f"abandoned items ran to their end: {out}"


def test_double_interrupt_never_leaves_the_caller_stuck(tmp_path):
    out = _run("map", 20, True, tmp_path)
    assert out.split()[3] == "0", out
