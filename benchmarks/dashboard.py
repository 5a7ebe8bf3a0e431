"""What the live dashboard costs: pool.map timed in a real Jupyter kernel, with and without it.

Run from the repository root::

    .venv/bin/python benchmarks/dashboard.py            # or: make bench (after run.py)
    .venv/bin/python benchmarks/dashboard.py --quick    # repeat 3, 200,000 items (a smoke run)

A kernel is started with jupyter_client (``python3`` kernel, isolated HOME/Jupyter/IPython
dirs), and this process consumes its IOPub traffic, as a frontend does. In the kernel,
``pool = nbpool.Pool(2)`` maps two workloads of 1,000,000 items, each with ``progress=False``
(the baseline), ``"auto"`` (the default: the dashboard appears after 0.5 s) and ``True`` (the
dashboard from the start). Each call is timed inside the kernel with ``time.perf_counter()``;
the variants are interleaved round-robin. The table is printed and written as markdown to
``benchmarks/results/dashboard.md``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _libs import compile_nbpool  # noqa: E402
from run import fmt_seconds, md_table, text_table, versions, write_markdown  # noqa: E402

WORKERS = 2
DISTS = ("nbpool", "ipykernel", "jupyter_client", "anywidget", "ipywidgets")
VARIANTS: tuple[bool | str, ...] = (False, "auto", True)
# Serial time of one ``small`` item (calibrated): 1,000,000 of them take ~1.5 s on 2 workers.
SMALL_US = 2.8
STARTUP_TIMEOUT_S = 60.0
SETUP_TIMEOUT_S = 120.0

SETUP = f"import nbpool, time\npool = nbpool.Pool({WORKERS})\ndef sq(x):\n    return x * x\n"
# One timed call. The result is checked and dropped outside the timed region; process_time()
# is the kernel process's CPU (all its threads: the waiting cell, dispatcher and view thread).
CALL = (
    "_c0 = time.process_time()\n"
    "_t0 = time.perf_counter()\n"
    "_r = pool.map({fn}, range({n}), progress={progress!r})\n"
    "_dt = time.perf_counter() - _t0\n"
    "_cpu = time.process_time() - _c0\n"
    "assert len(_r) == {n} and _r[-1] == {fn}({n} - 1), 'wrong result'\n"
    "del _r\n"
    "print('@@T', repr(_dt), repr(_cpu))\n"
)


def small_source(loops: int) -> str:
    """A tiny pure-Python task: ``loops`` additions (~2 µs for the calibrated count)."""
    return (
        "def small(x):\n"
        "    s = 0\n"
        f"    for i in range({loops}):\n"
        "        s += i\n"
        "    return s + x\n"
    )


def label(progress: bool | str) -> str:
    return repr(progress) if isinstance(progress, str) else str(progress)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------- the kernel


def isolated_env(tmp: str) -> dict[str, str]:
    """This process's environment, minus PYTEST*, with every config/data dir under ``tmp``."""
    dirs = {
        "HOME": "home",
        "JUPYTER_CONFIG_DIR": "jconfig",
        "JUPYTER_DATA_DIR": "jdata",
        "JUPYTER_RUNTIME_DIR": "jruntime",
        "IPYTHONDIR": "ipython",
        "XDG_CACHE_HOME": "cache",
        "XDG_CONFIG_HOME": "config",
        "XDG_DATA_HOME": "data",
        "XDG_RUNTIME_DIR": "xdgruntime",
        "MPLCONFIGDIR": "mpl",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    for var, sub in dirs.items():
        path = os.path.join(tmp, sub)
        os.makedirs(path, mode=0o700, exist_ok=True)
        env[var] = path
    return env


@dataclass
class CellRun:
    stdout: str
    counts: Counter  # IOPub message types seen for the cell (status and the like included)


def run_cell(kc: Any, code: str, timeout: float) -> CellRun:
    """Execute ``code``; its stdout and a count of its IOPub messages, by type."""
    out: list[str] = []
    errors: list[str] = []
    counts: Counter = Counter()

    def hook(msg: dict[str, Any]) -> None:
        kind = msg["msg_type"]
        counts[kind] += 1
        if kind == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])
        elif kind == "error":
            errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

    try:
        reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    except TimeoutError:
        lines = code.splitlines()
        what = next((ln for ln in lines if "pool.map" in ln), lines[0])
        raise BenchError(f"cell did not finish within {timeout:g} s: {what}") from None
    if reply["content"]["status"] != "ok":
        raise BenchError("cell failed: " + ("; ".join(errors) or str(reply["content"])))
    return CellRun("".join(out), counts)


