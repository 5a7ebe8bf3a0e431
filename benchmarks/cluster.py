"""nbpool on a Ray and a Dask cluster against each engine's own tools, side by side.

Run from the repository root (``make bench-cluster``)::

    .venv/bin/python benchmarks/cluster.py                     # both engines, repeat 5
    .venv/bin/python benchmarks/cluster.py --engines dask --repeat 3

For Ray it starts a head on 127.0.0.1 with 2 CPUs (``tests/ray_head.py``: token auth, loopback
only, stopped by its PID) and compares nbpool with ``ray.util.multiprocessing.Pool``, both pools
of 2 workers alive on the same head. For Dask it starts a scheduler and two one-thread workers on
127.0.0.1 (``tests/dask_cluster.py``) and compares nbpool with the client's own ``client.map``
(one task per item, the default) and with ``client.map`` over batches of 10,000 items (the usual
hand-made chunking). The libraries alternate; rows:

* ``map``: ``map(sq, range(1_000_000))``, default arguments (Dask's default ``client.map`` runs
  one task per item: it is measured on 5,000 items and compared per item);
* ``apply``: 1,000 sequential ``apply(sq, (i,))`` (Dask: ``client.submit(...).result()``);
* ``cpu``: ``map(spin, [N] * 200)``, N calibrated to ~20 ms an item (and serial);
* ``connect``: in a fresh interpreter with the libraries imported, the time from the pool (or
  ``Client``) to the first result on the running cluster.

Ratios are the peer's time / nbpool's time (per item for Dask's default map): above 1 means
nbpool is faster. Results go to ``benchmarks/results/cluster.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from dask_cluster import start_dask_cluster, stop_dask_cluster  # noqa: E402
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


def serial_time(n_spin: int) -> float:
    runs = []
    for _ in range(3):  # the whole row in this process, median of 3
        t0 = time.perf_counter()
        for _ in range(200):
            spin(n_spin)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def alternate(rows: dict, repeat: int, times: dict, label: str = "") -> None:
    """Run each row's libraries in turn, ``repeat`` times, the order reversed every other
    time (neither always goes first), into ``times[(row, lib)]``; print each repetition.
    ``rows``: row -> library -> a function that returns the seconds it measured."""
    for name, libs in rows.items():
        for rep in range(repeat):
            order = list(libs.items()) if rep % 2 == 0 else list(libs.items())[::-1]
            for lib, run in order:
                times.setdefault((name, lib), []).append(run())
            print(f"{label}{name} rep {rep + 1}: " + ", ".join(
                f"{lib} {times[(name, lib)][-1]:.3f} s" for lib in libs
            ), flush=True)  # fmt: skip


def run_ray(args: argparse.Namespace) -> list[str]:
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
        serial_cpu = serial_time(n_spin)
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
        alternate(
            {name: {lib: functools.partial(fn, p) for lib, p in pools.items()}
             for name, fn in rows.items()},
            args.repeat, times,
        )  # fmt: skip
        nb.terminate()
        rp.terminate()
        ray.shutdown()
        connect = {
            "nbpool": functools.partial(connect_time, "nbpool", head.address),
            "ray Pool": functools.partial(connect_time, "ray", head.address),
        }
        alternate({"connect": connect}, args.repeat, times)
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
    return lines


# ----------------------------------------------------------------------------- Dask

DASK_CONNECT = """
import sys, time
import nbpool, distributed
which, address = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if which == "nbpool":
    pool = nbpool.Pool({workers}, address=address)
    assert pool.apply(abs, (-3,)) == 3
else:
    client = distributed.Client(address)
    assert client.submit(abs, -3).result() == 3
