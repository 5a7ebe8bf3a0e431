"""Write the notebooks of notebooks/ (generated, never edited by hand).

Usage: ``.venv/bin/python tools/make_tour.py`` after changing a cell below. It writes the tour
(``tour.ipynb``) and one notebook per feature (``clusters.ipynb``, ``dashboard.ipynb``,
``magics.ipynb``, ``output.ipynb``, ``worker-features.ipynb``). Each code
cell has a stable id, which tests/notebooks/test_notebooks.py uses to find the outputs it checks.
"""

from __future__ import annotations

import pathlib
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOUR = ROOT / "notebooks" / "tour.ipynb"

# (kind, id, source). Every cell must finish in a few seconds on a 2-core machine.
CELLS: list[tuple[str, str, str]] = [
    (
        "md",
        "intro",
        """\
# A tour of nbpool

`nbpool.Pool` is a drop-in `multiprocessing.Pool` that works inside Jupyter. Everything below is
defined in notebook cells, which the stdlib pool cannot ship to its workers (a lambda fails to
pickle; a cell-defined function makes spawned workers die with `Can't get attribute`). nbpool
starts fresh worker interpreters (it never forks the kernel) and sends notebook code to them by
value.""",
    ),
    (
        "code",
        "setup",
        """\
import os
import signal

import nbpool

pool = nbpool.Pool(2)
pool""",
    ),
    ("md", "md-functions", "## A cell-defined function and a lambda"),
    (
        "code",
        "functions",
        """\
def square(x):
    return x * x

print(pool.map(square, range(10)))
print(pool.map(lambda s: s.upper(), ["a", "b", "c"]))""",
    ),
    (
        "md",
        "md-dashboard",
        """\
## The live dashboard

A call that runs longer than half a second shows a dashboard under its cell: an overall bar that
counts items, items per second, ETA, and one row per worker with its PID, state, the item it is
on (and its argument), how long it has been on it, items done, CPU and memory. When the call
ends, it stays as a summary. `progress=False` turns it off, `progress=True` shows it at once.""",
    ),
    (
        "code",
        "dashboard",
        """\
import time

def slow_square(x):
    time.sleep(0.1)
    return x * x

squares = pool.map(slow_square, range(60))
print("sum:", sum(squares))""",
    ),
    ("md", "md-closure", "## A closure: captured variables travel with the function"),
    (
        "code",
        "closure",
        """\
def make_scaler(factor):
    def scale(x):
        return factor * x
    return scale

print(pool.map(make_scaler(3), range(5)))""",
    ),
    (
        "md",
        "md-classes",
        """\
## Notebook classes as arguments and results

An instance of a class defined in the notebook goes to a worker and comes back as an instance of
the *same* class, so `isinstance` holds.""",
    ),
    (
        "code",
        "classes",
        """\
from dataclasses import dataclass

@dataclass
class Point:
    x: float
    y: float

def mirror(p):
    return Point(p.y, p.x)

points = pool.map(mirror, [Point(1, 2), Point(3, 4)])
print(points)
print("isinstance:", all(isinstance(p, Point) for p in points))""",
    ),
    (
        "md",
        "md-errors",
        """\
## Errors come back as their own type

An exception class defined in the notebook can be caught by type. The worker's traceback is
attached as `__cause__`, headed by the worker, its PID and the item that failed.""",
    ),
    (
        "code",
        "errors",
        """\
class BadInput(ValueError):
    pass

def check(x):
    if x < 0:
        raise BadInput(f"negative input: {x}")
    return x

try:
    pool.map(check, [1, 2, -3, 4])
except BadInput as exc:
    print("caught", type(exc).__name__, "-", exc)
    print(str(exc.__cause__).strip().splitlines()[0])""",
    ),
    (
        "md",
        "md-partial",
        """\
`map` fails as a whole at the first failing item. To keep the good results, use `imap`: it yields
item by item, raises only at the failing position, and the next `next()` goes on after it.""",
    ),
    (
        "code",
        "partial",
        """\
results = []
it = pool.imap(check, [1, 2, -3, 4])
while True:
    try:
        results.append(next(it))
    except StopIteration:
        break
    except BadInput as exc:
        results.append(exc)
print(results)""",
    ),
    (
        "md",
        "md-initializer",
        """\
## Load a model once per worker: `initializer` + a global

The initializer runs once in each worker and sets a notebook global. The tasks see the value it
set, not the kernel's `MODEL = None`.""",
    ),
    (
        "code",
        "initializer",
        """\
MODEL = None

def load_model(scale):
    global MODEL
    MODEL = {"scale": scale, "loaded_in": os.getpid()}

def predict(x):
    return MODEL["scale"] * x

with nbpool.Pool(2, initializer=load_model, initargs=(10,)) as model_pool:
    print(model_pool.map(predict, range(5)))
print("MODEL in the kernel:", MODEL)""",
    ),
    (
        "md",
        "md-constants",
        """\
A global you change in the notebook reaches the workers on the next call.""",
    ),
    (
        "code",
        "constants",
        """\
K = 1
def add_k(x):
    return x + K

print(pool.map(add_k, [0, 0]))
K = 2
print(pool.map(add_k, [0, 0]))""",
    ),
    (
        "md",
        "md-imap",
        """\
## `imap` over a generator

The generator is consumed lazily, as workers have room for more items; results arrive in order.""",
    ),
    (
        "code",
        "imap",
        """\
def numbers(n):
    for i in range(n):
        yield i

for value in pool.imap(square, numbers(6)):
    print(value, end=" ")
print()""",
    ),
    (
        "md",
        "md-crash",
        """\
## A crashing worker fails its task, not the pool

A worker killed by a signal (here SIGKILL, as the out-of-memory killer would send) fails the item
it was running with `WorkerLostError`. The pool replaces the worker and stays usable.""",
    ),
    (
        "code",
        "crash",
        """\
def die():
    os.kill(os.getpid(), signal.SIGKILL)

try:
    pool.apply(die)
except nbpool.WorkerLostError as exc:
    print("WorkerLostError:", exc)

print("still usable:", pool.map(square, range(5)))""",
    ),
    (
        "md",
        "md-timeout",
        """\
## A time limit per item

With `task_timeout`, an item that runs longer fails with `TaskTimeoutError`. Its worker is killed
and replaced, and the other items go on.""",
    ),
    (
        "code",
        "timeout",
        """\
import time

def nap(seconds):
    time.sleep(seconds)
    return seconds

results = []
with nbpool.Pool(2, task_timeout=1) as timed_pool:
    it = timed_pool.imap(nap, [0.1, 30, 0.2])
    for _ in range(3):
        try:
            results.append(next(it))
        except nbpool.TaskTimeoutError as exc:
            results.append(f"TaskTimeoutError at item {exc.index}")
print(results)""",
    ),
    (
        "md",
        "md-pmap",
        """\
## `%%pmap`: a cell body, once per item, in parallel

`%load_ext nbpool` adds `%%pmap TARGET in EXPR`: the body runs once per item with `TARGET`
bound, on the session pool (`%pool`), and the value of its last line is the item's result.""",
    ),
    ("code", "load-ext", "%load_ext nbpool"),
    (
        "code",
        "pmap",
        """\
%%pmap word in ["alpha", "beta", "gamma"]
word.upper() + "!"
""",
    ),
    ("code", "pool-stop", "%pool stop"),
    ("md", "md-close", "## Close the pools"),
    (
        "code",
        "close",
        """\
pool.close()
pool.join()
pool""",
    ),
]


