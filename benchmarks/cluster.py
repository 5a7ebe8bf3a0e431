"""nbpool on a Ray cluster against Ray's own ``ray.util.multiprocessing.Pool``, side by side.

Run from the repository root (``make bench-cluster``)::

    .venv/bin/python benchmarks/cluster.py            # repeat 5
    .venv/bin/python benchmarks/cluster.py --repeat 3

It starts a Ray head on 127.0.0.1 with 2 CPUs (``tests/ray_head.py``: token auth, loopback
only, stopped by its PID) and measures, with the two libraries alternating and both pools of 2
workers alive on the same head:

* ``map``: ``pool.map(sq, range(1_000_000))``, default arguments;
* ``apply``: 1,000 sequential ``pool.apply(sq, (i,))``;
* ``cpu``: ``pool.map(spin, [N] * 200)``, N calibrated to ~20 ms an item (and serial);
* ``connect``: in a fresh interpreter with both libraries imported, the time from
  ``Pool(ray_address=...)`` to the first result of ``apply`` on the running head.

Ratios are Ray's Pool time / nbpool time: above 1 means nbpool is faster. Results go to
``benchmarks/results/cluster.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from ray_head import start_ray_head, stop_ray_head  # noqa: E402

WORKERS = 2


def sq(x):
    return x * x


def spin(n):
    x = 0
    for i in range(n):
        x += i * i
    return x


def calibrate() -> int:
    n = 20_000
    while True:
        t0 = time.perf_counter()
        spin(n)
        dt = time.perf_counter() - t0
        if dt > 0.005:
            return int(n * 0.020 / dt)
        n *= 4


CONNECT = """
import sys, time
import nbpool, ray.util.multiprocessing
which, address = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if which == "nbpool":
    pool = nbpool.Pool({workers}, ray_address=address)
else:
    pool = ray.util.multiprocessing.Pool({workers}, ray_address=address)
assert pool.apply(abs, (-3,)) == 3
print(time.perf_counter() - t0)
pool.terminate()
"""


def connect_time(which: str, address: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CONNECT.format(workers=WORKERS), which, address],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    if out.returncode != 0:
        raise RuntimeError(f"{which} connect failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--output", default=str(HERE / "results" / "cluster.md"))
    ap.add_argument("--rows", default="map,apply,cpu,connect", help="a subset, comma-separated")
    args = ap.parse_args()

    # The head first: it sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (and the token) in this
    # process, which Ray reads when it is imported; imported before, Ray would swap 127.0.0.1
    # for the machine's other address.
    head = start_ray_head(num_cpus=WORKERS)
    import ray
    import ray.util.multiprocessing

    import nbpool

    try:
        ray.init(address=head.address, log_to_driver=False, configure_logging=False)
        nb = nbpool.Pool(WORKERS, ray_address=head.address, progress=False)
        rp = ray.util.multiprocessing.Pool(WORKERS, ray_address=head.address)
        n_spin = calibrate()
        serial_runs = []
        for _ in range(3):  # the whole row in this process, median of 3
            t0 = time.perf_counter()
            for _ in range(200):
                spin(n_spin)
            serial_runs.append(time.perf_counter() - t0)
        serial_cpu = statistics.median(serial_runs)
        items = range(1_000_000)
        expected = [x * x for x in items]

        def row_map(pool):
            t0 = time.perf_counter()
            got = pool.map(sq, items)
            dt = time.perf_counter() - t0
            assert got == expected
            return dt

        def row_apply(pool):
            t0 = time.perf_counter()
            for i in range(1000):
                assert pool.apply(sq, (i,)) == i * i
            return time.perf_counter() - t0

        def row_cpu(pool):
            t0 = time.perf_counter()
            got = pool.map(spin, [n_spin] * 200)
            dt = time.perf_counter() - t0
            assert len(got) == 200
            return dt

        wanted = args.rows.split(",")
        rows = {"map": row_map, "apply": row_apply, "cpu": row_cpu}
        rows = {k: v for k, v in rows.items() if k in wanted}
        pools = {"nbpool": nb, "ray Pool": rp}
        for pool in pools.values():  # warm: every worker started, code shipped once
            pool.map(sq, range(100))
            pool.apply(sq, (1,))
        times: dict[tuple[str, str], list[float]] = {}
        for name, fn in rows.items():
            for rep in range(args.repeat):
                order = list(pools.items()) if rep % 2 == 0 else list(pools.items())[::-1]
                for lib, pool in order:
                    times.setdefault((name, lib), []).append(fn(pool))
                print(f"{name} rep {rep + 1}: " + ", ".join(
                    f"{lib} {times[(name, lib)][-1]:.3f} s" for lib in pools
                ), flush=True)  # fmt: skip
        nb.terminate()
        rp.terminate()
        ray.shutdown()
        for rep in range(args.repeat):
            for lib in ("nbpool", "ray") if rep % 2 == 0 else ("ray", "nbpool"):
                key = ("connect", "nbpool" if lib == "nbpool" else "ray Pool")
                times.setdefault(key, []).append(connect_time(lib, head.address))
            print(
                f"connect rep {rep + 1}: nbpool {times[('connect', 'nbpool')][-1]:.3f} s, "
                f"ray Pool {times[('connect', 'ray Pool')][-1]:.3f} s",
                flush=True,
            )
    finally:
        stop_ray_head(head)

    lines = [
        "# nbpool vs `ray.util.multiprocessing.Pool` on one Ray head",
        "",
        f"{WORKERS} workers each, a Ray {ray.__version__} head on 127.0.0.1 with {WORKERS} CPUs, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; medians of {args.repeat} runs "
        "(min-max), the libraries alternating. Ratio: Ray's Pool time / nbpool time.",
        "",
        "| row | nbpool | ray Pool | ratio |",
        "|---|---|---|---|",
    ]
    what = {
        "map": "`map(sq, range(1_000_000))`",
        "apply": "1,000 sequential `apply`",
        "cpu": "200 x ~20 ms CPU items",
        "connect": "`Pool(ray_address=...)` to first result",
    }
    for name in ("map", "apply", "cpu", "connect"):
        if (name, "nbpool") not in times:
            continue
        a, b = times[(name, "nbpool")], times[(name, "ray Pool")]
        ma, mb = statistics.median(a), statistics.median(b)
        lines.append(
            f"| {what[name]} | {ma:.3f} s ({min(a):.3f}-{max(a):.3f}) | "
            f"{mb:.3f} s ({min(b):.3f}-{max(b):.3f}) | {mb / ma:.2f} |"
        )
    if ("cpu", "nbpool") in times:
        cpu = statistics.median(times[("cpu", "nbpool")])
        ray_cpu = statistics.median(times[("cpu", "ray Pool")])
        lines += [
            "",
            f"CPU row: serial {serial_cpu:.2f} s; nbpool {serial_cpu / cpu:.2f}x serial, "
            f"Ray's Pool {serial_cpu / ray_cpu:.2f}x.",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
