"""One benchmark row for one library, in its own interpreter, driven by ``run.py``.

``python benchmarks/_rows.py LIB ROW PARAMS_JSON`` starts a warm pool and prints
``@@READY [notes]``; then each ``run`` line on stdin runs the row once and answers
``@@REP seconds``; ``stop`` (or EOF) shuts the pool down and prints ``@@RESULT {json}``. The
runner interleaves the repetitions of all libraries (round-robin, so noise on a shared machine
hits them alike) and kills this process and its workers if an answer is late. Row ``rss``
answers at once with ``@@RESULT {caller_mb, workers_mb}``. Failures print ``@@ERROR reason``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import _libs
from _tasks import echo, make_ones, nap, nap_numpy, spin, sq, total


class WrongResult(Exception):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(what)


def warm_up(runner: _libs.Adapter) -> list[str]:
    """Start every worker and make it import the task module; return notes."""
    if runner.key == "serial":
        return []
    pids = set(runner.map(nap, [0.25] * (2 * _libs.WORKERS), 1))
    notes = []
    if len(pids) != _libs.WORKERS:
        notes.append(f"warm-up reached {len(pids)} of {_libs.WORKERS} workers")
    runner.map(sq, range(100), None)
    return notes


def row_map(runner: _libs.Adapter, p: dict) -> tuple[Callable[[], float], list[str]]:
    n = p["map_n"]
    cs = _libs.stdlib_chunksize(n) if runner.chunksize_one_default else None

    def once() -> float:
        t0 = time.perf_counter()
        r = runner.map(sq, range(n), cs)
        dt = time.perf_counter() - t0
        check(len(r) == n and r[-1] == (n - 1) ** 2 and r[n // 2] == (n // 2) ** 2, "map")
        return dt

    return once, []


def row_imap(runner: _libs.Adapter, p: dict) -> tuple[Callable[[], float], list[str]]:
    n = p["imap_n"]

    def once() -> float:
        count = total = 0
        t0 = time.perf_counter()
        for v in runner.imap(sq, (i for i in range(n))):
            count += 1
            total += v
        dt = time.perf_counter() - t0
        check(count == n and total == (n - 1) * n * (2 * n - 1) // 6, "imap")
        return dt

    return once, []


def row_apply(runner: _libs.Adapter, p: dict) -> tuple[Callable[[], float], list[str]]:
    n = p["apply_n"]
    for i in range(5):
        runner.apply(abs, (-i,))

    def once() -> float:
        total = 0
        t0 = time.perf_counter()
        for i in range(n):
            total += runner.apply(abs, (-i,))
        dt = time.perf_counter() - t0
        check(total == n * (n - 1) // 2, "apply")
        return dt

    return once, []


def row_cpu(runner: _libs.Adapter, p: dict) -> tuple[Callable[[], float], list[str]]:
    n, iters = p["cpu_items"], p["cpu_iters"]
    expected = (iters - 1) * iters * (2 * iters - 1) // 6

    def once() -> float:
        t0 = time.perf_counter()
        r = runner.map(spin, [iters] * n, None)
        dt = time.perf_counter() - t0
        check(len(r) == n and r[0] == expected and r[-1] == expected, "cpu")
        return dt

    return once, []


def row_numpy(runner: _libs.Adapter, p: dict) -> tuple[Callable[[], float], list[str]]:
    import numpy as np

    count, mib = p["np_count"], p["np_mib"]
    n = mib * 2**20 // 8
    arrays = [np.full(n, float(k)) for k in range(count)]
    runner.map(echo, [np.arange(10.0), np.arange(10.0)], 1)  # workers import numpy

    def once() -> float:
        t0 = time.perf_counter()
        r = runner.map(echo, arrays, 1)
        dt = time.perf_counter() - t0
        check(len(r) == count, "numpy: count")
        for k, a in enumerate(r):
            check(a.shape == (n,) and a[0] == k and a[-1] == k, "numpy: content")
        del r
        return dt

    return once, []


def numpy_everywhere(runner: _libs.Adapter) -> None:
    """Every worker imports numpy before the timing (sleeping tasks reach every worker)."""
    runner.map(nap_numpy, [0.25] * (2 * _libs.WORKERS), 1)


def np_arrays(count: int, n: int) -> list:
    """``count`` float64 arrays of ``n`` items, array k full of k (so a result names its array)."""
    import numpy as np

    return [np.full(n, float(k)) for k in range(count)]


def row_np_sum(runner: _libs.Adapter, p: dict) -> tuple[Callable[[], float], list[str]]:
    """Arrays as arguments, a float back: the data travels one way (to the workers)."""
    count, n = p["np_count"], p["np_mib"] * 2**20 // 8
    arrays = np_arrays(count, n)
    numpy_everywhere(runner)

    def once() -> float:
        t0 = time.perf_counter()
        r = runner.map(total, arrays, 1)
        dt = time.perf_counter() - t0
        check(list(r) == [float(k * n) for k in range(count)], "np_sum: sums")
        return dt

    return once, []


def row_np_apply(runner: _libs.Adapter, p: dict) -> tuple[Callable[[], float], list[str]]:
    """One big array as the argument of apply; a float back."""
    import numpy as np

    n = p["np_big_n"]
    arr = np.ones(n)
    numpy_everywhere(runner)

    def once() -> float:
        t0 = time.perf_counter()
        r = runner.apply(total, (arr,))
        dt = time.perf_counter() - t0
        check(r == float(n), f"np_apply: sum {r!r}")
        return dt

    return once, []


def row_np_return(runner: _libs.Adapter, p: dict) -> tuple[Callable[[], float], list[str]]:
    """A big array made in the worker and returned: the data travels back only."""
    n = p["np_big_n"]
    numpy_everywhere(runner)

    def once() -> float:
        t0 = time.perf_counter()
        r = runner.apply(make_ones, (n,))
        dt = time.perf_counter() - t0
        step = max(1, n // 1000)
        check(r.shape == (n,) and r.dtype.kind == "f", f"np_return: shape {r.shape}")
        check(r[-1] == 1.0 and float(r[::step].sum()) == len(range(0, n, step)), "np_return")
        del r
        return dt

    return once, []


ROWS = {
    "map": row_map,
    "imap": row_imap,
    "apply": row_apply,
    "cpu": row_cpu,
    "numpy": row_numpy,
    "np_sum": row_np_sum,
    "np_apply": row_np_apply,
    "np_return": row_np_return,
}


def rss_row(runner: _libs.Adapter) -> dict[str, Any]:
    import psutil

    time.sleep(0.5)  # let workers settle after the warm-up
    mb = 1e6
    pids = runner.pids()
    me = psutil.Process()
    # Processes the pool started besides its workers (a resource tracker; Ray's GCS, raylet,
    # agents and idle workers): not in the rows, given in the notes.
    others = [c for c in me.children(recursive=True) if c.pid not in pids]
    other_mb = 0.0
    for c in others:
        try:
            other_mb += c.memory_info().rss / mb
        except psutil.Error:
            pass
    notes = []
    if others:
        notes.append(f"{len(others)} other process(es) of the pool, not counted: {other_mb:.0f} MB")
    return {
        "caller_mb": me.memory_info().rss / mb,
        "workers_mb": [psutil.Process(pid).memory_info().rss / mb for pid in pids],
        "notes": notes,
    }


def serve(runner: _libs.Adapter, row: str, p: dict, notes: list[str]) -> list[str]:
    """Answer the runner: one repetition per ``run`` line on stdin, until ``stop`` or EOF."""
    once, row_notes = ROWS[row](runner, p)
    print("@@READY " + json.dumps(notes + row_notes), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stop":
            break
        if cmd == "run-fresh" and runner.key != "serial":
            runner.stop()  # new worker processes for this repetition (untimed)
            runner.start()
            warm_up(runner)
        if cmd in ("run", "run-fresh"):
            print(f"@@REP {once()!r}", flush=True)
    return []


def main() -> None:
    lib, row, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    runner = _libs.make(lib)
    out: dict[str, Any] = {}
    try:
        runner.start()
        notes = warm_up(runner)
        if row == "rss":
            out = rss_row(runner)
            out["notes"] = notes + out["notes"]
        else:
            out = {"notes": serve(runner, row, params, notes)}
    except BaseException as e:
        traceback.print_exc(file=sys.stderr)
        reason = f"{type(e).__name__}: {e}".strip().splitlines()[0]
        try:
            runner.close()  # stop a local Ray, remove our folder; the runner kills the rest
        except Exception:
            pass
        print(f"@@ERROR {reason[:120]}", flush=True)
        raise SystemExit(1) from None
    for step in (runner.stop, runner.close):
        try:
            step()
        except Exception as e:  # a peer that fails to shut down still produced its timings
            out["notes"].append(f"shutdown failed: {type(e).__name__}: {e}"[:120])
    print("@@RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
