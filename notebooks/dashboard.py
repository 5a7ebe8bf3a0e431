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
# # The live dashboard
#
# Every call on an `nbpool.Pool` can show a dashboard under its cell. `progress="auto"` (the
# default) shows it in a notebook for calls that last longer than half a second, so quick calls
# print nothing; `progress=True` shows it at once (a text bar outside notebooks); `progress=False`
# never. Set it for the pool (`nbpool.Pool(progress=...)`) or for one call (`pool.map(...,
# progress=...)`).
#
# A notebook viewer without widgets (GitHub, nbviewer) shows the final summary as a table.

# %% id="setup"
import time

import nbpool

pool = nbpool.Pool(2)


def work(x):
    time.sleep(0.05)
    return x * x


# %% [markdown] id="md-auto"
# ## A call longer than half a second: the dashboard appears

# %% id="auto"
squares = pool.map(work, range(60))
print("sum:", sum(squares))

# %% [markdown] id="md-quick"
# ## A quick call shows nothing, unless you ask

# %% id="quick"
print(pool.map(work, range(4)))
print(pool.map(work, range(4), progress=True))


# %% [markdown] id="md-failed"
# ## A failed item
#
# The dashboard counts failures and ends in the *failed* state; `imap` keeps the other results.


# %% id="failed"
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
print(len(results), "results,", sum(isinstance(r, Exception) for r in results), "failed")

# %% [markdown] id="md-async"
# ## Asynchronous calls
#
# `map_async` returns at once; its dashboard stays live in this cell while later cells run.

# %% id="async"
pending = pool.map_async(work, range(40), progress=True)

# %% id="async-get"
print(len(pending.get(timeout=60)), "results")

# %% [markdown] id="md-pool"
# ## The whole pool
#
# `pool.dashboard()` shows every worker and every call of the pool until it is closed
# (`%pool` does this for the session pool of the magics).

# %% id="pool-dashboard"
pool.dashboard()
print(sum(pool.map(work, range(30), progress=False)))

# %% id="close"
pool.close()
pool.join()
