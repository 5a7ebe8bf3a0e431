"""nbpool benchmark suite: nbpool against the stdlib and its peers, side by side, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/run.py            # or: make bench
    .venv/bin/python benchmarks/run.py --quick    # repeat 2, smaller sizes (a smoke run)

Every measurement runs in a child interpreter (``_cold.py`` for cold starts, ``_rows.py`` for
everything else), with the repetitions of all libraries interleaved round-robin and every
answer under a timeout; a child that fails or hangs is reported as ``failed: ...`` in its cell
and the run goes on. The tables are printed and written as markdown to
``benchmarks/results/latest.md``, the results as JSON next to it (``latest.json``), and
``plot.py`` draws the ratios from that JSON (``ratios.png``). See ``benchmarks/README.md`` for
what each row measures.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _libs  # noqa: E402
import plot  # noqa: E402
from _tasks import spin  # noqa: E402

PEERS = [lib for lib in _libs.LIBS if lib != "nbpool"]
COLD_ROWS = ("cold", "second", "later")  # one fresh interpreter per measurement (_cold.py)
WARM_ROWS = ("map", "imap", "apply", "cpu", "numpy", "np_sum", "np_apply", "np_return")
TIMED_ROWS = (*COLD_ROWS, *WARM_ROWS)
RSS_ROWS = ("rss_caller", "rss_worker", "rss_total")
ALL_ROWS = (*TIMED_ROWS, "rss")
# The in-process baseline only makes sense where the work itself is the point.
SERIAL_ROWS = {"map", "imap", "cpu"}
NUMPY_ROWS = ("numpy", "np_sum", "np_apply", "np_return")


FRESH_POOL_ROWS = {"cpu"}  # rows whose every repetition gets new worker processes


@dataclass
class Cell:
    times: list[float] = field(default_factory=list)
    value: float | None = None  # for the RSS rows (MB)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        if self.error:
            return None
        if self.value is not None:
            return self.value
        return statistics.median(self.times) if self.times else None

    @property
    def minimum(self) -> float | None:
        return min(self.times) if self.times and not self.error else None

    @property
    def maximum(self) -> float | None:
        return max(self.times) if self.times and not self.error else None


# ---------------------------------------------------------------------------- child processes


def _kill_tree(pid: int, pgid: int) -> None:
    """Kill a child we started, everything it started and whatever is left in its group."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    psutil.wait_procs(procs, timeout=5)


