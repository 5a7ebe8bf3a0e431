"""Ray's core ideas in Pool form, on every engine: ``submit`` -> ``Future``, ``nbpool.wait``,
``AsyncResult.cancel()`` that stops what runs."""

from __future__ import annotations

import concurrent.futures
import time

import nbfuncs as f
import pytest

import nbpool


def test_submit_gives_futures_that_concurrent_futures_understands(engine):
    with nbpool.Pool(2, **engine) as pool:
        futures = [pool.submit(f.kw, i, b=1, c=2) for i in range(6)]
        _, not_done = concurrent.futures.wait(futures, timeout=60)
        assert not not_done
        got = sorted(fut.result() for fut in concurrent.futures.as_completed(futures))
        assert got == [(i, 1, 2) for i in range(6)]
        failing = pool.submit(f.fail_on, 3)
        with pytest.raises(ValueError):
            failing.result(60)
        assert isinstance(failing.exception(), ValueError)
        assert pool.submit(lambda: 7).result(60) == 7
        assert not futures[0].cancel()  # running from the start, as a ProcessPoolExecutor's


def test_wait_returns_ready_ones_in_completion_order(engine):
    with nbpool.Pool(2, **engine) as pool:
        slow = pool.apply_async(f.nap, (3.0,))
        fast = pool.submit(f.nap, 0.2)
        ready, not_ready = nbpool.wait([slow, fast], num_returns=1, timeout=30)
        assert ready == [fast] and not_ready == [slow]
        ready, not_ready = nbpool.wait([slow, fast], num_returns=2, timeout=30)
        assert ready == [fast, slow] and not_ready == []
        t0 = time.monotonic()
        never = pool.apply_async(f.nap, (5.0,))
        ready, not_ready = nbpool.wait([never], timeout=0.3)
        assert ready == [] and not_ready == [never] and time.monotonic() - t0 < 3
        never.cancel()
    with pytest.raises(ValueError, match="num_returns"):
        nbpool.wait([fast], num_returns=2)
    with pytest.raises(TypeError, match=r"AsyncResults and concurrent\.futures\.Futures"):
        nbpool.wait([1])


def test_cancel_stops_a_running_call_and_its_queued_items(engine, tmp_path):
    with nbpool.Pool(2, **engine) as pool:
        before = set(pool._engine.worker_pids())
        items = [(3.0, str(tmp_path / f"done-{i}")) for i in range(6)]
        r = pool.map_async(f.sleep_then_mark, items, 1)
        time.sleep(1.0)
        t0 = time.monotonic()
        assert r.cancel() is True
        with pytest.raises(nbpool.CancelledError):
            r.get(1)  # at once
        assert time.monotonic() - t0 < 1
        assert isinstance(r._value, concurrent.futures.CancelledError)
        assert not r.cancel()  # already over
        time.sleep(4.0)  # the running items would have ended by now: they were stopped
        assert list(tmp_path.iterdir()) == []
        assert pool.map(f.sq, range(4)) == [0, 1, 4, 9]  # the pool goes on
        assert set(pool._engine.worker_pids()) != before  # the busy workers were replaced
        done = pool.apply_async(f.sq, (3,))
        assert done.get(60) == 9 and done.cancel() is False


def test_map_reduce_folds_in_the_workers(engine):
    import operator

    with nbpool.Pool(2, **engine) as pool:
        assert pool.map_reduce(lambda x: x * x, range(1000), operator.add) == sum(
            x * x for x in range(1000)
        )
        assert pool.map_reduce(len, ["a", "abc", "ab"], max, initial=0) == 3
        assert pool.map_reduce(f.sq, iter([1, 2, 3]), operator.add, initial=10) == 24
        assert pool.map_reduce(f.sq, [], max, initial=-1) == -1
        merged = pool.map_reduce(
            lambda ch: {ch: 1},
            "abcab",
            lambda a, b: {**a, **{k: a.get(k, 0) + v for k, v in b.items()}},
            chunksize=2,
        )
        assert merged == {"a": 2, "b": 2, "c": 1}
        with pytest.raises(TypeError, match="empty iterable with no initial value"):
            pool.map_reduce(f.sq, [], max)
        with pytest.raises(TypeError, match="reducer must be callable"):
            pool.map_reduce(f.sq, [1], 3)
        with pytest.raises(ValueError, match="bad value 3"):
            pool.map_reduce(f.fail_on, range(5), operator.add)


def _held(wid, state, x):
    """Each worker keeps every object it got (so that two objects never share an id)."""
    state.setdefault("seen", []).append(x)
    return wid, len({id(o) for o in state["seen"]}), len(x)


def _refs_held(_x):
    from nbpool._worker import refs

    return sorted(refs._OBJECTS) + sorted(refs._PICKLES)


def test_put_sends_an_object_once_per_worker_and_forgets_it_when_dropped(engine):
    import gc

    from proc_util import wait_until

    data = list(range(200_000))
    with nbpool.Pool(2, pass_worker_id=True, use_worker_state=True, **engine) as pool:
        ref = pool.put(data)
        assert isinstance(ref, nbpool.ObjectRef) and ref.nbytes > 200_000
        got = pool.map(_held, [ref] * 12, 1) + pool.map(_held, [ref] * 4, 1)  # two calls
        # every item of a worker got the very same object: sent and unpickled once
        assert {(n, size) for _, n, size in got} == {(1, 200_000)}
        assert pool.apply(lambda wid, st, d: d["k"][-1], ({"k": ref},)) == 199_999  # inside one
        assert pool.starmap(lambda wid, st, i, d: d[i], [(5, ref)]) == [5]
        foreign = pool.put([1, 2])
        # dropped: the pool forgets its pickle, and each worker forgets its copy with its next
        # chunk
        ref_id = ref.id
        del ref, got
        gc.collect()
        assert wait_until(lambda: ref_id not in pool._engine.refs)
        for _ in range(4):
            held = pool.map(lambda wid, st, x: _refs_held(x), range(4), 1)
        assert all(ref_id not in h for h in held)
        # a reference captured by the function (or read as a global) would never reach the
        # worker: refused, saying what to do
        captured = pool.put([1])
        with pytest.raises(nbpool.SerializationError, match="pass it as an argument"):
            pool.map(lambda wid, st, x: len(captured), [1])
        with pytest.raises(nbpool.SerializationError, match=r"put\(\) got .* cannot be pickled"):
            pool.put(open(__file__))  # noqa: SIM115
    with pytest.raises(ValueError, match="Pool not running"):
        pool.put(1)
    # (after the first pool: on a cluster it held every CPU or thread)
    with nbpool.Pool(1, **engine) as other:
        with pytest.raises(ValueError, match=r"this pool's put\(\) did not make"):
            other.map(len, [foreign])
        # only the item that holds it fails, also in a chunk of several
        it = other.imap(len, [[0], foreign, [0, 0]], chunksize=3)
        assert next(it) == 1
        with pytest.raises(ValueError, match=r"item 1 holds nbpool.ObjectRef"):
            next(it)
        assert next(it) == 2
        assert other.map(len, [[1, 2, 3]]) == [3]
