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
# # Worker output in the right cell
#
# What a worker prints (with `print`, to `sys.stderr`, or from C code and subprocesses writing to
# file descriptors 1 and 2) appears in the output of the cell that submitted the work, one whole
# line at a time, tagged with the worker and its PID. Asynchronous work keeps printing into the cell
# that submitted it, even after later cells have run.

# %% id="setup"
import os
import sys
import time

import nbpool

pool = nbpool.Pool(2)


# %% id="print"
def noisy(x):
    print(f"working on {x}")
    return x * 10


print(pool.map(noisy, range(4), chunksize=1))


# %% [markdown] id="md-streams"
# stderr stays stderr; output written by C code is captured as well.


# %% id="streams"
def low_level(x):
    print(f"warning about {x}", file=sys.stderr)
    os.write(1, f"raw write {x}\n".encode())  # what C code or a subprocess does
    return x


pool.map(low_level, [1])


# %% [markdown] id="md-async"
# Output of asynchronous work goes to the cell that submitted it. (In JupyterLab this holds even
# after later cells have run; a headless runner such as nbclient only records a cell's output
# while that cell runs, so this example waits in the same cell.)


# %% id="async"
def later(x):
    time.sleep(0.2)
    print(f"async item {x} done")
    return x


pending = pool.map_async(later, range(2), chunksize=1)
pending.wait(30)

# %% id="close"
pool.close()
pool.join()
