"""CPython's own ``multiprocessing.Pool`` tests, run against ``nbpool.Pool``.

The test classes are the interpreter's own (``test._test_multiprocessing``: ``_TestPool``,
``_TestPoolWorkerErrors``, ``_TestPoolWorkerLifetime``), unchanged, with ``nbpool.Pool`` where
they create a pool. They run as they do in CPython's suite, including the private parts of the
stdlib pool they read (``_pool``, ``_repopulate_pool``, ``_state``).

One test is replaced, not skipped: ``test_unpickleable_result`` expects a task returning a
lambda to fail with ``MaybeEncodingError``. nbpool returns it (results that plain pickle refuses
travel by value, as functions do: a ``defaultdict(lambda: 0)`` of counts comes back), so the
replacement checks the same two things with a result nothing can pickle (a lock): the error is
a ``MaybeEncodingError`` with ``.exc`` and ``.value`` set, and 20 such failures in a row lose
no worker. It also checks that the lambda does come back.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import threading
import types
import unittest

import pytest

import nbpool

tm = pytest.importorskip("test._test_multiprocessing", reason="CPython's test package")


class _Multiprocessing(types.ModuleType):
    """``multiprocessing`` as the CPython tests see it: everything is the stdlib's except
    ``Pool``, which is nbpool's (some tests call ``multiprocessing.Pool(...)`` directly)."""

    Pool = staticmethod(nbpool.Pool)

    def __getattr__(self, name: str):
        return getattr(multiprocessing, name)


@pytest.fixture(scope="module", autouse=True)
def _nbpool_as_multiprocessing():
    real = tm.multiprocessing
    tm.multiprocessing = _Multiprocessing("multiprocessing")
    yield
    tm.multiprocessing = real


class _NbpoolMixin(tm.BaseMixin):
    TYPE = "processes"
    Pool = staticmethod(nbpool.Pool)


class TestCPythonPool(tm._TestPool, _NbpoolMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()  # the class's pool, shared by its tests
        # Its callback thread starts with the first callback and lives as long as the pool:
        # start it now, or the leftover check charges it to whichever test used one first.
        cls.pool.apply_async(abs, (-1,), callback=lambda _: None).get(30)


class TestCPythonPoolWorkerLifetime(tm._TestPoolWorkerLifetime, _NbpoolMixin, unittest.TestCase):
    pass


def _returns_lambda():
    return lambda: 42


def _returns_lock():
    return threading.Lock()


class TestCPythonPoolWorkerErrors(tm._TestPoolWorkerErrors, _NbpoolMixin, unittest.TestCase):
    def test_unpickleable_result(self):
        p = nbpool.Pool(2)
        try:
            # Make sure we don't lose pool processes because of encoding errors.
            for _ in range(20):
                scratchpad = [None]

                def errback(exc, scratchpad=scratchpad):
                    scratchpad[0] = exc

                res = p.apply_async(_returns_lock, error_callback=errback)
                self.assertRaises(multiprocessing.pool.MaybeEncodingError, res.get, 30)
                wrapped = scratchpad[0]
                self.assertIsInstance(wrapped, multiprocessing.pool.MaybeEncodingError)
                self.assertIsInstance(wrapped, nbpool.SerializationError)
                self.assertIn("_thread.lock", wrapped.exc)
                self.assertIn("lock", wrapped.value)
                self.assertIn("result of item 0", str(wrapped))
            self.assertEqual(p.apply(_returns_lambda)(), 42)
            self.assertEqual(p.apply(tm.unpickleable_result)(), 42)
        finally:
            p.close()
            p.join()
