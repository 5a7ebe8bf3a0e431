"""Jobs, their item sources and the chunking policy. Owned by the dispatcher thread.

A job is one call (``apply_async``, ``map_async``, ``imap`` ...): a function, a source of items
and a result object. The dispatcher cuts chunks off it as workers ask for work.

Chunking (when the caller gave no ``chunksize``): probe with chunks of 1, 2, 4 ... until a
chunk comes back, then size chunks from the measured time per item so that one chunk takes
about ``TARGET_CHUNK_S``: tiny items travel by the hundred thousand, 20 ms items ten at a time,
items of a second or more one by one. With a known length a chunk never exceeds 1/(2 × workers)
of what is left, so the tail stays balanced, unless that is less than ``MIN_CHUNK_S`` of work
(10,000 tiny items went in ~30 chunks before that floor, in twice the stdlib's time; now in
two or three, within 15 % of it). Why 0.2 s and not less: on this kind of machine a
CPU-bound item ran ~8% slower (its own CPU time) in chunks of 3 than in chunks of 25, with both
workers busy; measured, not understood (per-chunk syscalls and caller wake-ups are the suspects).
Progress stays per item all the same: workers report the item they are on in their slot.
``range`` inputs are cut as ranges: a chunk of a million ints is a few bytes on the wire.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence

from ._worker.functions import FnPayload
from ._worker.protocol import TRACK_INDEX

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

TARGET_CHUNK_S = 0.2
MIN_CHUNK_S = 0.005  # ~20 round trips of a chunk here: the most a tail chunk may unbalance
PROBE_MAX = 64
MAX_UNSIZED_CHUNK = 10_000  # lazy inputs: bound what is pulled ahead of the workers


class SequenceSource:
    """A sized, sliceable input (list, tuple, range): chunks are slices."""

    def __init__(self, seq: Sequence[Any]) -> None:
        self.seq = seq
        self.length: int | None = len(seq)
        self.pos = 0
        self.error: BaseException | None = None

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.seq)

    def take(self, n: int, whole: bool = False) -> Any:
        """The next ``n`` items (``whole``: for ``IteratorSource``'s sake; a slice is whole)."""
        chunk = self.seq[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk if isinstance(chunk, range) else list(chunk)


class IteratorSource:
    """A lazy input (generator, iterator): pulled only as workers have room for it.

    An exception raised by the iterable becomes a result, as the object the iterable raised,
    and ends the input, as the stdlib's ``imap`` does: with a ``chunksize`` given, the items
    pulled for the chunk it broke are dropped and the error takes that chunk's first position
    (the stdlib drops them too, and CPython's own Pool tests check exactly which items come
    before the error); without one (the stdlib's ``imap`` then sends items one by one), every
    item pulled before the error runs and the error comes after them.
    """

    def __init__(self, iterable: Iterable[Any], length: int | None = None) -> None:
        """``length`` (``iterable_len=``): at most that many items are taken, and the progress
        views know the total before the input ends."""
        it: Iterator[Any] = iter(iterable)
        self.it = it if length is None else itertools.islice(it, length)
        self.length: int | None = length
        self.pos = 0
        self.exhausted = False
        self.error: BaseException | None = None

    def take(self, n: int, whole: bool = False) -> list[Any]:
        """Up to ``n`` items; ``whole``: none of them if the iterable raises before ``n``."""
        out: list[Any] = []
        try:
            # list.extend keeps the items it got before an exception
            out.extend(itertools.islice(self.it, n))
        except Exception as exc:
            self.error = exc
            self.exhausted = True
            if whole:
                out.clear()
        if len(out) < n:
            self.exhausted = True
        self.pos += len(out)
        if self.exhausted and self.length is not None:  # shorter than iterable_len said
            self.length = self.pos + (1 if self.error is not None else 0)
        return out


class Job:
    """One call's work and its bookkeeping (owned by the dispatcher thread)."""

    def __init__(
        self,
        id: int,
        fn: FnPayload,
        kind: str,  # "map" | "star" | "apply"
        source: SequenceSource | IteratorSource,
        sink: Any,  # one of the _results classes
        chunksize: int | None,
    ) -> None:
        self.id, self.fn, self.kind, self.source = id, fn, kind, source
        self._sink = sink
        self._sink_ref: Any = None  # weakref.ref when held weakly (see hold_weakly)
        self.chunksize = chunksize
        self.retry: collections.deque[tuple[int, Any]] = collections.deque()  # (start, items)
        self.inflight = 0
        self.failed_fn = False  # the function could not be loaded, or the pool was torn down
        self.cancelled = False  # interrupted: nothing more is sent or delivered
        self.items_timed = 0
        self.seconds_timed = 0.0
        self.probe = 1
        self.next_chunk_id = 0
        self.length_sent = False
        self.retries = 0
        self.task_timeout: float | None = None
        self.attempts: dict[int, int] = {}  # item index -> re-runs after its worker died
        self.last_bytes = 0  # pickled size of the last chunk sent
        self.output: Any = None  # _driver.output.OutputTarget: where its workers' output goes
        self.cell: Any = None  # (kernel, parent header) of the submitting notebook cell
        self.log_levels: tuple[tuple[str, int], ...] = ()  # the caller's (see _worker.wlog)
        # Progress (see _driver.progress): items delivered, failed, and finished per worker slot.
        self.progress: Any = None  # a _driver.progress.JobProgress when progress is wanted
        self.delivered = 0
        self.failed = 0
        self.by_worker: dict[int, int] = {}

    @property
    def sink(self) -> Any:
        """The caller's result object, or a stand-in that takes deliveries and drops them once
        the caller let go of it (an ``imap`` iterator left with ``break``)."""
        if self._sink_ref is None:
            return self._sink
        sink = self._sink_ref()
        return _DROPPED if sink is None else sink

    def hold_weakly(self, on_drop: Any) -> None:
        """Keep only a weak reference to the result: when the caller drops it, ``on_drop()``
        (the pool cancels the job). For iterators: nobody can read their results any more.
        Callers of ``apply_async``/``map_async`` may drop the result and rely on callbacks."""
        import weakref

        self._sink_ref = weakref.ref(self._sink, lambda _ref: on_drop())
        self._sink = None

    @property
    def est(self) -> float | None:
        """Measured seconds per item, or None before the first chunk came back."""
        if self.items_timed == 0:
            return None
        return self.seconds_timed / self.items_timed

    def has_work(self) -> bool:
        if self.failed_fn or self.cancelled:
            return False
        return bool(self.retry) or not self.source.exhausted

    def done(self) -> bool:
        return not self.has_work() and self.inflight == 0

    def chunk_size(self, nworkers: int, budget: int | None) -> int:
        if self.chunksize is not None:
            n = self.chunksize
        else:
            est = self.est
            if est is None:
                n, self.probe = self.probe, min(self.probe * 2, PROBE_MAX)
            else:
                n = max(1, int(TARGET_CHUNK_S / max(est, 1e-9)))
            if self.source.length is not None:
                left = self.source.length - self.source.pos
                # The tail shrinks geometrically to stay balanced, but never below a chunk of
                # MIN_CHUNK_S of work: smaller ones cost more round trips than they balance.
                floor = 1 if est is None else math.ceil(MIN_CHUNK_S / max(est, 1e-9))
                n = min(n, max(1, math.ceil(left / (2 * nworkers)), floor))
            else:
                n = min(n, MAX_UNSIZED_CHUNK)
        if budget is not None:
            n = min(n, budget)
        return max(1, n)

    def cut(self, nworkers: int, budget: int | None) -> tuple[int, Any]:
        """The next (start index, items) to send: at most ``budget`` items when given (a
        chunk to run again is split to fit)."""
        if self.retry:
            start, items = self.retry.popleft()
            if budget is not None and 0 < budget < len(items):
                self.retry.appendleft((start + budget, items[budget:]))
                items = items[:budget]
            return start, items
        start = self.source.pos
        n = self.chunk_size(nworkers, budget)
        return start, self.source.take(n, whole=self.chunksize is not None)

    def deliver(
        self,
        start: int,
        values: list[Any],
        failures: dict[int, BaseException],
        worker_id: int | None = None,
    ) -> None:
        """Hand results to the caller's result object, counting them for the progress views."""
        self.delivered += len(values)
        self.failed += len(failures)
        if worker_id is not None:
            self.by_worker[worker_id] = self.by_worker.get(worker_id, 0) + len(values)
        self.sink._deliver(start, values, failures)

    def record_time(self, count: int, elapsed: float) -> None:
        self.items_timed += count
        self.seconds_timed += elapsed


class _Dropped:
    """The result object of a job whose caller let go of it: deliveries go nowhere."""

    def _deliver(self, *args: Any) -> None:
        pass

    _set_length = _abort = _deliver


_DROPPED = _Dropped()


class Chunk:
    """Items of a job sent to a worker; kept until they are back (resent if the worker dies)."""

    __slots__ = ("chunk_id", "items", "job", "segments", "start", "track")

    def __init__(
        self, job: Job, chunk_id: int, start: int, items: Any, track: int = TRACK_INDEX
    ) -> None:
        self.job, self.chunk_id, self.start, self.items = job, chunk_id, start, items
        self.track = track  # _worker.protocol.TRACK_*: what the worker writes in its slot
        self.segments: Any = None  # _shm.Segments of its large arguments, until it is back

    @property
    def count(self) -> int:
        return len(self.items)
