"""Scale and memory: nbpool as the number of items grows, and what its caller holds over time.

Run from the repository root (``make bench`` runs it after ``run.py``)::

    .venv/bin/python benchmarks/scale.py            # n up to 10^7: about 30 s on 2 cores
    .venv/bin/python benchmarks/scale.py --quick    # n up to 10^6: about 10 s

Four parts, all in this process (the caller), with 2-worker pools:

a. ``map(sq, range(n))`` for n = 10^4 ... 10^7, nbpool and ``multiprocessing`` (spawn) on warm
   pools, alternating: seconds and ns per item (median and range of ``--repeat`` runs; fewer at
   10^7).
b. ``imap(sq, generator of 10^7 items)`` consumed fully with nbpool (10^6 with ``--quick``): the
   caller's RSS sampled during the run (start, peak, end) and how far the generator was read
   ahead of the consumer. Back-pressure keeps both flat.
c. 100 consecutive ``pool.map`` calls on one nbpool pool (small items and 2 MiB arrays in turn,
   so shared-memory segments are used both ways): the caller's RSS, open fds, threads, mapped
   and open memfd segments, its workers' open memfds, and ``/dev/shm`` entries, before, after
   and once the pool is closed.
d. The memory of one worker (psutil RSS, USS and PSS) of nbpool and of ``multiprocessing``
   (spawn), after a warm-up map.

The tables are printed and written as markdown to ``benchmarks/results/scale.md``, with the
machine they come from.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _libs  # noqa: E402
from _tasks import echo, nap, slow_echo, sq  # noqa: E402
from run import fmt_seconds, md_table, text_table, versions, write_markdown  # noqa: E402

MB = 1e6
CALLS = 100  # part c


def warm(runner: _libs.Adapter) -> None:
    """Every worker started and has imported the task module (as in run.py)."""
    runner.map(nap, [0.25] * (2 * _libs.WORKERS), 1)
    runner.map(sq, range(100), None)


def started(key: str) -> _libs.Adapter:
    runner = _libs.make(key)
    runner.start()
    warm(runner)
    return runner


# ---------------------------------------------------------------------------- a: map sizes


def time_map(runner: _libs.Adapter, n: int) -> float:
    t0 = time.perf_counter()
    r = runner.map(sq, range(n), None)
    dt = time.perf_counter() - t0
    if len(r) != n or r[-1] != (n - 1) ** 2 or r[n // 3] != (n // 3) ** 2:
        raise SystemExit(f"{runner.key}: wrong result for n={n}")
    return dt


def part_a(sizes: list[int], repeat: int) -> tuple[list[str], list[list[str]]]:
    runners = {key: started(key) for key in ("nbpool", "mp_spawn")}
    times: dict[tuple[str, int], list[float]] = {}
    try:
        for n in sizes:
            reps = repeat if n < 10**7 else max(2, repeat // 2)  # 10^7: a few seconds each
            for rep in range(reps):
                order = list(runners) if rep % 2 == 0 else list(runners)[::-1]
                for key in order:  # alternating: load from elsewhere hits both alike
                    times.setdefault((key, n), []).append(time_map(runners[key], n))
            print(f"a. n={n:,}: " + ", ".join(
                f"{k} {statistics.median(times[(k, n)]):.3f} s" for k in runners
            ), flush=True)  # fmt: skip
    finally:
        for runner in runners.values():
            runner.stop()
    head = ["n", "nbpool s (range)", "nbpool ns/item", "mp s (range)", "mp ns/item", "mp/nb"]
    body = []
    for n in sizes:
        nb, mp = times[("nbpool", n)], times[("mp_spawn", n)]
        body.append([
            f"{n:,}",
            seconds_range(nb),
            f"{statistics.median(nb) / n * 1e9:.0f}",
            seconds_range(mp),
            f"{statistics.median(mp) / n * 1e9:.0f}",
            f"{statistics.median(mp) / statistics.median(nb):.2f}",
        ])  # fmt: skip
    return head, body


def seconds_range(ts: list[float]) -> str:
    """``median (min-max, n=runs)``"""
    med, lo, hi = (fmt_seconds(f(ts)) for f in (statistics.median, min, max))
    return f"{med} ({lo}-{hi}, n={len(ts)})"


# ---------------------------------------------------------------------------- b: imap RSS


class Sampler(threading.Thread):
    """The caller's RSS, and a value read from the main thread, every ``period`` seconds."""

    def __init__(self, probe: Callable[[], int], period: float = 0.02) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.probe, self.period = probe, period
        self.rss: list[int] = []
        self.probed: list[int] = []
        self.done = threading.Event()

    def sample(self) -> None:
        self.rss.append(self.proc.memory_info().rss)
        self.probed.append(self.probe())

    def run(self) -> None:
        while not self.done.wait(self.period):
            self.sample()


