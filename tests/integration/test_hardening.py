"""Issue 8, what a new user broke: callbacks, cancels, memory held by results, subprocesses."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import nbfuncs as f
import pytest
from conftest import clean_env
from proc_util import alive, wait_for_file, wait_gone

import nbpool
from nbpool import _pool

# ---------------------------------------------------------------- callbacks off the dispatcher


def test_a_callback_may_use_the_pool_and_the_pool_goes_on():
    """The new user's case: a callback that calls pool.map froze every later call for good."""
    with nbpool.Pool(2) as pool:
        seen = []
        r = pool.apply_async(abs, (-2,), callback=lambda v: seen.append((v, pool.map(abs, [-1]))))
        assert r.get(10) == 2
        assert seen == [(2, [1])]  # the callback ran, and before get() returned
        assert pool.map(abs, [-3, -4]) == [3, 4]
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 5  # __exit__ is terminate()


def test_a_callback_waiting_for_a_result_whose_callback_is_queued_behind_it():
    """Both callbacks run in one thread: the first one's wait runs the second meanwhile."""
    with nbpool.Pool(2) as pool:
        order = []
        gate = threading.Event()
        second = pool.apply_async(f.nap, (0.3,), callback=lambda v: order.append("second"))

        def first_cb(_v):
            gate.wait(10)  # hold this thread until `second` is ready behind us
            order.append(("first sees", second.get(10)))

        first = pool.apply_async(abs, (-1,), callback=first_cb)
        time.sleep(0.5)  # first's callback is now blocked, second's is queued behind it
        gate.set()
        assert first.get(10) == 1
        assert second.get(10) == 0.3
        assert order == ["second", ("first sees", 0.3)]


def test_a_wait_with_a_timeout_inside_a_callback_keeps_its_timeout():
    """The wait runs queued work meanwhile; it used to run the whole queue before it looked
    at its timeout."""
    from nbpool._events import EventThread
    from nbpool._results import ApplyResult

    events = EventThread("test-callbacks")
    never = ApplyResult()
    ran: list[int] = []
    outcome: list[object] = []

    def waiting_callback():
        try:
            never.get(0.3)
        except nbpool.TimeoutError as exc:
            outcome.append((exc, len(ran)))

    events.post(waiting_callback, ())
    for i in range(100):  # 5 s of queued work behind it
        events.post(lambda i=i: (time.sleep(0.05), ran.append(i)), ())
    deadline = time.monotonic() + 30
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    events.close()
    events.join(30)
    ((_exc, ran_during_wait),) = outcome
    assert ran_during_wait < 100
    assert ran == list(range(100))  # the rest ran after it, in order


def test_a_blocked_callback_delays_only_later_callbacks():
    with nbpool.Pool(2) as pool:
        release = threading.Event()
        stuck = pool.apply_async(abs, (-1,), callback=lambda v: release.wait(30))
        time.sleep(0.2)
        assert pool.map(abs, [-5]) == [5]  # the dispatcher is free
        assert pool.apply_async(abs, (-6,)).get(10) == 6
        assert not stuck.ready()  # its callback has not returned yet
        release.set()
        assert stuck.get(10) == 1


def test_a_callback_may_terminate_its_pool():
    pool = nbpool.Pool(2)
    done = threading.Event()

    def cb(_v):
        pool.terminate()
        done.set()

    pool.apply_async(abs, (-1,), callback=cb)
    assert done.wait(10)
    pool.join()
    with pytest.raises(ValueError):
        pool.map(abs, [1])


def test_terminate_returns_when_the_dispatcher_is_stuck_in_user_code(monkeypatch):
    """An input iterator that blocks holds the dispatcher; terminate() still returns, having
    killed the workers itself, and every waiting result fails."""
    monkeypatch.setattr(_pool, "TERMINATE_WAIT_S", 1.0)
    release = threading.Event()

    def blocking_items():
        yield 1
        release.wait(60)  # the dispatcher pulls this in its own thread
        yield 2

    pool = nbpool.Pool(1)
    pids = pool._engine.worker_pids()
    other = pool.apply_async(f.nap, (30,))
    it = pool.imap(abs, blocking_items(), 1)
    time.sleep(0.5)
    t0 = time.monotonic()
    pool.terminate()
    assert time.monotonic() - t0 < 5
    assert wait_gone(pids) == []
    with pytest.raises(nbpool.PoolClosedError):
        other.get(5)
    release.set()  # let the dispatcher thread end (the test must not leave it behind)
    pool._engine.join(10)
    assert not pool._engine.is_alive()
    del it