def _stragglers(pgid: int) -> list[int]:
    """Processes still alive in the group of a child that has exited (its workers, trackers),
    or in its session: Ray puts each actor's process in a process group of its own."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            ours = os.getpgid(p.pid) == pgid or os.getsid(p.pid) == pgid
            if ours and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def _reap_group(pgid: int) -> list[str]:
    """After a child exited: its workers should go too; give them a moment, then make sure."""
    deadline = time.monotonic() + 5
    left = _stragglers(pgid)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _stragglers(pgid)
    if not left:
        return []
    for pid in left:  # the session's other groups (Ray's actors) are not in pgid
        _kill_tree(pid, pgid)
    return [f"{len(left)} process(es) outlived the pool and were killed"]


# The children (each library's rows) run in an empty folder: the task module (benchmarks/
# _tasks.py, found through the script's own folder on sys.path) then counts as an installed
# module, which every library pickles by reference. From the repository root it would be a
# module next to the caller's working directory, which nbpool ships by value (its code as the
# caller has it; see docs/user-guide.md), and nbpool alone would pay for that.
CHILD_CWD = tempfile.mkdtemp(prefix="nbpool-bench-")
atexit.register(shutil.rmtree, CHILD_CWD, True)


class Child:
    """A ``_rows.py`` child driven line by line, every answer under a deadline."""

    def __init__(self, args: list[str]) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 (closed in finish/kill)
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=CHILD_CWD,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            start_new_session=True,  # its own process group: the whole tree can be killed
        )
        self.buf = b""
        self.error: str | None = None
        self.notes: list[str] = []

    def _fail(self, reason: str) -> None:
        self.error = self.error or reason
        _kill_tree(self.proc.pid, self.proc.pid)
        self.proc.wait()
        self.notes += _reap_group(self.proc.pid)

    def _death(self) -> str:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return "closed its output but did not exit"
        self.err.seek(0)
        lines = [ln for ln in self.err.read().decode(errors="replace").splitlines() if ln.strip()]
        if code < 0:
            return f"killed by signal {-code}"
        return lines[-1].strip()[:120] if lines else f"exited with status {code}"

    def expect(self, prefix: str, timeout: float) -> str | None:
        """The rest of the next line starting with ``prefix``; None (and self.error) if none."""
        if self.error:
            return None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            while b"\n" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._fail(f"timeout after {timeout:g} s")
                    return None
                if select.select([fd], [], [], left)[0]:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        self._fail(self._death())
                        return None
                    self.buf += chunk
            raw, _, self.buf = self.buf.partition(b"\n")
            line = raw.decode(errors="replace")
            if line.startswith("@@ERROR "):
                self._fail(line[len("@@ERROR ") :])
                return None
            if line.startswith(prefix):
                return line[len(prefix) :]

    def send(self, command: str) -> bool:
        if self.error:
            return False
        try:
            self.proc.stdin.write(command.encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except OSError:
            self._fail(self._death())
            return False
        return True

    def finish(self, timeout: float = 30.0) -> list[str]:
        """Ask the child to shut its pool down; return notes (shutdown trouble, stragglers)."""
        if not self.error and self.send("stop"):
            result = self.expect("@@RESULT ", timeout)
            if result is not None:
                self.notes += json.loads(result).get("notes", [])
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.notes.append("did not exit after shutting down; killed")
                    _kill_tree(self.proc.pid, self.proc.pid)
                    self.proc.wait()
                self.notes += _reap_group(self.proc.pid)
            else:
                self.notes.append(f"shutdown: {self.error}")
        self.err.close()
        return self.notes

    def kill(self) -> None:
        if self.proc.poll() is None:
            _kill_tree(self.proc.pid, self.proc.pid)
            self.proc.wait()
        self.err.close()


def run_child(args: list[str], timeout: float) -> tuple[str, str, str | None, list[str]]:
    """Run ``python args...`` in its own session; return stdout, stderr, error, notes."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=CHILD_CWD,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the whole tree can be killed
    )
    error = None
    notes: list[str] = []
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid, proc.pid)
        out, err = proc.communicate()
        error = f"timeout after {timeout:g} s"
    except BaseException:  # Ctrl-C: the child has its own session and did not get SIGINT
        _kill_tree(proc.pid, proc.pid)
        raise
    notes += _reap_group(proc.pid)
    if error is None and proc.returncode != 0:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        marked = [ln[len("@@ERROR ") :] for ln in out.splitlines() if ln.startswith("@@ERROR ")]
        if marked:
            error = marked[-1]
        elif proc.returncode < 0:
            error = f"killed by signal {-proc.returncode}"
        else:
            error = lines[-1][:120] if lines else f"exit status {proc.returncode}"
    return out, err, error, notes


def short(reason: str, width: int = 40) -> str:
    return reason if len(reason) <= width else reason[: width - 3] + "..."


# ---------------------------------------------------------------------------- measurements


def calibrate(target_s: float = 0.020) -> tuple[int, float]:
    """Loop count for ``spin`` that takes ``target_s`` here; and the measured time of it."""

    def best(n: int, reps: int) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            spin(n)
            times.append(time.perf_counter() - t0)
        return min(times)

    n = 10_000
    while (t := best(n, 3)) < 0.005:
        n *= 2
    iters = max(1, round(n * target_s / t))
    return iters, best(iters, 5)


