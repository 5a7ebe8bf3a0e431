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
# # Worker features: state, shared objects, `put`, insights
#
# mpire's worker features and Ray's `put`, on `nbpool.Pool`, with functions defined right here
# (see `docs/worker-features.md`). Every option works the same on a Ray or Dask cluster.

# %% [markdown] id="state-md"
# **Worker state and worker id.** With `use_worker_state=True` each worker keeps a dict across
# items and calls; with `pass_worker_id=True` a task also gets its worker's id (0..n-1). They come
# before the item, in mpire's order: worker id, shared objects, worker state.

# %% id="state"
import collections
import operator
import time

import nbpool


def count_words(worker_id, state, line):
    counts = state.setdefault("counts", collections.Counter())
    counts.update(line.split())
    return worker_id


lines = ["the cat sat", "the dog sat", "a cat ran"] * 20
with nbpool.Pool(
    2,
    pass_worker_id=True,
    use_worker_state=True,
    worker_exit=lambda worker_id, state: dict(state["counts"]),
) as pool:
    workers = pool.map(count_words, lines, chunksize=5)
    pool.close()
    pool.join()
    per_worker = pool.get_exit_results()  # what each worker's worker_exit returned

total = sum((collections.Counter(c) for c in per_worker), collections.Counter())
print("workers used:", sorted(set(workers)))
print("words counted:", sorted(total.items()))

# %% [markdown] id="shared-md"
# **Shared objects** are pickled once and unpickled once per worker: every item of a worker gets
# the same object (`id()` is the same for all of them).

# %% id="shared"
prices = {f"item{i}": i * 1.5 for i in range(10_000)}


def price_of(worker_id, table, key):
    return worker_id, id(table), table[key]


with nbpool.Pool(2, pass_worker_id=True, shared_objects=prices) as pool:
    got = pool.map(price_of, [f"item{i}" for i in range(40)], chunksize=4)

objects = {(w, obj) for w, obj, _ in got}
print("one object per worker:", len(objects) == len({w for w, _ in objects}))
print("first prices:", [p for _, _, p in got[:4]])

# %% [markdown] id="put-md"
# **`pool.put(obj)`**, as Ray's `ray.put`: stored once, passed by reference in any call; each
# worker gets it once and keeps it for the calls that follow.

# %% id="put"
with nbpool.Pool(2) as pool:
    table = pool.put(list(range(100_000)))
    print(table)
    print(pool.starmap(lambda i, t: t[i] * 2, [(i, table) for i in range(5)]))
    print(pool.map_reduce(lambda i: i, range(1_000), operator.add))


# %% [markdown] id="insights-md"
# **Insights** (`enable_insights=True`): where each worker's time went, and the slowest items
# with their arguments. In a notebook the call's final dashboard shows them too.


# %% id="insights"
def fetch(url):
    time.sleep(0.3 if url.endswith("slow") else 0.02)
    return len(url)


urls = [f"https://example.org/{i}" for i in range(20)] + ["https://example.org/slow"]
with nbpool.Pool(2, enable_insights=True) as pool:
    pool.map(fetch, urls, chunksize=2, progress=False)
    report = pool.get_insights()
    pool.print_insights()

print("slowest:", report["slowest"][0]["args"])