def test_a_failing_step_of_the_dispatchers_teardown_does_not_strand_later_calls(monkeypatch, capfd):
    """The dispatcher fails (a bug) and so does one step of its teardown: the rest still runs,
    the workers are gone and a later call fails at once instead of waiting forever."""
    from nbpool._driver.dispatcher import Engine

    def broken(self, *args):
        raise RuntimeError("a bug")

    pool = nbpool.Pool(1)
    pids = pool._engine.worker_pids()
    monkeypatch.setattr(Engine, "_on_death", broken)
    monkeypatch.setattr(Engine, "_schedule", broken)
    with pytest.raises(RuntimeError, match="dispatcher failed"):
        pool.apply(abs, (-1,))
    pool._engine.join(10)
    assert not pool._engine.is_alive()
    assert wait_gone(pids) == []  # killed, though reaping them failed
    with pytest.raises(nbpool.PoolClosedError):
        pool.apply_async(abs, (-1,)).get(5)
    monkeypatch.undo()
    pool.terminate()
    assert "a bug" in capfd.readouterr().err


# ---------------------------------------------------------------- a cancel while a worker is idle


@contextlib.contextmanager
def _bare_worker():
    """A real worker process, past its Hello, driven message by message."""
    from nbpool._engines.local import Worker
    from nbpool._worker.protocol import Hello, Ready

    lifeline_r, lifeline_w = os.pipe()
    w = Worker(0, lifeline_r, "spawn")  # (a Popen: the tests look at w.proc)
    try:
        w.ch.send(Hello(0, tuple(sys.path), None))
        msg, _ = w.ch.recv(timeout=30)
        assert isinstance(msg, Ready)
        yield w
    finally:
        w.kill()
        w.reap()
        os.close(lifeline_r)
        os.close(lifeline_w)


def test_a_cancel_that_reaches_an_idle_worker_is_noted_not_fatal():
    """The worker waits for work and gets a Cancel first (the kernel sent it before it read the
    worker's last ChunkDone): it used to die with `pop from an empty deque`."""
    from nbpool._worker.functions import dumps_fn
    from nbpool._worker.protocol import Cancel, ChunkDone, RunChunk
    from nbpool._worker.serialize import dumps_data, loads_data

    with _bare_worker() as w:
        w.ch.send(Cancel(0, 7))  # for a job the worker has nothing of
        time.sleep(0.3)  # it is now blocked waiting for work, with the Cancel taken
        fn = dumps_fn(abs)
        data, oob = dumps_data([-3, -4])
        w.ch.send(RunChunk(8, 1, 0, 2, "map", fn, fn.digest), [data, *oob])
        msg, buffers = w.ch.recv(timeout=30)
        assert isinstance(msg, ChunkDone) and not msg.failures
        assert loads_data(buffers[0], buffers[1:]) == [3, 4]
        # ... and a chunk of the cancelled job is skipped, not run
        w.ch.send(RunChunk(7, 1, 0, 2, "map", None, fn.digest), [data, *oob])
        msg, _ = w.ch.recv(timeout=30)
        assert isinstance(msg, ChunkDone) and msg.skipped
        assert w.proc.poll() is None