def measure_cold(row: str, libs: list[str], repeat: int, timeout: float, log) -> dict[str, Cell]:
    """Row ``cold`` (first pool in a fresh interpreter), ``second`` (a second pool there, at
    once) or ``later`` (a second pool 1 s after the first ended)."""
    cells = {lib: Cell() for lib in libs}
    mode = [row] if row in ("second", "later") else []
    for rnd in range(repeat):  # round-robin: machine noise spreads over every library
        k = rnd % len(libs) if libs else 0
        for lib in libs[k:] + libs[:k]:  # rotate who goes first
            cell = cells[lib]
            if cell.error:
                continue
            out, _err, error, notes = run_child([str(HERE / "_cold.py"), lib, *mode], timeout)
            cell.notes += [n for n in notes if n not in cell.notes]
            if error is None:
                try:
                    cell.times.append(float(out.strip().splitlines()[-1]))
                except (ValueError, IndexError):
                    error = f"unreadable output: {out.strip()[:60]!r}"
            if error:
                cell.error = error
    for lib in libs:
        log(row, lib, cells[lib])
    return cells


def measure_rss(lib: str, params: dict) -> Cell:
    out, _err, error, notes = run_child(
        [str(HERE / "_rows.py"), lib, "rss", json.dumps(params)], 60.0
    )
    cell = Cell(notes=notes)
    results = [ln for ln in out.splitlines() if ln.startswith("@@RESULT ")]
    if error or not results:
        cell.error = error or "no result printed"
        return cell
    data = json.loads(results[-1][len("@@RESULT ") :])
    cell.notes = data.get("notes", []) + notes
    cell.value = data["caller_mb"]
    cell.times = data["workers_mb"]  # a plain list of numbers here, not times
    return cell


def measure_timed_row(
    row: str, libs: list[str], params: dict, args: argparse.Namespace, log
) -> dict[str, Cell]:
    """Warm pools for every library at once, repetitions interleaved round-robin."""
    cells = {lib: Cell() for lib in libs}
    children: dict[str, Child] = {}
    try:
        for lib in libs:  # one after another: start-ups never overlap a measurement
            child = Child([str(HERE / "_rows.py"), lib, row, json.dumps(params)])
            ready = child.expect("@@READY ", 120.0)
            if ready is None:
                cells[lib].error = child.error
                cells[lib].notes += child.notes
                child.kill()
                continue
            cells[lib].notes += json.loads(ready)
            children[lib] = child
        spent = dict.fromkeys(children, 0.0)
        active = list(children)
        for rnd in range(args.repeat):
            k = rnd % len(active) if active else 0
            for lib in active[k:] + active[:k]:  # rotate who goes first
                child, cell = children[lib], cells[lib]
                t0 = time.monotonic()
                # CPU-bound items run a few % faster or slower in one set of worker processes than
                # in another (memory layout; seen here as +-10% per process): give every
                # repetition of that row fresh workers, so a median samples many of them.
                command = "run-fresh" if row in FRESH_POOL_ROWS else "run"
                answer = child.expect("@@REP ", args.timeout) if child.send(command) else None
                spent[lib] += time.monotonic() - t0
                if answer is None:
                    cell.error = child.error or "no answer"
                    active.remove(lib)
                    continue
                cell.times.append(float(answer))
                typical = statistics.median(cell.times)
                if rnd + 1 < args.repeat and spent[lib] + typical > args.budget:
                    cell.notes.append(
                        f"repeats lowered to {len(cell.times)} of {args.repeat} "
                        f"(row > {args.budget:g} s)"
                    )
                    active.remove(lib)
        for lib, child in children.items():
            notes = child.finish()
            cells[lib].notes += [n for n in notes if n not in cells[lib].notes]
    finally:
        for child in children.values():
            child.kill()
    for lib in libs:
        log(row, lib, cells[lib])
    return cells


def split_rss(cell: Cell) -> dict[str, Cell]:
    if cell.error:
        return {r: Cell(error=cell.error, notes=cell.notes) for r in RSS_ROWS}
    caller, workers = cell.value or 0.0, cell.times
    notes = list(cell.notes)
    if len(workers) != _libs.WORKERS:
        notes.append(f"{len(workers)} worker pid(s) found")
    mean = statistics.mean(workers) if workers else None
    return {
        "rss_caller": Cell(value=caller, notes=notes),
        "rss_worker": Cell(value=mean) if mean is not None else Cell(error="no worker pids"),
        "rss_total": Cell(value=caller + sum(workers)),
    }