def part_b(n: int) -> tuple[list[str], list[list[str]]]:
    counts = {"made": 0, "used": 0}

    def items() -> Iterator[int]:
        for i in range(n):
            counts["made"] += 1
            yield i

    runner = started("nbpool")
    try:
        sampler = Sampler(lambda: counts["made"] - counts["used"])
        sampler.sample()  # start
        sampler.start()
        t0 = time.perf_counter()
        total = 0
        for v in runner.imap(sq, items()):
            total += v
            counts["used"] += 1
        dt = time.perf_counter() - t0
        sampler.done.set()
        sampler.join()
        sampler.sample()  # end
    finally:
        runner.stop()
    if counts["used"] != n or total != (n - 1) * n * (2 * n - 1) // 6:
        raise SystemExit("imap: wrong result")
    rss = sampler.rss
    print(f"b. imap {n:,}: {dt:.2f} s, RSS {rss[0] / MB:.1f} -> peak {max(rss) / MB:.1f} MB")
    # What the results alone would hold if kept in a list: a pointer and an int object each.
    as_list = (sys.getsizeof([0] * n) + n * sys.getsizeof(n * n)) / MB
    head = ["items", "seconds", "ns/item", "RSS start MB", "RSS peak MB", "RSS end MB"]
    head += ["peak - start MB", "max read-ahead (items)", "samples", "results as a list MB"]
    body = [[
        f"{n:,}", f"{dt:.2f}", f"{dt / n * 1e9:.0f}", f"{rss[0] / MB:.1f}",
        f"{max(rss) / MB:.1f}", f"{rss[-1] / MB:.1f}", f"{(max(rss) - rss[0]) / MB:.1f}",
        f"{max(sampler.probed):,}", f"{len(rss)}", f"{as_list:.0f}",
    ]]  # fmt: skip
    return head, body


# ---------------------------------------------------------------------------- c: 100 maps


def fd_links(pid: int | str = "self") -> list[str]:
    """Where each open fd of a process points (those that close meanwhile are skipped)."""
    out = []
    folder = f"/proc/{pid}/fd"
    for name in os.listdir(folder):
        try:
            out.append(os.readlink(f"{folder}/{name}"))
        except OSError:
            pass
    return out


def is_segment(link: str) -> bool:
    """An nbpool shared-memory segment (not the per-worker slot memfd)."""
    return "memfd:nbpool-" in link and "nbpool-slot" not in link


def snapshot(worker_pids: list[int]) -> dict[str, Any]:
    import psutil

    me = psutil.Process()
    links = fd_links()
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
        mapped = {ln.split(None, 5)[-1].strip() for ln in fh if "memfd:nbpool-" in ln}
    worker_segments = 0
    for pid in worker_pids:
        try:
            worker_segments += sum(map(is_segment, fd_links(pid)))
        except OSError:  # gone (after close)
            pass
    shm = os.listdir("/dev/shm")
    return {
        "RSS MB": f"{me.memory_info().rss / MB:.1f}",
        "open fds": len(links),
        "threads (OS)": me.num_threads(),
        "threads (Python)": threading.active_count(),
        "memfd segments open (caller)": sum(map(is_segment, links)),
        "memfd segments mapped (caller)": sum("nbpool-slot" not in m for m in mapped),
        "memfd segments open (workers)": worker_segments,
        "/dev/shm entries (machine)": len(shm),
        "/dev/shm entries named nbpool": sum("nbpool" in e for e in shm),
    }


def part_c() -> tuple[list[str], list[list[str]]]:
    import numpy as np

    arrays = [np.full(2**20 // 4, float(k)) for k in range(4)]  # 2 MiB each: shared memory

    def call(runner: _libs.Adapter, i: int) -> None:
        if i % 2:
            r = runner.map(echo, arrays, 1)
            ok = [float(a[0]) for a in r] == [0.0, 1.0, 2.0, 3.0]
        else:
            ok = runner.map(sq, range(10_000), None)[-1] == 9_999**2
        if not ok:
            raise SystemExit(f"100 maps: wrong result at call {i}")

    shots = {"no pool": snapshot([])}
    runner = started("nbpool")
    try:
        pids = runner.pids()
        call(runner, 0)  # one of each first: what the first calls create lazily is in "before"
        call(runner, 1)
        shots["before"] = snapshot(pids)
        t0 = time.perf_counter()
        for i in range(CALLS):
            call(runner, i)
        dt = time.perf_counter() - t0
        shots[f"after {CALLS} maps"] = snapshot(pids)
        shots["during a call"] = in_flight(runner, arrays, pids)
    finally:
        runner.stop()
    time.sleep(0.5)  # the workers' exit
    shots["after close"] = snapshot(pids)
    fds = [shots[k]["open fds"] for k in ("before", f"after {CALLS} maps")]
    print(f"c. {CALLS} maps in {dt:.2f} s: fds {fds[0]} -> {fds[1]}")
    head = ["", *shots]
    body = [[k, *(str(shot[k]) for shot in shots.values())] for k in shots["before"]]
    return head, body


def in_flight(runner: _libs.Adapter, arrays: list, pids: list[int]) -> dict[str, Any]:
    """A snapshot while map(slow_echo, 2 MiB arrays) runs: the segments that part c counts
    exist then (so the calls did use them), and are gone once it returns."""
    pending = runner.pool.map_async(slow_echo, arrays, 1)
    time.sleep(0.15)  # the first chunks are in the workers, asleep
    shot = snapshot(pids)
    if [float(a[0]) for a in pending.get(30)] != [float(k) for k in range(len(arrays))]:
        raise SystemExit("100 maps: wrong result of the call in flight")
    return shot


# ---------------------------------------------------------------------------- d: worker memory


def part_d() -> tuple[list[str], list[list[str]]]:
    import psutil

    head = ["pool", "workers", "RSS MB (mean)", "USS MB (mean)", "PSS MB (mean)"]
    body = []
    for key in ("nbpool", "mp_spawn"):
        runner = started(key)
        try:
            time.sleep(0.5)  # let the workers settle after the warm-up
            infos = [psutil.Process(pid).memory_full_info() for pid in runner.pids()]
        finally:
            runner.stop()
        body.append([
            _libs.LABELS[key] + (" (spawn)" if key == "mp_spawn" else ""),
            str(len(infos)),
            f"{statistics.mean(i.rss for i in infos) / MB:.1f}",
            f"{statistics.mean(i.uss for i in infos) / MB:.1f}",
            f"{statistics.mean(i.pss for i in infos) / MB:.1f}",
        ])  # fmt: skip
    print("d. worker memory: " + ", ".join(f"{r[0]} RSS {r[2]} USS {r[3]} MB" for r in body))
    return head, body


# ---------------------------------------------------------------------------- report


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if "model name" in ln), "")
    except OSError:
        pass
    import psutil

    mem = psutil.virtual_memory().total / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model or platform.machine()}), {mem:.0f} GiB memory, "
        f"{platform.system()} {platform.release()}; {versions(('nbpool', 'numpy', 'psutil'))}; "
        f"load average {load}; {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n up to 10^6, imap over 10^6 items")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size in part a (default 3)")
    ap.add_argument("--parts", default="a,b,c,d", help="a subset, comma-separated")
    ap.add_argument("--output", type=Path, default=HERE / "results" / "scale.md")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    args.output = args.output.resolve()  # main() changes the working directory
    return args