def test_a_skipped_chunk_still_loads_the_function_it_carries():
    """A cancelled job's first chunk carried the function; the kernel notes that the worker
    holds it and sends later chunks of it without. The worker used to skip that chunk before
    loading the function, then die with a KeyError on the next job's chunk."""
    from nbpool._worker.functions import dumps_fn
    from nbpool._worker.protocol import Cancel, ChunkDone, RunChunk
    from nbpool._worker.serialize import dumps_data, loads_data

    with _bare_worker() as w:
        fn = dumps_fn(abs)
        data, oob = dumps_data([-3, -4])
        w.ch.send(Cancel(0, 7))
        w.ch.send(RunChunk(7, 1, 0, 2, "map", fn, fn.digest), [data, *oob])
        msg, _ = w.ch.recv(timeout=30)
        assert isinstance(msg, ChunkDone) and msg.skipped
        w.ch.send(RunChunk(8, 1, 0, 2, "map", None, fn.digest), [data, *oob])
        msg, buffers = w.ch.recv(timeout=30)
        assert isinstance(msg, ChunkDone) and not msg.failures and not msg.skipped
        assert loads_data(buffers[0], buffers[1:]) == [3, 4]


def test_a_pool_works_when_its_file_descriptors_are_above_1024(capfd):
    """A kernel with many files open: select() cannot watch an fd of 1024 or more, and the
    dispatcher used to die on it (a worker's output pipes, its pidfd)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this machine allows {hard} open files; the test needs 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with nbpool.Pool(1) as pool:
            assert min(pool._engine._slots[0].out_fds) >= 1024
            assert pool.apply(f.chatty, ("above", 1)) == "above"
            assert pool.map(abs, [-1, -2]) == [1, 2]
        assert "item above line 0" in capfd.readouterr().out
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------- finished results hold nothing


def test_a_finished_result_keeps_nothing_of_its_job():
    """Results used to keep their job (pickled function, its globals, the arguments) alive
    through the interrupt canceller: 20 calls reading a 100 MB global held 2 GB."""
    from nbpool._jobs import Job

    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, Job)}  # other tests' leftovers
    with nbpool.Pool(2) as pool:
        results = [pool.apply_async(f.sq, (i,), callback=lambda v: None) for i in range(20)]
        results += [pool.map_async(f.sq, range(50)), pool.imap(f.sq, range(50))]
        assert [r.get(10) for r in results[:20]] == [i * i for i in range(20)]
        assert results[20].get(10) == [i * i for i in range(50)]
        assert list(results[21]) == [i * i for i in range(50)]
        time.sleep(0.2)  # the dispatcher's last bookkeeping after the results are in
        gc.collect()
        jobs = [o for o in gc.get_objects() if isinstance(o, Job) and id(o) not in before]
        assert jobs == []
        assert all(r._canceller is None for r in results[:21])


# ---------------------------------------------------------------- a task's subprocesses


def _sleep_pids(tmp_path, n):
    return [int(wait_for_file(str(tmp_path / f"child{i}"))) for i in range(n)]


@pytest.mark.parametrize("own_session", [False, True], ids=["in-group", "own-session"])
@pytest.mark.parametrize("how", ["task_timeout", "terminate", "interrupt"])
def test_subprocesses_of_a_task_end_with_its_worker(tmp_path, how, own_session):
    items = [(str(tmp_path / f"child{i}"), own_session) for i in range(2)]
    timeout = 1.0 if how == "task_timeout" else None
    pool = nbpool.Pool(2, task_timeout=timeout)
    children: list[int] = []
    try:
        result = pool.map_async(f.spawn_sleep, items, 1)
        children = _sleep_pids(tmp_path, 2)
        assert all(alive(p) for p in children)
        if how == "task_timeout":
            with pytest.raises(nbpool.TaskTimeoutError):
                result.get(30)
        elif how == "terminate":
            pool.terminate()
        else:
            timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                result.get(30)
            timer.join()
        assert wait_gone(children) == []
        assert pool.map(abs, [-1]) == [1] if how != "terminate" else True
    finally:
        pool.terminate()
        for p in children:  # never leave a sleep behind, even when the test fails
            if alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("how", ["task_timeout", "terminate"])
def test_without_pidfd_a_workers_group_is_killed_before_it_is_reaped(tmp_path, monkeypatch, how):
    """On a kernel without pidfd_open the worker's exit is awaited with waitid(WNOWAIT): its
    group id stays ours until the group is killed (it used to be killed after the reap)."""
    monkeypatch.delattr(os, "pidfd_open")
    items = [(str(tmp_path / "child0"), False)]
    # spawned: a forked worker's exit is seen through the fork server's pipe, not a pidfd
    pool = nbpool.Pool(1, task_timeout=1.0 if how == "task_timeout" else None, start_method="spawn")
    children: list[int] = []
    try:
        assert all(w.pidfd is None for w in pool._engine._slots)
        result = pool.map_async(f.spawn_sleep, items, 1)
        children = _sleep_pids(tmp_path, 1)
        if how == "task_timeout":
            with pytest.raises(nbpool.TaskTimeoutError):
                result.get(30)
            assert pool.map(abs, [-1]) == [1]
        else:
            pool.terminate()
        assert wait_gone(children) == []
    finally:
        pool.terminate()
        for p in children:
            if alive(p):
                os.kill(p, signal.SIGKILL)


CALLER = """
import sys, nbpool, nbfuncs
pool = nbpool.Pool(1)
r = pool.apply_async(nbfuncs.spawn_sleep, ((sys.argv[1], sys.argv[2] == "1"),))
r.get()
"""


@pytest.mark.parametrize("own_session", [False, True], ids=["in-group", "own-session"])
def test_subprocesses_of_a_task_end_when_the_caller_is_killed(tmp_path, own_session):
    """The kernel is SIGKILLed (a restart, a crash): the worker sees its lifeline close and
    takes what its tasks started with it."""
    path = str(tmp_path / "child")
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, path, "1" if own_session else "0"], env=clean_env()
    )
    child = 0
    try:
        child = int(wait_for_file(path))
        import psutil

        workers = psutil.Process(caller.pid).children()
        caller.kill()
        caller.wait(10)
        assert wait_gone([w.pid for w in workers] + [child]) == []
    finally:
        caller.kill()
        caller.wait(10)
        if child and alive(child):
            os.kill(child, signal.SIGKILL)


# ---------------------------------------------------------------- logging and identity


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_log_records_of_tasks_go_through_the_callers_logging():
    log = logging.getLogger("nbpool.tests.task")
    handler = _Collect()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with nbpool.Pool(2) as pool:
            assert pool.map(f.log_things, [1, 2], 1) == [1, 2]
            deadline = time.monotonic() + 10  # records travel apart from the results
            while len(handler.records) < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            got = sorted((r.levelname, r.getMessage()) for r in handler.records)
            expected = [("ERROR", f"failed on {i}") for i in (1, 2)]
            assert got == [*expected, ("INFO", "info 1"), ("INFO", "info 2")]
            assert {r.processName for r in handler.records} <= {
                "SpawnPoolWorker-1",
                "SpawnPoolWorker-2",
            }
            errors = [r for r in handler.records if r.levelname == "ERROR"]
            assert all("ZeroDivisionError" in (r.exc_text or "") for r in errors)
            assert all(r.process in pool._engine.worker_pids() for r in handler.records)
            # a level changed in the caller reaches the workers with the next call
            handler.records.clear()
            log.setLevel(logging.DEBUG)
            pool.map(f.log_things, [3])
            deadline = time.monotonic() + 10
            while len(handler.records) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert [r.levelname for r in handler.records] == ["DEBUG", "INFO", "ERROR"]
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)


def test_a_log_record_with_an_object_the_caller_cannot_rebuild_arrives_as_its_repr(tmp_path):
    """The record's `extra=` holds an object of a class only the worker can import: it used to
    stop the pool's dispatcher (an unpickling error in the kernel)."""
    log = logging.getLogger("nbpool.tests.task")
    handler = _Collect()
    log.addHandler(handler)
    try:
        with nbpool.Pool(1) as pool:
            assert pool.apply(f.log_worker_only_object, (str(tmp_path),)) == 1
            deadline = time.monotonic() + 10
            while not handler.records and time.monotonic() < deadline:
                time.sleep(0.02)
            (record,) = handler.records
            assert record.getMessage() == "with extras"
            assert record.thing == "<Thing>"  # type: ignore[attr-defined]
            assert record.ids == [1, 2] and record.pair == ("a", 1.5)  # type: ignore[attr-defined]
            assert pool.map(abs, [-1, -2]) == [1, 2]  # the pool goes on
    finally:
        log.removeHandler(handler)


