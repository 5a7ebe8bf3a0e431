"""Write notebooks/tour.ipynb (the tour is generated, never edited by hand).

Usage: ``.venv/bin/python tools/make_tour.py`` after changing a cell below. Each code cell has a
stable id, which tests/notebooks/test_notebooks.py uses to find the outputs it checks.
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


def build() -> nbformat.NotebookNode:
    cells = []
    for kind, cell_id, source in CELLS:
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
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else TOUR
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(build(), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