# ---------------------------------------------------------------------------- report


def fmt_seconds(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    decimals = min(6, max(0, 2 - math.floor(math.log10(v)))) if v > 0 else 3
    return f"{v:.{decimals}f}"


def fmt_value(row: str, v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}" if row.startswith("rss") else fmt_seconds(v)


def ratio(cells: dict[str, Cell], peer: str) -> float | None:
    """The peer's median / nbpool's (the table's ratio columns and the plot's bars)."""
    nb, cell = cells.get("nbpool"), cells.get(peer)
    nb_med = nb.median if nb else None
    med = cell.median if cell else None
    return med / nb_med if med and nb_med else None


def fmt_range(row: str, cell: Cell) -> str:
    """``min-max (n=reps)``; the RSS rows are one measurement each."""
    if row.startswith("rss"):
        return fmt_value(row, cell.median)
    lo, hi = fmt_value(row, cell.minimum), fmt_value(row, cell.maximum)
    return f"{lo}-{hi} (n={len(cell.times)})"


def build_tables(
    results: dict[str, dict[str, Cell]], labels: dict[str, str], libs: list[str]
) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """The medians with the ratio columns; and the range (min–max) of every cell."""
    peers = [lib for lib in libs if lib != "nbpool"]
    head = ["row", *(_libs.LABELS[lib] for lib in libs)]
    head += [f"{_libs.LABELS[p]}/nb" for p in peers]
    body = []
    range_head = ["row", *(_libs.LABELS[lib] for lib in libs)]
    range_body = []
    for row, label in labels.items():
        cells = results.get(row, {})
        line, range_line = [label], [label]
        for lib in libs:
            cell = cells.get(lib)
            if cell is None:
                line.append("—")
                range_line.append("—")
            elif cell.error:
                line.append("failed: " + short(cell.error))
                range_line.append("failed")
            else:
                line.append(fmt_value(row, cell.median))
                range_line.append(fmt_range(row, cell))
        for p in peers:
            r = ratio(cells, p)
            line.append(f"{r:.2f}" if r is not None else "—")
        body.append(line)
        range_body.append(range_line)
    return head, body, range_head, range_body


def text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, body)])


def md_table(head: list[str], body: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, head)) + " |"]
    lines.append("|" + "|".join([":---", *["---:"] * (len(head) - 1)]) + "|")
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in body]
    return "\n".join(lines)


DISTS = ("nbpool", "mpire", "loky", "ray", "distributed", "cloudpickle", "numpy")


def versions(dists: tuple[str, ...] = DISTS) -> str:
    parts = [f"Python {platform.python_version()}", f"{os.cpu_count()} CPUs", platform.system()]
    for dist in dists:
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