def main() -> int:
    args = parse_args()
    _libs.compile_nbpool()
    # An empty working directory, as run.py's children: the task module then counts as an
    # installed module (pickled by reference by nbpool too, not shipped by value).
    workdir = tempfile.TemporaryDirectory(prefix="nbpool-scale-")
    os.chdir(workdir.name)
    parts = args.parts.split(",")
    sizes = [10**k for k in range(4, 7 if args.quick else 8)]
    imap_n = 10**6 if args.quick else 10**7
    described = machine()
    print(f"nbpool scale and memory: {described}", flush=True)
    t0 = time.monotonic()
    sections: list[tuple[str, str, tuple[list[str], list[list[str]]]]] = []
    if "a" in parts:
        sections.append((
            f"a. map(sq, range(n)) on a warm pool, {_libs.WORKERS} workers",
            f"Median seconds (min-max, runs: {args.repeat}, fewer at 10^7), nanoseconds per "
            "item, and mp/nb = multiprocessing's median / nbpool's (> 1: nbpool faster). "
            "Default chunksizes (nbpool adaptive, multiprocessing ceil(n/8)); pools alternate.",
            part_a(sizes, args.repeat),
        ))  # fmt: skip
    if "b" in parts:
        sections.append((
            "b. imap over a generator, consumed fully (nbpool): the caller's memory",
            "RSS of the calling process, sampled every 20 ms. Read-ahead = items taken from the "
            "generator but not yet consumed: bounded by back-pressure, so the RSS stays flat "
            "(a list of the results would take the last column's size).",
            part_b(imap_n),
        ))  # fmt: skip
    if "c" in parts:
        sections.append((
            f"c. {CALLS} consecutive pool.map calls on one nbpool pool: leaks",
            "Calls alternate map(sq, range(10_000)) and map(echo, 4 arrays of 2 MiB) (arrays of "
            "1 MiB or more travel in memfd segments both ways). 'no pool': before the pool is "
            "created; 'before': after one call of each kind; 'during a call': while "
            "map(slow_echo, the 4 arrays) is in flight (the segments in use then). Segments: "
            "fds or mappings named memfd:nbpool-... (the per-worker nbpool-slot excluded). "
            "/dev/shm is machine-wide: other programs change it.",
            part_c(),
        ))  # fmt: skip
    if "d" in parts:
        sections.append((
            "d. Memory of one worker after a warm-up map",
            "psutil memory_full_info of each worker, mean over the pool's workers: RSS, USS "
            "(pages only this process holds) and PSS (shared pages divided among their users).",
            part_d(),
        ))  # fmt: skip
    summary = f"Total runtime {time.monotonic() - t0:.0f} s."
    print()
    md = [
        "# nbpool: scale and memory",
        "",
        f"Produced by `benchmarks/scale.py`{' --quick' if args.quick else ''}. Machine: "
        f"{described}. {summary}",
        "",
    ]
    for title, text, (head, body) in sections:
        print(title)
        print(text_table(head, body))
        print()
        md += [f"## {title}", "", text, "", md_table(head, body), ""]
    print(summary)
    os.chdir(HERE)
    workdir.cleanup()
    write_markdown(args.output, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
