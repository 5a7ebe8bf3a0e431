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
# # `%%pmap` and `%pool`
#
# `%load_ext nbpool` registers two magics. `%%pmap TARGET in EXPR` runs the cell body once per item
# of `EXPR` in parallel, with `TARGET` bound (a name, or a tuple such as `a, b`); the value of the
# body's last line is that item's result, and the list of results is the cell's value. Notebook
# names the body reads are shipped to the workers by value; names it assigns stay local to the
# item. It runs on the session pool: started on first use, reused across cells, sized to the
# machine, stopped with the kernel. `%pool` shows and manages that pool.

# %% id="load"
# %load_ext nbpool

# %% id="basic"
# %%pmap x in range(8)
x * x

# %% [markdown] id="md-names"
# Notebook names are read by value; `-o NAME` stores the results.

# %% id="names"
import time

OFFSET = 100


def slow_add(a, b):
    time.sleep(0.05)
    return a + b + OFFSET


# %% id="tuple-target"
# %%pmap -o sums a, b in [(1, 2), (3, 4), (5, 6)]
total = slow_add(a, b)
total

# %% id="show-sums"
print(sums)

# %% [markdown] id="md-progress"
# A long `%%pmap` shows the dashboard (`--no-progress` hides it, `--progress` forces it).

# %% id="long"
# %%pmap -o waited --progress i in range(30)
time.sleep(0.05)
i

# %% [markdown] id="md-errors"
# ## A failing item does not lose the others
#
# The cell shows the failing item's error, with the remote traceback; every result, with the
# exception in place of each failed item, is kept in `NAME` (or `_pmap`).

# %% id="errors"
try:
    get_ipython().run_cell_magic("pmap", "-o partial n in [1, 2, 0, 4]", "10 // n")
except ZeroDivisionError as exc:
    print("raised:", type(exc).__name__)
print(partial)

# %% [markdown] id="md-pool"
# ## %pool: status, restart, stop

# %% id="status"
# %pool status

# %% id="restart"
# %pool restart -n 2

# %% id="stop"
# %pool stop