DASHBOARD_CELLS: list[tuple[str, str, str]] = [
    (
        "md",
        "intro",
        """\
# The live dashboard

Every call on an `nbpool.Pool` can show a dashboard under its cell. `progress="auto"` (the
default) shows it in a notebook for calls that last longer than half a second, so quick calls
print nothing; `progress=True` shows it at once (a text bar outside notebooks); `progress=False`
never. Set it for the pool (`nbpool.Pool(progress=...)`) or for one call (`pool.map(...,
progress=...)`).

A notebook viewer without widgets (GitHub, nbviewer) shows the final summary as a table.""",
    ),
    (
        "code",
        "setup",
        """\
import time

import nbpool

pool = nbpool.Pool(2)

def work(x):
    time.sleep(0.05)
    return x * x""",
    ),
    ("md", "md-auto", "## A call longer than half a second: the dashboard appears"),
    (
        "code",
        "auto",
        """\
squares = pool.map(work, range(60))
print("sum:", sum(squares))""",
    ),
    ("md", "md-quick", "## A quick call shows nothing, unless you ask"),
    (
        "code",
        "quick",
        """\
print(pool.map(work, range(4)))
print(pool.map(work, range(4), progress=True))""",
    ),
    (
        "md",
        "md-failed",
        """\
## A failed item

The dashboard counts failures and ends in the *failed* state; `imap` keeps the other results.""",
    ),
    (
        "code",
        "failed",
        """\
def picky(x):
    time.sleep(0.02)
    if x == 13:
        raise ValueError("13 is unlucky")
    return x

results = []
it = pool.imap(picky, range(40), progress=True)
while True:
    try:
        results.append(next(it))
    except StopIteration:
        break
    except ValueError as exc:
        results.append(exc)
print(len(results), "results,", sum(isinstance(r, Exception) for r in results), "failed")""",
    ),
    (
        "md",
        "md-async",
        """\
## Asynchronous calls

`map_async` returns at once; its dashboard stays live in this cell while later cells run.""",
    ),
    ("code", "async", "pending = pool.map_async(work, range(40), progress=True)"),
    ("code", "async-get", "print(len(pending.get(timeout=60)), 'results')"),
    (
        "md",
        "md-pool",
        """\
## The whole pool

`pool.dashboard()` shows every worker and every call of the pool until it is closed
(`%pool` does this for the session pool of the magics).""",
    ),
    (
        "code",
        "pool-dashboard",
        """\
pool.dashboard()
print(sum(pool.map(work, range(30), progress=False)))""",
    ),
    ("code", "close", "pool.close()\npool.join()"),
]