def test_a_task_knows_it_runs_in_a_pool_worker():
    import multiprocessing

    with nbpool.Pool(2) as pool:
        got = pool.map(f.identity_in_worker, [0, 1], 1)
    assert sorted(name for name, _, _ in got) == ["SpawnPoolWorker-1", "SpawnPoolWorker-2"]
    assert {(pid, alive) for _, pid, alive in got} == {(os.getpid(), True)}
    assert multiprocessing.current_process().name == "MainProcess"  # the caller's is unchanged


# ---------------------------------------------------------------- output goes where stdout pointed


def test_worker_output_goes_where_stdout_pointed_at_submit_time(capsys):
    with nbpool.Pool(2) as pool:
        pool.map(f.sq, [1, 2])  # workers up
        buf, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            pool.map(f.c_level_output, [1], 1)
            later = pool.map_async(f.chatty, [2], 1, progress=False)
        later.get(10)  # finishes after the `with`: its output still goes to buf
        time.sleep(0.3)
        pool.map(f.chatty, [3], 1)  # not redirected
        time.sleep(0.3)
    out = capsys.readouterr()
    assert "fd-level 1" in buf.getvalue() and "subprocess 1" in buf.getvalue()
    assert "to stderr 1" in err.getvalue()
    assert buf.getvalue().count("item 2 line") == 50
    assert "item 2 line" not in out.out and "fd-level" not in out.out
    assert out.out.count("item 3 line") == 50 and "item 3" not in buf.getvalue()


