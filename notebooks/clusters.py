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
# # The same Pool on a Ray or Dask cluster
#
# `Pool()` runs on this machine, unless the environment says otherwise: with `NBPOOL_ADDRESS`
# set to a Ray head's address (`10.0.0.5:6379`, or `RAY_ADDRESS`) or a Dask scheduler's
# (`tcp://10.0.0.5:8786`, or `DASK_SCHEDULER_ADDRESS`), the very same cells run their workers on
# that cluster. Nothing in the code changes. To pick the cluster in code instead, write
# `Pool(ray_address="10.0.0.5:6379")` or `Pool(address="tcp://10.0.0.5:8786")` (see
# docs/clusters.md).
#
# The tests run this notebook three times: as it is (on this machine), and with `NBPOOL_ADDRESS`
# set to a Ray head and to a Dask scheduler they start on 127.0.0.1.

# %% id="pool"
import os
import time

from nbpool import Pool

pool = Pool(2)
print("backend:", pool.backend)
pool

# %% [markdown] id="code-md"
# Functions defined here travel by value, to processes or actors alike:

# %% id="map"
RATE = 3


def price(qty):
    return qty * RATE


pool.map(price, range(8))


# %% [markdown] id="where-md"
# Each worker says where it runs (on a cluster, the host is the node's address):


# %% id="where"
def where(_):
    time.sleep(0.2)
    print("working")
    return os.getpid()


sorted(set(pool.map(where, range(4), chunksize=1)))


# %% [markdown] id="errors-md"
# Errors keep their type and the worker's traceback, headed by worker, host and item:


# %% id="errors"
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
    print(str(e.__cause__).strip().splitlines()[0])

# %% id="close"
pool.close()
pool.join()