def write_whole(path: Path, text: str) -> None:
    """Write a file whole or not at all (a half-written file would look like a result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_markdown(path: Path, lines: list[str]) -> None:
    write_whole(path, "\n".join(lines))
    print(f"Markdown written to {path}")


def results_json(
    results: dict[str, dict[str, Cell]],
    labels: dict[str, str],
    libs: list[str],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Everything the markdown tables show, for ``plot.py`` (which draws ``ratios``)."""
    rows = {}
    for row, label in labels.items():
        cells = results.get(row, {})
        rows[row] = {
            "label": label,
            "unit": "MB" if row.startswith("rss") else "s",
            "cells": {
                lib: {
                    "median": cell.median,
                    "min": cell.minimum if not row.startswith("rss") else cell.median,
                    "max": cell.maximum if not row.startswith("rss") else cell.median,
                    "times": [] if row.startswith("rss") else cell.times,
                    "error": cell.error,
                    "notes": cell.notes,
                }
                for lib, cell in cells.items()
            },
            "ratios": {p: ratio(cells, p) for p in libs if p != "nbpool" and p in cells},
        }
    labels_of = {lib: _libs.LABELS[lib] for lib in libs}
    return {"meta": meta, "libs": libs, "lib_labels": labels_of, "rows": rows}


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=None, help="repetitions per cell (default 5)")
    ap.add_argument("--quick", action="store_true", help="repeat 2 and smaller sizes")
    ap.add_argument("--libs", default=",".join(_libs.LIBS), help="comma-separated subset")
    ap.add_argument("--skip", default="", help="libraries to leave out, e.g. ray,dask")
    ap.add_argument("--rows", default=",".join(ALL_ROWS), help="comma-separated subset")
    ap.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds a row may take per library before its repeats are lowered (default 60)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="hard limit in seconds for one repetition of one library (default 300)",
    )
    ap.add_argument(
        "--output",
        type=Path,
        default=HERE / "results" / "latest.md",
        help="the markdown; the JSON goes beside it (.json), the plot too (plot.plot_path)",
    )
    args = ap.parse_args(argv)
    if args.repeat is None:
        args.repeat = 2 if args.quick else 5
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    args.libs = [x for x in args.libs.split(",") if x]
    args.skip = [x for x in args.skip.split(",") if x]
    args.rows = [x for x in args.rows.split(",") if x]
    for lib in args.libs + args.skip:
        if lib not in _libs.LIBS:
            ap.error(f"unknown library {lib!r}; choose from {', '.join(_libs.LIBS)}")
    for row in args.rows:
        if row not in ALL_ROWS:
            ap.error(f"unknown row {row!r}; choose from {', '.join(ALL_ROWS)}")
    return args


def sizes(quick: bool, iters: int) -> dict[str, int]:
    return {
        "map_n": 100_000 if quick else 1_000_000,
        "imap_n": 10_000 if quick else 100_000,
        "apply_n": 200 if quick else 1_000,
        "cpu_items": 40 if quick else 200,
        "cpu_iters": iters,
        "np_count": 4 if quick else 8,
        "np_mib": 10 if quick else 50,
        "np_big_n": 6_250_000 if quick else 50_000_000,  # float64: 50 MB or 400 MB
    }


def row_labels(p: dict[str, int]) -> dict[str, str]:
    """Table order: rows 1-7 as before, the newer rows after them."""
    big_mb = p["np_big_n"] * 8 / 1e6
    return {
        "cold": "1 cold start to 1st result",
        "map": f"2 map sq {p['map_n']:,}",
        "imap": f"3 imap sq gen {p['imap_n']:,}",
        "apply": f"4 {p['apply_n']:,} x apply(abs)",
        "cpu": f"5 map spin {p['cpu_items']} x 20 ms",
        "numpy": f"6 echo {p['np_count']} x {p['np_mib']} MiB",
        "rss_caller": "7a RSS caller (MB)",
        "rss_worker": "7b RSS per worker (MB)",
        "rss_total": "7c RSS caller+workers (MB)",
        "second": "8 second Pool(2) to 1st result",
        "later": "8b second Pool(2), 1 s later",
        "np_sum": f"9 {p['np_count']} x {p['np_mib']} MiB map(arr.sum)",
        "np_apply": f"10 {big_mb:,.0f} MB apply(arr.sum)",
        "np_return": f"11 {big_mb:,.0f} MB returned",
    }


def bytes_moved(row: str, p: dict[str, int]) -> int:
    """Array bytes a numpy row moves between caller and workers, both directions added."""
    one = p["np_mib"] * 2**20  # each of the np_count arrays
    return {
        "numpy": 2 * p["np_count"] * one,  # there and back
        "np_sum": p["np_count"] * one,
        "np_apply": p["np_big_n"] * 8,
        "np_return": p["np_big_n"] * 8,
    }[row]