MAGICS_CELLS: list[tuple[str, str, str]] = [
    (
        "md",
        "intro",
        """\
# `%%pmap` and `%pool`

`%load_ext nbpool` registers two magics. `%%pmap TARGET in EXPR` runs the cell body once per item
of `EXPR` in parallel, with `TARGET` bound (a name, or a tuple such as `a, b`); the value of the
body's last line is that item's result, and the list of results is the cell's value. Notebook
names the body reads are shipped to the workers by value; names it assigns stay local to the
item. It runs on the session pool: started on first use, reused across cells, sized to the
machine, stopped with the kernel. `%pool` shows and manages that pool.""",
    ),
    ("code", "load", "%load_ext nbpool"),
    (
        "code",
        "basic",
        """\
%%pmap x in range(8)
x * x""",
    ),
    ("md", "md-names", "Notebook names are read by value; `-o NAME` stores the results."),
    (
        "code",
        "names",
        """\
import time

OFFSET = 100

def slow_add(a, b):
    time.sleep(0.05)
    return a + b + OFFSET""",
    ),
    (
        "code",
        "tuple-target",
        """\
%%pmap -o sums a, b in [(1, 2), (3, 4), (5, 6)]
total = slow_add(a, b)
total""",
    ),
    ("code", "show-sums", "print(sums)"),
    (
        "md",
        "md-progress",
        """\
A long `%%pmap` shows the dashboard (`--no-progress` hides it, `--progress` forces it).""",
    ),
    (
        "code",
        "long",
        """\
%%pmap -o waited --progress i in range(30)
time.sleep(0.05)
i""",
    ),
    (
        "md",
        "md-errors",
        """\
## A failing item does not lose the others

The cell shows the failing item's error, with the remote traceback; every result, with the
exception in place of each failed item, is kept in `NAME` (or `_pmap`).""",
    ),
    (
        "code",
        "errors",
        """\
try:
    get_ipython().run_cell_magic("pmap", "-o partial n in [1, 2, 0, 4]", "10 // n")
except ZeroDivisionError as exc:
    print("raised:", type(exc).__name__)
print(partial)""",
    ),
    ("md", "md-pool", "## `%pool`: status, restart, stop"),
    ("code", "status", "%pool status"),
    ("code", "restart", "%pool restart -n 2"),
    ("code", "stop", "%pool stop"),
]