def timed_call(kc: Any, fn: str, n: int, progress: bool | str, timeout: float) -> tuple:
    """Seconds and kernel CPU seconds of one ``pool.map`` call, and its IOPub message counts."""
    cell = run_cell(kc, CALL.format(fn=fn, n=n, progress=progress), timeout)
    lines = [ln for ln in cell.stdout.splitlines() if ln.startswith("@@T ")]
    if not lines:
        raise BenchError(f"no timing printed; stdout was {cell.stdout[-200:]!r}")
    seconds, cpu = map(float, lines[-1].split()[1:3])
    return seconds, cpu, cell.counts


# ---------------------------------------------------------------------------- measurements


@dataclass
class Cell:
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    comm_msgs: list[int] = field(default_factory=list)
    displays: list[int] = field(default_factory=list)  # display_data + update_display_data
    iopub: list[int] = field(default_factory=list)  # every IOPub message of the cell


def serial_us(kc: Any, timeout: float) -> float:
    """Microseconds per call of ``small`` in the kernel, serially: the fastest of 5 runs."""
    cell = run_cell(
        kc,
        "_ts = []\n"
        "for _k in range(5):\n"
        "    _t0 = time.perf_counter()\n"
        "    for _i in range(20_000):\n"
        "        small(_i)\n"
        "    _ts.append(time.perf_counter() - _t0)\n"
        "print('@@T', repr(min(_ts) / 20_000 * 1e6))\n",
        timeout,
    )
    return float(cell.stdout.split("@@T ")[-1].split()[0])


def calibrate_small(kc: Any, timeout: float, log) -> int:
    """Define ``small`` with the loop count that takes SMALL_US serially in the kernel (a line
    through two measured counts, then one correction); return that count. Serial timings are
    steadier here than pool timings, which a burst of load from elsewhere can double."""
    points = []
    for loops in (50, 400):
        run_cell(kc, small_source(loops), timeout)
        points.append((loops, serial_us(kc, timeout)))
        log(f"calibration: small with {loops} loops: {points[-1][1]:.2f} µs per item serially")
    (l0, t0), (l1, t1) = points
    per_loop = max((t1 - t0) / (l1 - l0), 1e-6)
    loops = max(1, round(l0 + (SMALL_US - t0) / per_loop))
    run_cell(kc, small_source(loops), timeout)
    t = serial_us(kc, timeout)  # one proportional correction, at most 30% either way
    log(f"calibration: small with {loops} loops: {t:.2f} µs per item serially")
    if abs(t - SMALL_US) > 0.05 * SMALL_US:
        loops = max(1, round(loops * min(1.3, max(0.7, SMALL_US / t))))
        run_cell(kc, small_source(loops), timeout)
    return loops


def measure(
    kc: Any, workloads: dict[str, str], n: int, args: argparse.Namespace, log
) -> tuple[dict[tuple[str, bool | str], Cell], str | None]:
    """Every (workload, variant) ``args.repeat`` times, variants round-robin; an error stops
    the run (the kernel may be stuck) and is returned with whatever was measured."""
    cells = {(w, v): Cell() for w in workloads for v in VARIANTS}
    try:
        for rnd in range(args.repeat):
            for w, fn in workloads.items():
                k = rnd % len(VARIANTS)
                for v in VARIANTS[k:] + VARIANTS[:k]:  # rotate who goes first
                    seconds, cpu, counts = timed_call(kc, fn, n, v, args.timeout)
                    c = cells[(w, v)]
                    c.times.append(seconds)
                    c.cpu.append(cpu)
                    c.comm_msgs.append(counts["comm_msg"])
                    c.displays.append(counts["display_data"] + counts["update_display_data"])
                    c.iopub.append(sum(counts.values()))
            log(f"round {rnd + 1}/{args.repeat} done")
    except BenchError as exc:
        return cells, str(exc)
    return cells, None


# ---------------------------------------------------------------------------- report


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "nbpool", "js"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" + uncommitted changes in nbpool/ or js/" if dirty else "")


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3f}" if a and b else "—"


