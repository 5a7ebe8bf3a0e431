# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # A tour of nbpool
#
# `nbpool.Pool` is a drop-in `multiprocessing.Pool` that works inside Jupyter. Everything below is
# defined in notebook cells, which the stdlib pool cannot ship to its workers (a lambda fails to
# pickle; a cell-defined function makes spawned workers die with `Can't get attribute`). nbpool
# starts fresh worker interpreters (it never forks the kernel) and sends notebook code to them by
# value.

# %% id="setup"
import os
import signal

import nbpool

pool = nbpool.Pool(2)
pool


# %% [markdown] id="md-functions"
# ## A cell-defined function and a lambda


# %% id="functions"
def square(x):
    return x * x


print(pool.map(square, range(10)))
print(pool.map(lambda s: s.upper(), ["a", "b", "c"]))

# %% [markdown] id="md-dashboard"
# ## The live dashboard
#
# A call that runs longer than half a second shows a dashboard under its cell: an overall bar that
# counts items, items per second, ETA, and one row per worker with its PID, state, the item it is
# on (and its argument), how long it has been on it, items done, CPU and memory. When the call
# ends, it stays as a summary. `progress=False` turns it off, `progress=True` shows it at once.

# %% id="dashboard"
import time


def slow_square(x):
    time.sleep(0.1)
    return x * x


squares = pool.map(slow_square, range(60))
print("sum:", sum(squares))


# %% [markdown] id="md-closure"
# ## A closure: captured variables travel with the function


# %% id="closure"
def make_scaler(factor):
    def scale(x):
        return factor * x

    return scale


print(pool.map(make_scaler(3), range(5)))

# %% [markdown] id="md-classes"
# ## Notebook classes as arguments and results
#
# An instance of a class defined in the notebook goes to a worker and comes back as an instance of
# the *same* class, so `isinstance` holds.

# %% id="classes"
from dataclasses import dataclass


@dataclass
class Point:
    x: float
    y: float


def mirror(p):
    return Point(p.y, p.x)


points = pool.map(mirror, [Point(1, 2), Point(3, 4)])
print(points)
print("isinstance:", all(isinstance(p, Point) for p in points))


# %% [markdown] id="md-errors"
# ## Errors come back as their own type
#
# An exception class defined in the notebook can be caught by type. The worker's traceback is
# attached as `__cause__`, headed by the worker, its PID and the item that failed.


# %% id="errors"
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
    print(str(exc.__cause__).strip().splitlines()[0])

# %% [markdown] id="md-partial"
# `map` fails as a whole at the first failing item. To keep the good results, use `imap`: it yields
# item by item, raises only at the failing position, and the next `next()` goes on after it.

# %% id="partial"
results = []
it = pool.imap(check, [1, 2, -3, 4])
while True:
    try:
        results.append(next(it))
    except StopIteration:
        break
    except BadInput as exc:
        results.append(exc)
print(results)

# %% [markdown] id="md-initializer"
# ## Load a model once per worker: an initializer and a global
#
# The initializer runs once in each worker and sets a notebook global. The tasks see the value it
# set, not the kernel's `MODEL = None`.

# %% id="initializer"
MODEL = None


def load_model(scale):
    global MODEL
    MODEL = {"scale": scale, "loaded_in": os.getpid()}


def predict(x):
    return MODEL["scale"] * x


with nbpool.Pool(2, initializer=load_model, initargs=(10,)) as model_pool:
    print(model_pool.map(predict, range(5)))
print("MODEL in the kernel:", MODEL)

# %% [markdown] id="md-constants"
# A global you change in the notebook reaches the workers on the next call.

# %% id="constants"
K = 1


def add_k(x):
    return x + K


print(pool.map(add_k, [0, 0]))
K = 2
print(pool.map(add_k, [0, 0]))


# %% [markdown] id="md-imap"
# ## imap over a generator
#
# The generator is consumed lazily, as workers have room for more items; results arrive in order.


# %% id="imap"
def numbers(n):
    yield from range(n)


for value in pool.imap(square, numbers(6)):
    print(value, end=" ")
print()


# %% [markdown] id="md-crash"
# ## A crashing worker fails its task, not the pool
#
# A worker killed by a signal (here SIGKILL, as the out-of-memory killer would send) fails the item
# it was running with `WorkerLostError`. The pool replaces the worker and stays usable.


# %% id="crash"
def die():
    os.kill(os.getpid(), signal.SIGKILL)


try:
    pool.apply(die)
except nbpool.WorkerLostError as exc:
    print("WorkerLostError:", exc)

print("still usable:", pool.map(square, range(5)))

# %% [markdown] id="md-timeout"
# ## A time limit per item
#
# With `task_timeout`, an item that runs longer fails with `TaskTimeoutError`. Its worker is killed
# and replaced, and the other items go on.

# %% id="timeout"
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
print(results)

# %% [markdown] id="md-pmap"
# ## %%pmap: a cell body, once per item, in parallel
#
# `%load_ext nbpool` adds `%%pmap TARGET in EXPR`: the body runs once per item with `TARGET`
# bound, on the session pool (`%pool`), and the value of its last line is the item's result.

# %% id="load-ext"
# %load_ext nbpool

# %% id="pmap"
# %%pmap word in ["alpha", "beta", "gamma"]
word.upper() + "!"


# %% id="pool-stop"
# %pool stop

# %% [markdown] id="md-close"
# ## Close the pools

# %% id="close"
pool.close()
pool.join()
pool
