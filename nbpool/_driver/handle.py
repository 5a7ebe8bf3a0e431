"""What the dispatcher knows of one worker, whatever runs it: ``WorkerHandle``.

An engine's transport (``_engines.local``: a process; ``_engines.ray``: an actor behind a
bridge thread) subclasses it. The dispatcher touches handles from its own thread only.
"""

from __future__ import annotations

import collections
import signal
import time

from .._worker.protocol import STAGE_IDLE

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from .._worker.protocol import Channel


class WorkerHandle:
    """What the dispatcher knows of one worker, whatever runs it (touched by the dispatcher
    thread only). ``Worker`` below is a local process; ``_engines.ray.RayWorker`` an actor. An
    engine's
    transport gives the dispatcher the same four things either way: a ``Channel`` (``ch``) that
    carries ``_worker.protocol`` messages, output fds (``out_fds``), a 4-slot array saying which
    item
    the worker is on (``slot``), and ``kill``/``reap``."""

    pid = 0
    in_process = False  # a thread of the caller (_engines.threads): items are not pickled
    # a process on this machine that can map this process's shared memory, and whose shared
    # memory this process can map (``nbpool._shm``): large arguments and results go that way
    maps_memory = False
    host = ""  # "" for this machine
    node = ""  # a cluster node's id ("" for this machine)
    pidfd: int | None = None

    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.started_at = time.monotonic()  # (insights: start-up counts from here)
        self.ch: Channel
        self.slot: Any
        self.out_fds: dict[int, str] = {}
        self.ready = False
        self.chunks_done = 0
        self.retiring = False
        self.dead = False
        self.kill_reason: BaseException | None = None  # set when we kill it on purpose
        self.kill_note = ""  # why we killed it, for its dashboard row ("stopped by interrupt")
        # Set by a transport when this death means no worker can run any more (a cluster that
        # is gone): every job fails with it and the pool stops.
        self.fatal: BaseException | None = None
        self.inflight: dict[tuple[int, int], Any] = {}  # (job, chunk) -> Chunk, in send order
        self.fns: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.globals: dict[tuple[str, str], bytes] = {}  # mirror of its _worker.functions._APPLIED
        self.refs: set[int] = set()  # pool.put objects it holds (mirror of _worker.refs)
        self.refs_dropped: list[int] = []  # ... and those it may forget, told with its next chunk
        self.budget: int | None = None  # items left before maxtasksperchild retires it
        self.init_error: BaseException | None = None
        self.exited_cleanly = False  # it answered Shutdown (ExitDone): its worker_exit ran
        self.last_output: Any = None  # _driver.output.OutputTarget of the last job it finished
        self.last_job: int | None = None
        self.log_levels: Any = None  # the logger levels it last got (see _worker.wlog)
        self.line_bufs: dict[int, Any] = {}  # out fd -> _driver.output.LineBuffer (dispatcher's)
        # What the progress views last saw it on: (job id, item index), and since when.
        self.seen_item: tuple[int, int] | None = None
        self.seen_at = 0.0

    @property
    def where(self) -> str:
        return f" on {self.host}" if self.host else ""

    @property
    def tag(self) -> str:
        """How its output lines are prefixed: ``w1 pid 4711`` (``... on 10.0.0.7``)."""
        return f"w{self.wid} pid {self.pid}{self.where}"

    @property
    def label(self) -> str:
        """How messages name it: ``worker 1 (pid 4711)``, ``... on node-2`` for a cluster's."""
        return f"worker {self.wid} (pid {self.pid}{self.where})"

    def running(self) -> tuple[Any, int] | None:
        """(chunk, slot stage/index) of the chunk the worker is on, from the shared slot."""
        if not self.inflight:
            return None
        chunk = next(iter(self.inflight.values()))
        if self.slot[0] == chunk.job.id and self.slot[1] == chunk.chunk_id:
            return chunk, self.slot[2]
        return chunk, STAGE_IDLE  # not started on it yet

    def slot_seen_at(self) -> float:
        """When ``slot`` was last true (monotonic): now for shared memory; a transport that
        copies it (polls) says when its copy was taken."""
        return time.monotonic()

    def kill(self, reason: BaseException | None = None, note: str = "") -> None:
        if reason is not None and self.kill_reason is None:
            self.kill_reason = reason
        if note and not self.kill_note:
            self.kill_note = note
        self._stop()

    def _stop(self) -> None:
        raise NotImplementedError

    def reap(self) -> int | None:
        """Wait until it is gone and close what we hold; its exit status if it has one."""
        raise NotImplementedError

    def describe_exit(self, code: int | None) -> str:
        return describe_exit(code)

    def rss(self) -> int | None:
        """Its resident memory in bytes (None: unknown)."""
        raise NotImplementedError

    def stats(self) -> tuple[float | None, int | None] | None:
        """(CPU %, RSS) when the transport measures them itself; None: the views ask psutil."""
        return None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {
            "SIGKILL": " (the Linux OOM killer sends SIGKILL when memory runs out)",
            "SIGSEGV": " (a crash in C code)",
            "SIGBUS": " (a crash in C code)",
            "SIGABRT": " (a C library aborted)",
        }.get(name, "")
        return f"killed by {name}{hint}"
    return f"exited with code {code}"