OUTPUT_CELLS: list[tuple[str, str, str]] = [
    (
        "md",
        "intro",
        """\
# Worker output in the right cell

What a worker prints (with `print`, to `sys.stderr`, or from C code and subprocesses writing to
file descriptors 1 and 2) appears in the output of the cell that submitted the work, one whole
line at a time, tagged with the worker and its PID. Asynchronous work keeps printing into the cell
that submitted it, even after later cells have run.""",
    ),
    (
        "code",
        "setup",
        """\
import os
import sys
import time

import nbpool

pool = nbpool.Pool(2)""",
    ),
    (
        "code",
        "print",
        """\
def noisy(x):
    print(f"working on {x}")
    return x * 10

print(pool.map(noisy, range(4), chunksize=1))""",
    ),
    ("md", "md-streams", "stderr stays stderr; output written by C code is captured as well."),
    (
        "code",
        "streams",
        """\
def low_level(x):
    print(f"warning about {x}", file=sys.stderr)
    os.write(1, f"raw write {x}\\n".encode())  # what C code or a subprocess does
    return x

pool.map(low_level, [1])""",
    ),
    (
        "md",
        "md-async",
        """\
Output of asynchronous work goes to the cell that submitted it. (In JupyterLab this holds even
after later cells have run; a headless runner such as nbclient only records a cell's output
while that cell runs, so this example waits in the same cell.)""",
    ),
    (
        "code",
        "async",
        """\
def later(x):
    time.sleep(0.2)
    print(f"async item {x} done")
    return x

pending = pool.map_async(later, range(2), chunksize=1)
pending.wait(30)""",
    ),
    ("code", "close", "pool.close()\npool.join()"),
]

CLUSTER_CELLS = [
    (
        "md",
        "intro",
        """\
# The same Pool on a Ray or Dask cluster

`Pool()` runs on this machine, unless the environment says otherwise: with `NBPOOL_ADDRESS`
set to a Ray head's address (`10.0.0.5:6379`, or `RAY_ADDRESS`) or a Dask scheduler's
(`tcp://10.0.0.5:8786`, or `DASK_SCHEDULER_ADDRESS`), the very same cells run their workers on
that cluster. Nothing in the code changes. To pick the cluster in code instead, write
`Pool(ray_address="10.0.0.5:6379")` or `Pool(address="tcp://10.0.0.5:8786")` (see
docs/clusters.md).

The tests run this notebook three times: as it is (on this machine), and with `NBPOOL_ADDRESS`
set to a Ray head and to a Dask scheduler they start on 127.0.0.1.""",
    ),
    (
        "code",
        "pool",
        """\
import os, time
from nbpool import Pool

pool = Pool(2)
print("backend:", pool.backend)
pool""",
    ),
    (
        "md",
        "code-md",
        "Functions defined here travel by value, to processes or actors alike:",
    ),
    (
        "code",
        "map",
        """\
RATE = 3

def price(qty):
    return qty * RATE

pool.map(price, range(8))""",
    ),
    (
        "md",
        "where-md",
        "Each worker says where it runs (on a cluster, the host is the node's address):",
    ),
    (
        "code",
        "where",
        """\
def where(_):
    time.sleep(0.2)
    print("working")
    return os.getpid()

sorted(set(pool.map(where, range(4), chunksize=1)))""",
    ),
    (
        "md",
        "errors-md",
        "Errors keep their type and the worker's traceback, headed by worker, host and item:",
    ),
    (
        "code",
        "errors",
        """\
class OutOfStock(Exception):
    pass

def order(qty):
    if qty > 5:
        raise OutOfStock(f"only 5 left, {qty} ordered")
    return qty

try:
    pool.map(order, [1, 7, 2])
except OutOfStock as e:
    print("caught:", e)
    print(str(e.__cause__).strip().splitlines()[0])""",
    ),
    ("code", "close", "pool.close()\npool.join()"),
]

