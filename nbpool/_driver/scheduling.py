"""The dispatcher's sending side: which worker gets which chunk, and what goes with it.

A mixin of ``Engine`` (``_driver.dispatcher``): these methods run in the dispatcher thread only.
Workers pull: an idle worker (or one whose chunk is short, see ``_capacity``) gets the next
chunk of the oldest job that has work, cut to size by ``_jobs``.
"""

from __future__ import annotations

from .._errors import add_note
from .._jobs import Chunk, Job
from .._shm import Segments, share
from .._shm import describe as describe_shm
from .._worker.functions import FnPayload
from .._worker.protocol import (
    FN_CACHE_SIZE,
    TRACK_INDEX,
    TRACK_INSIGHTS,
    TRACK_NONE,
    TRACK_TIME,
    RunChunk,
)
from .._worker.refs import used
from .._worker.serialize import InProcess, dumps_data, short_repr
from .handle import WorkerHandle as Worker
from .state import EngineState

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

# Largest chunk (pickled) sent to a worker that is still busy: well under the socket buffer.
PREFETCH_MAX_BYTES = 256 * 1024
# Items faster than this are not tracked one by one (the slot write would cost more than them).
TRACK_MIN_ITEM_S = 5e-6
# Items at least this slow also get their start time in the slot (~50 ns more an item): the
# dashboard then shows exactly how long a worker has been on its item.
TIME_MIN_ITEM_S = 1e-3