print(time.perf_counter() - t0)
"""

DASK_MAP_DEFAULT_N = 5_000
BATCH = 10_000


def _batch_sq(batch):
    return [x * x for x in batch]


def run_dask(args: argparse.Namespace) -> list[str]:
    cluster = start_dask_cluster(workers=WORKERS)
    import distributed

    import nbpool

    try:
        nb = nbpool.Pool(WORKERS, address=cluster.address, progress=False)
        client = distributed.Client(cluster.address, set_as_default=False)
        n_spin = calibrate()
        serial_cpu = serial_time(n_spin)
        items = range(1_000_000)
        expected = [x * x for x in items]
        small = range(DASK_MAP_DEFAULT_N)

        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        def nb_map():
            assert nb.map(sq, items) == expected

        def dask_map_default():
            # one task per item: measured on fewer items, compared per item
            futures = client.map(sq, small, pure=False)
            assert client.gather(futures) == [x * x for x in small]

        def dask_map_batches():
            batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
            futures = client.map(_batch_sq, batches, pure=False)
            got = [y for part in client.gather(futures) for y in part]
            assert got == expected

        def nb_apply():
            for i in range(1000):
                assert nb.apply(sq, (i,)) == i * i

        def dask_apply():
            for i in range(1000):
                assert client.submit(sq, i, pure=False).result() == i * i

        def nb_cpu():
            assert len(nb.map(spin, [n_spin] * 200)) == 200

        def dask_cpu():
            assert len(client.gather(client.map(spin, [n_spin] * 200, pure=False))) == 200

        rows = {
            "map": {
                "nbpool": nb_map,
                "dask map": dask_map_default,
                "dask batches": dask_map_batches,
            },
            "apply": {"nbpool": nb_apply, "dask submit": dask_apply},
            "cpu": {"nbpool": nb_cpu, "dask map": dask_cpu},
        }
        wanted = args.rows.split(",")
        nb.map(sq, range(100))  # warm: every worker started, code shipped once
        client.gather(client.map(sq, range(100), pure=False))
        times: dict[tuple[str, str], list[float]] = {}
        alternate(
            {name: {lib: functools.partial(timed, fn) for lib, fn in libs.items()}
             for name, libs in rows.items() if name in wanted},
            args.repeat, times, "dask ",
        )  # fmt: skip
        nb.terminate()
        client.close()

        def connect(lib: str) -> float:
            out = subprocess.run(
                [sys.executable, "-c", DASK_CONNECT.format(workers=WORKERS), lib,
                 cluster.address],
                capture_output=True, text=True, timeout=300, cwd="/",
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"{lib} connect failed:\n{out.stderr[-2000:]}")
            return float(out.stdout.strip().splitlines()[-1])

        if "connect" in wanted:
            libs = {"nbpool": "nbpool", "dask Client": "dask"}
            alternate(
                {"connect": {k: functools.partial(connect, v) for k, v in libs.items()}},
                args.repeat, times, "dask ",
            )  # fmt: skip
    finally:
        stop_dask_cluster(cluster)

    def cell(key: tuple[str, str]) -> str:
        a = times[key]
        return f"{statistics.median(a):.3f} s ({min(a):.3f}-{max(a):.3f})"

    def med(key: tuple[str, str]) -> float:
        return statistics.median(times[key])

    lines = [
        "# nbpool vs Dask's own `client.map` / `client.submit` on one Dask cluster",
        "",
        f"distributed {distributed.__version__}: a scheduler and {WORKERS} one-thread workers on "
        f"127.0.0.1, nbpool with {WORKERS} workers, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores; medians of {args.repeat} runs (min-max), the libraries "
        "alternating. Ratio: the peer's time / nbpool's time.",
        "",
        "| row | nbpool | peer | peer time | ratio |",
        "|---|---|---|---|---|",
    ]
    if ("map", "nbpool") in times:
        per_item_nb = med(("map", "nbpool")) / len(items)
        per_item_dask = med(("map", "dask map")) / DASK_MAP_DEFAULT_N
        lines += [
            f"| `map(sq, range(1_000_000))` | {cell(('map', 'nbpool'))} | `client.map`, one "
            f"task per item ({DASK_MAP_DEFAULT_N:,} items) | {cell(('map', 'dask map'))} = "
            f"{per_item_dask * 1e6:.0f} µs an item (nbpool {per_item_nb * 1e6:.2f}) | "
            f"{per_item_dask / per_item_nb:.0f} |",
            f"| (same) | | `client.map` over batches of {BATCH:,} | "
            f"{cell(('map', 'dask batches'))} | "
            f"{med(('map', 'dask batches')) / med(('map', 'nbpool')):.2f} |",
        ]
    if ("apply", "nbpool") in times:
        lines.append(
            f"| 1,000 sequential `apply` | {cell(('apply', 'nbpool'))} | `client.submit(...)"
            f".result()` | {cell(('apply', 'dask submit'))} | "
            f"{med(('apply', 'dask submit')) / med(('apply', 'nbpool')):.2f} |"
        )
    if ("cpu", "nbpool") in times:
        lines.append(
            f"| 200 x ~20 ms CPU items | {cell(('cpu', 'nbpool'))} | `client.map` | "
            f"{cell(('cpu', 'dask map'))} | "
            f"{med(('cpu', 'dask map')) / med(('cpu', 'nbpool')):.2f} |"
        )
    if ("connect", "nbpool") in times:
        lines.append(
            f"| `Pool(address=...)` to first result | {cell(('connect', 'nbpool'))} | "
            f"`Client(address)` to first result | {cell(('connect', 'dask Client'))} | "
            f"{med(('connect', 'dask Client')) / med(('connect', 'nbpool')):.2f} |"
        )
    if ("cpu", "nbpool") in times:
        lines += [
            "",
            f"CPU row: serial {serial_cpu:.2f} s; nbpool {serial_cpu / med(('cpu', 'nbpool')):.2f}x"
            f" serial, Dask's client.map {serial_cpu / med(('cpu', 'dask map')):.2f}x.",
        ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--output", default=str(HERE / "results" / "cluster.md"))
    ap.add_argument("--rows", default="map,apply,cpu,connect", help="a subset, comma-separated")
    ap.add_argument("--engines", default="ray,dask", help="ray, dask or both, comma-separated")
    args = ap.parse_args()
    engines = args.engines.split(",")
    lines: list[str] = []
    # Dask first: run_ray sets Ray's variables in this process (start_ray_head).
    if "dask" in engines:
        lines += [*run_dask(args), ""]
    if "ray" in engines:
        lines += run_ray(args)
    text = "\n".join(lines).strip() + "\n"
    print(text)
    Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