def raw_table(
    cells: dict[tuple[str, bool | str], Cell], workloads: dict[str, str]
) -> tuple[list[str], list[list[str]]]:
    """Every call's seconds, one line per round: to see load bursts that hit a whole round."""
    keys = [(w, v) for w in workloads for v in VARIANTS]
    head = ["round", *(f"{w.split(' ')[0]} {label(v)}" for w, v in keys)]
    rounds = max((len(cells[k].times) for k in keys), default=0)
    body = [
        [
            str(i + 1),
            *(fmt_seconds(t[i]) if i < len(t) else "—" for t in (cells[k].times for k in keys)),
        ]
        for i in range(rounds)
    ]
    return head, body


def build_table(
    cells: dict[tuple[str, bool | str], Cell], workloads: dict[str, str]
) -> tuple[list[str], list[list[str]], dict[tuple[str, bool | str], tuple[float, float]]]:
    head = [
        "workload",
        "progress",
        "median s",
        "min-max s",
        "ratio",
        "paired ratio",
        "min ratio",
        "kernel CPU s",
        "comm_msg/call",
        "updates/s",
        "IOPub msgs/call",
        "n",
    ]
    body = []
    ratios: dict[tuple[str, bool | str], tuple[float, float]] = {}
    for w in workloads:
        base = cells[(w, False)]
        base_med = statistics.median(base.times) if base.times else None
        for v in VARIANTS:
            c = cells[(w, v)]
            if not c.times:
                body.append([w, label(v), *["—"] * 9, "0"])
                continue
            med = statistics.median(c.times)
            # Paired: this call against the baseline call of the same round (same load).
            pairs = [t / b for t, b in zip(c.times, base.times, strict=False)]
            paired = statistics.median(pairs) if pairs else None
            if v is not False and base_med and paired:
                ratios[(w, v)] = (med / base_med, paired)
            rates = [m / t for m, t in zip(c.comm_msgs, c.times, strict=True) if t > 0]
            body.append(
                [
                    w,
                    label(v),
                    fmt_seconds(med),
                    f"{fmt_seconds(min(c.times))}-{fmt_seconds(max(c.times))}",
                    "1 (baseline)" if v is False else ratio(med, base_med),
                    "—" if v is False or paired is None else f"{paired:.3f}",
                    "—" if v is False or not base.times else ratio(min(c.times), min(base.times)),
                    fmt_seconds(statistics.median(c.cpu)),
                    f"{statistics.median(c.comm_msgs):g}",
                    f"{statistics.median(rates):.1f}" if rates else "—",
                    f"{statistics.median(c.iopub):g}",
                    str(len(c.times)),
                ]
            )
    return head, body, ratios


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=None, help="calls per variant (default 9)")
    ap.add_argument("--quick", action="store_true", help="repeat 3 and 200,000 items")
    ap.add_argument(
        "--items", type=int, default=None, help="items per map (default 1,000,000; quick 200,000)"
    )
    ap.add_argument(
        "--small-loops",
        type=int,
        default=None,
        help="loop count of the small task (default: calibrated at start-up)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="hard limit in seconds for one cell in the kernel (default 120)",
    )
    ap.add_argument("--output", type=Path, default=HERE / "results" / "dashboard.md")
    args = ap.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 9
    if args.items is None:
        args.items = 200_000 if args.quick else 1_000_000
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.items < 1:
        ap.error("--items must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_start = os.getloadavg()
    compile_nbpool()

    def log(what: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] {what}", flush=True)

    from jupyter_client.manager import start_new_kernel

    n = args.items
    commit = git_commit()
    print(
        f"nbpool dashboard benchmark: {WORKERS} workers, {n:,} items, repeat {args.repeat}; "
        f"{versions(DISTS)}; nbpool commit {commit}",
        flush=True,
    )
    error: str | None = None
    cells: dict[tuple[str, bool | str], Cell] = {}
    workloads = {"1 map sq": "sq", "2 map small": "small"}
    loops, small_us = args.small_loops or 0, 0.0
    with tempfile.TemporaryDirectory(prefix="nbpool-dash-") as tmp:
        env = isolated_env(tmp)
        # The connection file is written by this process, into the runtime dir.
        os.environ["JUPYTER_RUNTIME_DIR"] = env["JUPYTER_RUNTIME_DIR"]
        km, kc = start_new_kernel(
            kernel_name="python3", cwd=tmp, env=env, startup_timeout=STARTUP_TIMEOUT_S
        )
        try:
            log("kernel started")
            run_cell(kc, SETUP, SETUP_TIMEOUT_S)
            # Imports anywidget and creates a first widget: later calls pay no import.
            timed_call(kc, "sq", 1000, True, SETUP_TIMEOUT_S)
            if args.small_loops:
                run_cell(kc, small_source(loops), SETUP_TIMEOUT_S)
            else:
                loops = calibrate_small(kc, args.timeout, log)
            small_us = serial_us(kc, args.timeout)
            log(f"small: {loops} loops, {small_us:.2f} µs per item serially in the kernel")
            for fn in workloads.values():  # warm-up, untimed
                timed_call(kc, fn, n, False, args.timeout)
            log("warmed up")
            cells, error = measure(kc, workloads, n, args, log)
        except BenchError as exc:
            error = str(exc)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
            km.cleanup_resources()
    load_end = os.getloadavg()
    total = time.monotonic() - started
    if error:
        log(f"ERROR: {error}")

    head, body, ratios = build_table(cells, workloads) if cells else ([], [], {})
    notes = [
        f"Each call: `pool.map(fn, range({n:,}), progress=P)` in a Jupyter kernel (ipykernel, "
        f"jupyter_client; `nbpool.Pool({WORKERS})`), timed inside the kernel with "
        "time.perf_counter(); this process consumes the kernel's IOPub messages, as a "
        "frontend does. Variants are interleaved round-robin (rotating who goes first); after "
        "one warm-up call with progress=True (anywidget imported) and one per workload with "
        "progress=False.",
        "progress: False = no dashboard (the baseline); 'auto' = the default (in a notebook the "
        "dashboard appears once a call has run 0.5 s); True = the dashboard from the start.",
        "ratio = median / baseline median (> 1: slower with the dashboard); paired ratio = "
        "median over rounds of (this call / the baseline call of the same round); min ratio = "
        "fastest call / fastest baseline call. "
        "kernel CPU s = time.process_time() of the kernel process over the call (every thread: "
        "the cell, nbpool's dispatcher and view thread, ipykernel's IOPub thread). "
        "comm_msg/call = widget updates received for the call; updates/s = comm_msg / seconds; "
        "IOPub msgs/call = every IOPub message of the cell (status, stream, comm_open, "
        "display_data, comm_msg, ...).",
        f"1 map sq: sq(x) = x * x. 2 map small: a loop of {loops} additions, "
        + (f"{small_us:.2f} µs per item serially in the kernel" if small_us else "not measured")
        + (
            " (--small-loops)."
            if args.small_loops
            else f" (loop count calibrated for {SMALL_US:g} µs: 1,000,000 items should take "
            f"~{SMALL_US / WORKERS:g} s of work per worker, plus the pool's own cost)."
        ),
        "Load average (1, 5, 15 min) "
        + ", ".join(f"{x:.2f}" for x in load_start)
        + " at start, "
        + ", ".join(f"{x:.2f}" for x in load_end)
        + f" at end, on {os.cpu_count()} CPUs (the run itself keeps ~{WORKERS} CPUs busy: the "
        "workers, the kernel and this client); anything else running makes the numbers "
        "noisier (compare min-max and the per-round table).",
        f"nbpool commit {commit}.",
    ]
    if error:
        notes.append(f"The run stopped early: {error}")
    summary_lines = [
        f"{w}, progress={label(v)}: {r:.3f} (paired {p:.3f})" for (w, v), (r, p) in ratios.items()
    ]
    summary = f"Total runtime {total:.0f} s ({time.strftime('%Y-%m-%d %H:%M:%S')})."

    print()
    print(f"nbpool dashboard cost — {versions(DISTS)}")
    print()
    if body:
        print(text_table(head, body))
        print()
    print("Median ratios, dashboard / no dashboard (> 1: slower):")
    for line in summary_lines:
        print(f"  {line}")
    print()
    for note in notes:
        print(f"- {note}")
    print()
    print(summary)

    md = [
        "# nbpool dashboard cost",
        "",
        f"{versions(DISTS)}. Produced by `benchmarks/dashboard.py` (repeat {args.repeat}, "
        f"{n:,} items" + (", --quick" if args.quick else "") + f"). {summary}",
        "",
        "## Seconds per call, with and without the dashboard",
        "",
        md_table(head, body) if body else "(nothing measured)",
        "",
        "## Every call (seconds), by round",
        "",
        md_table(*raw_table(cells, workloads)) if body else "(nothing measured)",
        "",
        "## Median ratios, dashboard / no dashboard (> 1: slower)",
        "",
        *(f"- {line}" for line in summary_lines),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in notes),
        "",
    ]
    write_markdown(args.output, md)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