def test_a_jobs_partial_line_is_written_when_the_job_ends(capsys):
    with nbpool.Pool(1) as pool:
        pool.map(f.say_without_newline, ["first"])
        assert capsys.readouterr().out.endswith("] first\n")
        pool.map(f.sq, [1])  # a later job adds nothing to it
        assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- a memory limit below idle


def test_a_memory_limit_below_an_idle_worker_is_refused_with_the_figure():
    with pytest.raises(ValueError, match=r"below what a worker uses when idle: [\d.]+ MB"):
        nbpool.Pool(2, max_memory_per_worker="10MB")


def test_a_memory_limit_below_idle_never_becomes_a_respawn_loop(monkeypatch):
    """Where Pool() cannot check (a slow initializer), the dispatcher does not replace a
    worker that is over the limit before doing any work (16 pids in 4 s, before)."""
    monkeypatch.setattr(_pool, "IDLE_CHECK_WAIT_S", 0.0)
    with nbpool.Pool(1, max_memory_per_worker="10MB") as pool:
        first = pool._engine.worker_pids()
        time.sleep(2.5)  # five memory checks
        assert pool._engine.worker_pids() == first
        # Once it takes work the limit applies: loading the chunk may take it past the hard
        # limit (1.5 x 10 MB, a few MB above idle) if a check lands then. Either way the call
        # ends, with the result or that error, and the pool goes on.
        for _ in range(3):
            try:
                assert pool.map(f.sq, [3]) == [9]
            except nbpool.MemoryLimitError as e:
                assert re.search(r"while (loading|running|pickling) .*item 0: it was", str(e)), e


def test_an_interrupt_while_pool_checks_the_memory_limit_leaves_no_worker():
    """Pool() waits for its first worker to check the limit: ■ there used to leave the
    workers running with no pool to stop them."""
    from conftest import _children as children  # (not the process's long-lived helpers)

    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            nbpool.Pool(2, initializer=f.nap, initargs=(5,), max_memory_per_worker="1GB")
    finally:
        timer.join()
    assert wait_gone(sorted(children())) == []


# ---------------------------------------------------------------- an imap iterator left early


@pytest.mark.parametrize("how", ["break", "del"])
def test_an_imap_iterator_left_early_cancels_its_job(tmp_path, how):
    items = [(0.0 if i == 0 else 1.5, str(tmp_path / f"done-{i}")) for i in range(8)]
    with nbpool.Pool(2) as pool:
        if how == "break":
            for _first in pool.imap(f.sleep_then_mark, items, 1):
                break
        else:
            it = pool.imap(f.sleep_then_mark, items, 1)
            next(it)
            del it
        gc.collect()
        time.sleep(2.0)  # the running items would have ended by now
        assert sorted(p.name for p in tmp_path.iterdir()) == ["done-0"]
        assert pool.map(f.sq, [2]) == [4]  # the pool goes on