WORKER_FEATURES_CELLS = [
    (
        "md",
        "intro",
        """\
# Worker features: state, shared objects, `put`, insights

mpire's worker features and Ray's `put`, on `nbpool.Pool`, with functions defined right here
(see `docs/worker-features.md`). Every option works the same on a Ray or Dask cluster.""",
    ),
    (
        "md",
        "state-md",
        """\
**Worker state and worker id.** With `use_worker_state=True` each worker keeps a dict across
items and calls; with `pass_worker_id=True` a task also gets its worker's id (0..n-1). They come
before the item, in mpire's order: worker id, shared objects, worker state.""",
    ),
    (
        "code",
        "state",
        """\
import collections, operator, time
import nbpool

def count_words(worker_id, state, line):
    counts = state.setdefault("counts", collections.Counter())
    counts.update(line.split())
    return worker_id

lines = ["the cat sat", "the dog sat", "a cat ran"] * 20
with nbpool.Pool(2, pass_worker_id=True, use_worker_state=True,
                 worker_exit=lambda worker_id, state: dict(state["counts"])) as pool:
    workers = pool.map(count_words, lines, chunksize=5)
    pool.close()
    pool.join()
    per_worker = pool.get_exit_results()   # what each worker's worker_exit returned

total = sum((collections.Counter(c) for c in per_worker), collections.Counter())
print("workers used:", sorted(set(workers)))
print("words counted:", sorted(total.items()))""",
    ),
    (
        "md",
        "shared-md",
        """\
**Shared objects** are pickled once and unpickled once per worker: every item of a worker gets
the same object (`id()` is the same for all of them).""",
    ),
    (
        "code",
        "shared",
        """\
prices = {f"item{i}": i * 1.5 for i in range(10_000)}

def price_of(worker_id, table, key):
    return worker_id, id(table), table[key]

with nbpool.Pool(2, pass_worker_id=True, shared_objects=prices) as pool:
    got = pool.map(price_of, [f"item{i}" for i in range(40)], chunksize=4)

objects = {(w, obj) for w, obj, _ in got}
print("one object per worker:", len(objects) == len({w for w, _ in objects}))
print("first prices:", [p for _, _, p in got[:4]])""",
    ),
    (
        "md",
        "put-md",
        """\
**`pool.put(obj)`**, as Ray's `ray.put`: stored once, passed by reference in any call; each
worker gets it once and keeps it for the calls that follow.""",
    ),
    (
        "code",
        "put",
        """\
with nbpool.Pool(2) as pool:
    table = pool.put(list(range(100_000)))
    print(table)
    print(pool.starmap(lambda i, t: t[i] * 2, [(i, table) for i in range(5)]))
    print(pool.map_reduce(lambda i: i, range(1_000), operator.add))""",
    ),
    (
        "md",
        "insights-md",
        """\
**Insights** (`enable_insights=True`): where each worker's time went, and the slowest items
with their arguments. In a notebook the call's final dashboard shows them too.""",
    ),
    (
        "code",
        "insights",
        """\
def fetch(url):
    time.sleep(0.3 if url.endswith("slow") else 0.02)
    return len(url)

urls = [f"https://example.org/{i}" for i in range(20)] + ["https://example.org/slow"]
with nbpool.Pool(2, enable_insights=True) as pool:
    pool.map(fetch, urls, chunksize=2, progress=False)
    report = pool.get_insights()
    pool.print_insights()

print("slowest:", report["slowest"][0]["args"])""",
    ),
]

NOTEBOOKS = {
    "tour": CELLS,
    "worker-features": WORKER_FEATURES_CELLS,
    "clusters": CLUSTER_CELLS,
    "dashboard": DASHBOARD_CELLS,
    "magics": MAGICS_CELLS,
    "output": OUTPUT_CELLS,
}


def build(name: str = "tour") -> nbformat.NotebookNode:
    cells = []
    for kind, cell_id, source in NOTEBOOKS[name]:
        make = new_markdown_cell if kind == "md" else new_code_cell
        cells.append(make(source, id=cell_id))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def main() -> int:
    folder = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else TOUR.parent
    folder.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        out = folder / f"{name}.ipynb"
        nbformat.write(build(name), out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