def bandwidth_notes(
    results: dict[str, dict[str, Cell]], labels: dict[str, str], p: dict[str, int]
) -> list[str]:
    notes = []
    for row in NUMPY_ROWS:
        cells = results.get(row)
        if not cells:
            continue
        moved = bytes_moved(row, p)
        speeds = [
            f"{_libs.LABELS[lib]} {moved / 1e9 / cell.median:.2f}"
            for lib, cell in cells.items()
            if cell.median
        ]
        notes.append(
            f"Row {labels[row].split(' ')[0]} GB/s ({moved / 1e6:,.0f} MB moved / median "
            f"seconds): {', '.join(speeds)}."
        )
    return notes


def describe_notes(
    p: dict[str, int], iters: int, spin_s: float, libs: list[str], results: dict
) -> list[str]:
    """What each column and row is (the README says more)."""
    speedups = []
    cpu = results.get("cpu", {})
    serial = cpu.get("serial")
    if serial and serial.median:
        for lib in libs:
            cell = cpu.get(lib)
            if lib != "serial" and cell and cell.median:
                speedups.append(f"{_libs.LABELS[lib]} {serial.median / cell.median:.2f}x")
    cs_map = _libs.stdlib_chunksize(p["map_n"])
    gb = 1e9
    notes = [
        "Columns: mp = multiprocessing.Pool, PPE = concurrent.futures.ProcessPoolExecutor, "
        "both with get_context('spawn'); mpire = WorkerPool(start_method='spawn', "
        "keep_alive=True on warm rows); loky = get_reusable_executor (a fresh "
        f"loky.ProcessPoolExecutor per cold start); all with {_libs.WORKERS} workers. "
        "serial = a plain loop in the caller.",
        "ray = ray.util.multiprocessing.Pool(2) on a private local Ray started by the child "
        f"(ray.init(address='local', num_cpus={_libs.WORKERS}), no dashboard, 127.0.0.1, object "
        f"store {_libs.RAY_OBJECT_STORE_BYTES / gb:.1f} GB). dask = distributed.LocalCluster("
        f"n_workers={_libs.WORKERS}, threads_per_worker=1, processes=True) on 127.0.0.1 with "
        "its Client: client.map + client.gather for map, client.submit(...).result() for "
        "apply; arrays of 1 MiB or more are sent with client.scatter(hash=False), inside the "
        "timing (Dask's advice for large arguments; embedded in the task they went through "
        "the scheduler, ~3x slower here).",
        "Cells: median seconds (rows 1-6, 8-11) or MB (row 7). 'X/nb' = X's median / nbpool's: "
        "> 1.0 means nbpool is faster (row 7: uses less memory); < 1.0 means X is. The second "
        "table gives the range (min-max) and the number of repetitions of each cell.",
        "Row 1: fresh interpreter per measurement (python benchmarks/_cold.py LIB): import the "
        "library, create the pool, map sq over 2 items; timed to the first result. ray: "
        "includes starting the local Ray (ray.init); dask: starting the LocalCluster.",
        f"Row 2: list of results of map(sq, range(n)) on a warm pool. PPE/loky use "
        f"executor.map with chunksize={cs_map:,} = ceil(n/(4*workers)), the multiprocessing "
        "Pool.map default (their own default, 1, is pathological here); dask the same: "
        f"client.map over batches of {cs_map:,} items, one task each (client.map has no "
        "chunksize), each batch and its results in one opaque object (Dask walks a plain list "
        "item by item: ~25 µs an item here, 80x slower); the others use their defaults "
        "(nbpool: adaptive; ray: ceil(n/(4*workers))).",
        "Row 3: imap over a generator, consumed fully, DEFAULT chunksize: mp 1, nbpool "
        "adaptive, PPE/loky executor.map (chunksize 1; submits every item up front), mpire 4, "
        "ray 1 (Ray's Pool.imap: one actor call per item, 2 in flight). dask has no imap and "
        "client.map refuses iterators (one client.submit per item costs ~1.7 ms here): the "
        f"generator is read in batches of {_libs.DASK_IMAP_BATCH:,} items (boxed, as on row 2), "
        f"one task each, at most {2 * _libs.WORKERS} in flight, results in order.",
        "Row 4: sequential round trips: pool.apply(abs, (i,)); PPE/loky submit(abs, i).result(); "
        "dask client.submit(abs, i, pure=False).result().",
        f"Row 5: spin({iters:,}) = {spin_s * 1000:.1f} ms serially at calibration; library "
        "default chunksize (1 for PPE/loky, one task per item for dask). Speed-up vs serial "
        "(serial / lib): " + (", ".join(speedups) if speedups else "n/a") + ".",
        "Row 6: float64 arrays as arguments, returned unchanged (data travels both ways), "
        "chunksize=1; mpire with concatenate_numpy_output=False to return a list like the "
        "others.",
        "Row 7: psutil RSS after creating the pool and a warm-up map (workers have imported "
        "the task module); one measurement each; 7b is the mean over the workers. dask's "
        "caller holds the scheduler and the nannies (LocalCluster runs them in the caller's "
        "process); ray's GCS, raylet and agents are other processes, given in the notes.",
        "Row 8: fresh interpreter per measurement (_cold.py LIB second): create a pool, map sq "
        "over 2 items, shut it down (untimed); then time a second pool to its first result. "
        "ray: a second Pool on the Ray the first one started (Ray's Pool never shuts Ray "
        "down); dask: a second LocalCluster and Client; loky: a second fresh "
        "loky.ProcessPoolExecutor. Row 8b: the same with 1 s between the two pools (untimed), "
        "as between two cells: what outlives a pool has had time to start.",
        f"Row 9: map(total, {p['np_count']} float64 arrays of {p['np_mib']} MiB, chunksize=1), "
        "total(a) = float(a.sum()): data travels one way (to the workers).",
        f"Row 10: apply(total, (a,)) on one float64 array of {p['np_big_n'] * 8 / 1e6:,.0f} MB. "
        f"Row 11: apply(make_ones, ({p['np_big_n']:,},)) returns a float64 array of that size "
        "(np.ones, made in the worker; shape and values checked after the timing).",
    ]
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    skipped = {lib: why for lib in args.libs if (why := _libs.missing(lib))}
    skipped.update({lib: "left out with --skip" for lib in args.skip if lib in args.libs})
    libs = [lib for lib in _libs.LIBS if lib in args.libs and lib not in skipped]
    pool_libs = [lib for lib in libs if lib != "serial"]

    def log(row: str, lib: str, cell: Cell) -> None:
        if cell.error:
            what = f"failed: {cell.error}"
        elif row == "rss":
            what = f"caller {cell.value:.1f} MB, workers {[round(w, 1) for w in cell.times]} MB"
        else:
            what = f"median {fmt_seconds(cell.median or 0)} s over {len(cell.times)}"
        extra = f"  [{'; '.join(cell.notes)}]" if cell.notes else ""
        elapsed = time.monotonic() - started
        print(f"[{elapsed:5.0f}s] {row:<9} {_libs.LABELS[lib]:<7} {what}{extra}", flush=True)

    load_start = os.getloadavg()[0]
    _libs.compile_nbpool()
    iters, spin_s = calibrate()
    quick = args.quick
    params = sizes(quick, iters)
    print(
        f"nbpool benchmarks: {_libs.WORKERS} workers, repeat {args.repeat}; {versions()}\n"
        f"spin({iters:,}) takes {spin_s * 1000:.1f} ms here (the CPU-bound item)",
        flush=True,
    )
    for lib, why in skipped.items():
        print(f"column {_libs.LABELS[lib]} skipped: {why}", flush=True)

    results: dict[str, dict[str, Cell]] = {}
    for row in COLD_ROWS:
        if row in args.rows:
            results[row] = measure_cold(row, pool_libs, args.repeat, 60.0, log)
    if "rss" in args.rows:
        per_lib = {}
        for lib in pool_libs:
            per_lib[lib] = measure_rss(lib, params)
            log("rss", lib, per_lib[lib])
        for lib, cell in per_lib.items():
            for row, sub in split_rss(cell).items():
                results.setdefault(row, {})[lib] = sub
    for row in WARM_ROWS:
        if row in args.rows:
            row_libs = [lib for lib in libs if lib != "serial" or row in SERIAL_ROWS]
            results[row] = measure_timed_row(row, row_libs, params, args, log)
    labels = {row: label for row, label in row_labels(params).items() if row in results}

    head, body, range_head, range_body = build_tables(results, labels, libs)
    total = time.monotonic() - started

    notes: list[str] = []
    for row, cells in results.items():
        for lib, cell in cells.items():
            for n in cell.notes:
                notes.append(f"{labels[row].split(' ')[0]} {_libs.LABELS[lib]}: {n}")
            if cell.error and len(cell.error) > 40:
                notes.append(f"{labels[row].split(' ')[0]} {_libs.LABELS[lib]}: {cell.error}")
    fixed_notes = describe_notes(params, iters, spin_s, libs, results)
    fixed_notes += bandwidth_notes(results, labels, params)
    fixed_notes += [f"Column {_libs.LABELS[lib]} skipped: {why}." for lib, why in skipped.items()]
    slower = [
        f"{labels[row].split(' ')[0]} ({row}): mp/nb = {r:.2f}"
        for row, cells in results.items()
        if (r := ratio(cells, "mp_spawn")) is not None and r < 1.0
    ]
    fixed_notes.append(
        "Rows where nbpool is behind multiprocessing.Pool(spawn): "
        + ("; ".join(slower) if slower else "none")
        + "."
    )
    load_end = os.getloadavg()[0]
    fixed_notes.append(
        f"1-minute load average {load_start:.2f} at start, {load_end:.2f} at end, on "
        f"{os.cpu_count()} CPUs: anything else running makes the numbers noisier (compare "
        "medians with the ranges)."
    )
    all_notes = fixed_notes + notes
    summary = f"Total runtime {total:.0f} s ({time.strftime('%Y-%m-%d %H:%M:%S')})."

    print()
    print(f"nbpool benchmarks — {versions()}")
    print()
    print("Median seconds (MB for row 7); ratio columns = peer / nbpool (> 1.0: nbpool faster)")
    print(text_table(head, body))
    print()
    print("Range: min-max seconds (number of repetitions)")
    print(text_table(range_head, range_body))
    print()
    for n in all_notes:
        print(f"- {n}")
    print()
    print(summary)

    png = plot.plot_path(args.output)
    md = [
        "# nbpool benchmark results",
        "",
        f"{versions()}. Produced by `benchmarks/run.py` (repeat {args.repeat}"
        + (", --quick" if quick else "")
        + f"). {summary}",
        "",
        "## Median seconds (MB for row 7); peer / nbpool ratios (> 1.0: nbpool faster)",
        "",
        md_table(head, body),
        "",
        f"![peer / nbpool ratios]({png.name})",
        "",
        "## Range: min-max seconds (number of repetitions)",
        "",
        md_table(range_head, range_body),
        "",
        "## Notes",
        "",
        *(f"- {n}" for n in all_notes),
        "",
    ]
    write_markdown(args.output, md)
    meta = {
        "versions": versions(),
        "repeat": args.repeat,
        "quick": quick,
        "params": params,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "markdown": args.output.name,
    }
    json_path = args.output.with_suffix(".json")
    data = results_json(results, labels, libs, meta)
    write_whole(json_path, json.dumps(data, indent=1) + "\n")
    print(f"JSON written to {json_path}")
    draw_plot(json_path, png)
    return 0


def draw_plot(json_path: Path, png: Path) -> None:
    """The plot from the JSON just written (``plot.py`` redraws it the same way)."""
    try:
        plot.draw(json_path, png)
    except ImportError as e:  # matplotlib missing: the tables stand on their own
        print(f"No plot: {e} (pip install matplotlib, then: python benchmarks/plot.py)")
        return
    print(f"Plot written to {png}")


if __name__ == "__main__":
    sys.exit(main())