# ---------------------------------------------------------------- dill and modules next to us


def test_dill_gives_a_module_function_the_same_globals_on_every_call():
    """dill ships a function of a module next to the notebook by reference: the worker's own
    module globals apply (here, what the initializer set). The function cache used to ship the
    kernel's globals from the second call on, undoing the initializer."""
    from nbpool._worker.functions import dumps_fn

    assert dumps_fn(f.read_state, "dill").globals == dumps_fn(f.read_state, "dill").globals == ()
    with nbpool.Pool(1, initializer=f.init_state, initargs=(5,), serializer="dill") as pool:
        assert [pool.apply(f.read_state) for _ in range(3)] == [5, 5, 5]


def _run_next_to(tmp_path, helpers: str, script: str) -> str:
    """Run ``script`` in a fresh interpreter whose working directory holds ``helpers.py``
    (a module next to the notebook); its stdout."""
    (tmp_path / "helpers.py").write_text(helpers)
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


MODULE_AS_OBJECT = """
import helpers, nbpool
exec("def f(x):\\n    return ('kernel', x, K)", helpers.__dict__)  # edited in the kernel only
with nbpool.Pool(1) as pool:
    print(pool.map(lambda x: helpers.f(x) + (helpers.K, helpers.Box().size), [1]))
"""


def test_a_module_next_to_the_notebook_used_as_an_object_runs_the_kernels_code(tmp_path):
    """``lambda x: helpers.f(x)``: the worker gets the kernel's ``helpers`` (its functions,
    classes and constants), not the file on disk, and not an empty module on a node that has
    no such file (the Ray parity suite's lambdas read ``nbfuncs`` this way)."""
    helpers = "K = 3\n\ndef f(x):\n    return ('disk', x, K)\n\nclass Box:\n    size = 9\n"
    assert _run_next_to(tmp_path, helpers, MODULE_AS_OBJECT) == "[('kernel', 1, 3, 3, 9)]"


LOCKED_CLASS = """
import nbpool, helpers
with nbpool.Pool(1) as pool:
    print(pool.map(helpers.Locked.twice, [1, 2]))
"""


def test_a_class_next_to_the_notebook_that_holds_a_lock_goes_by_reference(tmp_path):
    """By value, ``helpers.Locked`` (and its lock) cannot be pickled; the worker imports
    ``helpers`` instead of the call failing (before: ``SerializationError`` ... '_thread.lock').
    CPython's own Pool tests pass classmethods of such a class (with the class's pool in it)."""
    helpers = (
        "import threading\n\nclass Locked:\n    lock = threading.Lock()\n\n"
        "    @classmethod\n    def twice(cls, x):\n        return 2 * x\n"
    )
    assert _run_next_to(tmp_path, helpers, LOCKED_CLASS) == "[2, 4]"


def _inner_sq(x):
    print("inner", x)
    return x * x


def _outer_sum(n):
    with nbpool.Pool(2, progress=False) as inner:
        return sum(inner.map(_inner_sq, range(n)))


def _outer_sleeps(seconds):
    with nbpool.Pool(2, progress=False) as inner:
        return inner.map(time.sleep, [seconds] * 2)


def test_a_task_may_run_a_pool_of_its_own_and_stopping_it_ends_both(capfd):
    """Nested pools (docs/worker-features.md): the inner workers' output reaches the caller
    tagged with both workers, and a stop of the outer worker (task_timeout here) takes its
    inner pool's workers with it (the leftover check of every test would see them)."""
    with nbpool.Pool(2) as pool:
        assert pool.map(_outer_sum, [3, 4], 1) == [5, 14]
    out = capfd.readouterr().out
    assert re.search(r"^\[w\d pid \d+\] \[w\d pid \d+\] inner 2$", out, re.M), out
    t0 = time.monotonic()
    with nbpool.Pool(1, task_timeout=3) as pool:
        with pytest.raises(nbpool.TaskTimeoutError):
            pool.apply(_outer_sleeps, (60,))
    assert time.monotonic() - t0 < 20