class SchedulingMixin(EngineState):
    def _schedule(self) -> None:
        while self._pending:
            job = self._pending[0]
            if not job.has_work():
                self._pending.popleft()
                self._maybe_finish(job)
                continue
            room = self._room()
            if room == 0:
                return
            candidates = [w for w in self._slots if w is not None and self._capacity(w, job)]
            if not candidates:
                return
            self._dispatch(job, min(candidates, key=lambda w: len(w.inflight)), room)

    def _room(self) -> int | None:
        """How many more items may be sent (``max_tasks_active``: items in flight, all jobs
        and workers together); None: no bound."""
        if self._max_active is None:
            return None
        inflight = sum(c.count for w in self._all for c in w.inflight.values())
        return max(0, self._max_active - inflight)

    def _capacity(self, w: Worker, job: Job) -> bool:
        if w.dead or w.retiring or w.budget == 0:
            return False
        if not w.inflight:
            return True
        # A second chunk in flight hides the round trip, but only
        # * for short chunks: a queued long item would wait behind its neighbour while another
        #   worker sits idle;
        # * for small ones: the worker reads its socket only between chunks, so a large send to
        #   a busy worker would block this thread while that worker may be blocked sending us a
        #   large result (a deadlock);
        # * of the same job, whose chunks we have measured.
        if len(w.inflight) == 1:
            (c,) = w.inflight.values()
            est = job.est
            return (
                c.job is job
                and est is not None
                and est * c.count < 0.1
                and job.last_bytes < PREFETCH_MAX_BYTES
                and job.task_timeout is None
            )
        return False

    def _dispatch(self, job: Job, w: Worker, room: int | None = None) -> None:
        self._flush_partials(w, job.id, keep=True)  # another job's last words end here
        # at most what its lifespan has left and what max_tasks_active leaves room for
        limits = [n for n in (w.budget, room) if n is not None]
        start, items = job.cut(self.nworkers, min(limits) if limits else None)
        src = job.source
        if src.error is not None and src.exhausted and not job.length_sent:
            # The input iterable raised: that exception is the result at its position.
            job.deliver(src.pos, [None], {src.pos: src.error})
            job.sink._set_length(src.pos + 1)
            job.length_sent = True
        if not len(items):
            self._maybe_finish(job)
            return
        try:
            data: Any
            oob: list[Any]
            if w.in_process:  # a thread of this process (_engines.threads): no pickling
                data, oob, ref_ids = InProcess(items), [], []
            else:
                with used() as ref_ids:  # pool.put objects among the items
                    data, oob = dumps_data(items)
        except Exception:
            self._split_unpicklable(job, start, items)
            return
        ref_buffers: list[Any] = []
        refs: tuple[tuple[int, int], ...] = ()
        shm: tuple[tuple[int, int, int, str], ...] = ()
        segments = None
        if w.maps_memory and oob:
            # Large arguments (arrays, bytes): one copy into shared memory that the worker maps,
            # none through its socket. Closed when the chunk is back (or lost): the worker has
            # mapped them by then; or kept for later arguments, if it unmapped them (_shm.Arena).
            oob, segments = share(oob, self._arena)
            if segments is not None:
                shm = describe_shm(segments, offset=1)
        if ref_ids:
            unknown = [r for r in ref_ids if r not in self.refs]
            if unknown:
                self._unknown_ref(job, start, items, unknown[0])
                return
            new = [r for r in dict.fromkeys(ref_ids) if r not in w.refs]
            sent = []
            for r in new:
                pickled, pickled_oob, store = self.refs[r]
                if store is not None and not isinstance(store, Segments):
                    # in a cluster's object store: the bridge passes it (_engines.ray.Stored)
                    ref_buffers.append(b"")
                    sent.append((r, -1))
                    continue
                if store is not None:  # its large buffers: in shared memory (nbpool._shm)
                    at = 1 + len(oob) + len(ref_buffers) + 1
                    shm += describe_shm(store, offset=at)
                ref_buffers += [pickled, *pickled_oob]
                sent.append((r, 1 + len(pickled_oob)))
            refs = tuple(sent)
            w.refs.update(new)
        drop, w.refs_dropped = tuple(w.refs_dropped), []
        job.last_bytes = 0 if w.in_process else len(data) + sum(memoryview(b).nbytes for b in oob)
        if job.task_timeout is not None:
            track = TRACK_TIME
            self._timers.call_later(job.task_timeout, lambda: self._check_timeout(w))
        elif job.est is not None and job.est < TRACK_MIN_ITEM_S:
            track = TRACK_NONE
        elif job.est is not None and job.est < TIME_MIN_ITEM_S:
            track = TRACK_INDEX
        else:  # slow items, or not measured yet (probe chunks are small)
            track = TRACK_TIME
        if self.insights is not None:  # every item timed, its start in the slot as TRACK_TIME
            track = TRACK_INSIGHTS
        payload = self._fn_for(job, w)
        job.next_chunk_id += 1
        chunk = Chunk(job, job.next_chunk_id, start, items, track)
        chunk.segments = segments
        levels = None if w.log_levels == job.log_levels else job.log_levels
        w.log_levels = job.log_levels
        msg = RunChunk(
            job.id,
            chunk.chunk_id,
            start,
            len(items),
            job.kind,
            payload,
            job.fn.digest,
            track,
            levels,
            refs,
            drop,
            shm,
        )
        w.inflight[(job.id, chunk.chunk_id)] = chunk
        job.inflight += 1
        if w.budget is not None:
            w.budget -= len(items)
        self._send(w, msg, [data, *oob, *ref_buffers])
        if job.progress is not None:
            self._progress_started(job)

    def _fn_for(self, job: Job, w: Worker) -> FnPayload | None:
        """The function payload to send: nothing if the worker holds it with the same globals
        (and none of the names it lacks in the kernel is still in the worker from us)."""
        fn = job.fn
        same = {(m, n) for m, n, got, _ in fn.globals if w.globals.get((m, n)) == got}
        stale = [key for key in fn.missing if key in w.globals]
        if fn.digest in w.fns and len(same) == len(fn.globals) and not stale:
            w.fns.move_to_end(fn.digest)
            return None
        for key in stale:  # the worker drops them (see _worker.functions.load_fn)
            del w.globals[key]
        for m, n, got, _ in fn.globals:
            w.globals[(m, n)] = got
        w.fns[fn.digest] = None
        w.fns.move_to_end(fn.digest)
        if len(w.fns) > FN_CACHE_SIZE:
            w.fns.popitem(last=False)
        return fn.without_globals(same) if same else fn

    def _requeue_singly(self, job: Job, start: int, items: Any) -> None:
        """Send ``items`` again one by one, to find the one at fault: it fails again, alone."""
        for i in reversed(range(len(items))):
            self._requeue(job, start + i, items[i : i + 1])

    def _requeue(self, job: Job, start: int, items: Any) -> None:
        if len(items) and not job.cancelled:
            job.retry.appendleft((start, items))
            if job not in self._pending:
                self._pending.appendleft(job)

    def _unknown_ref(self, job: Job, start: int, items: Any, ref_id: int) -> None:
        """Items that name an ObjectRef this pool never made (another pool's put): they fail,
        the call goes on. A chunk of several is sent again item by item, to find them."""
        if len(items) > 1:
            self._requeue_singly(job, start, items)
            return
        err = ValueError(
            f"item {start} holds nbpool.ObjectRef {ref_id}, which this pool's put() did not "
            "make: pass a reference only to the pool that made it"
        )
        failures: dict[int, BaseException] = dict.fromkeys(range(start, start + len(items)), err)
        job.deliver(start, [None] * len(items), failures)
        self._maybe_finish(job)

    def _split_unpicklable(self, job: Job, start: int, items: Any) -> None:
        if len(items) > 1:
            self._requeue_singly(job, start, items)
            return
        try:
            dumps_data(items)
        except Exception as exc:
            # The item fails with what pickling raised, of its own type (the stdlib's rule:
            # ``except TypeError`` code keeps working), plus a note naming the item.
            arg = items[0]
            add_note(
                exc,
                f"nbpool: item {start} (argument {short_repr(arg)}, a {type(arg).__name__}) "
                "cannot be pickled. Pass data the worker can rebuild (paths, numbers, arrays), "
                "or create such objects in the worker (in the function or an `initializer`).",
            )
            job.deliver(start, [None], {start: exc})
        self._maybe_finish(job)
