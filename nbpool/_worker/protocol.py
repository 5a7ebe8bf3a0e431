"""Messages between the kernel and a worker, and the framing that carries them.

Every message is a frozen ``Message`` (see ``_worker.message``), pickled with plain pickle,
optionally
followed by raw buffers (a pickled argument or result list and its out-of-band numpy buffers).
Raw buffers are
written straight from their memory and read into fresh ``bytearray``s, so a 50 MB array crosses
with one copy on each side and arrives writable.

Frame: ``!QII`` (header length, number of buffers inside the header's pickle, number of buffers
that follow it), the header, then per buffer ``!Q`` + bytes.
The transport is an AF_UNIX socket pair per worker: no TCP port is ever opened.
"""

from __future__ import annotations

import os
import pickle
import select
import struct

from .functions import FnPayload
from .message import Message

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "Cancel",
    "Channel",
    "ChunkDone",
    "ChunkLoadFailed",
    "ExitDone",
    "FnLoadFailed",
    "Hello",
    "InitFailed",
    "ItemFailure",
    "LogRecord",
    "Ready",
    "Release",
    "Reuse",
    "RunChunk",
    "Shutdown",
]

_HEAD = struct.Struct("!QII")
_LEN = struct.Struct("!Q")


# ------------------------------------------------------------------ kernel -> worker


class Hello(Message):
    """First message: who the worker is, and the caller's import environment."""

    worker_id: int
    sys_path: tuple[str, ...]
    initializer: FnPayload | None
    log_levels: tuple[tuple[str, int], ...] = ()  # the caller's logger levels (see _worker.wlog)
    # What a task gets before its item, in this order (mpire's): "id" (the worker id),
    # "shared" (the pool's shared objects), "state" (a dict kept while the worker lives).
    worker_args: tuple[str, ...] = ()
    init_buffers: int = 0  # buffers[:init_buffers]: pickled initargs; the rest: shared objects
    host: str = ""  # where the worker runs, when its transport knows it (a cluster node)
    node: str = ""
    cpu_ids: tuple[int, ...] = ()  # pin the worker to these CPUs (``cpu_ids=``)
    worker_init: FnPayload | None = None  # mpire's hooks: given what a task gets before its
    worker_exit: FnPayload | None = None  # item; worker_exit runs on Shutdown (see ExitDone)
    env: tuple[tuple[str, str], ...] = ()  # set before anything runs (gpus=: CUDA_VISIBLE_DEVICES)
    # buffers in the caller's shared memory (see nbpool._shm): (index, fd, size, name)
    shm: tuple[tuple[int, int, int, str], ...] = ()
    # the shared objects are in Ray's object store under this key: buffers[init_buffers] is
    # the object itself (the bridge passes its ObjectRef, Ray resolves it; _engines.ray.Stored)
    stored_shared: int = 0
    # large result buffers go back in the worker's shared memory (ChunkDone.shm): the caller
    # maps them (a worker on the caller's machine, under the caller's eyes: see nbpool._shm)
    results_shm: bool = False
    # bytes of free result segments it keeps for later results (_shm.Arena): the caller's share
    # of the memory, divided among its workers
    arena_cap: int = 0


# How many distinct functions a worker keeps loaded; the caller mirrors this LRU exactly.
FN_CACHE_SIZE = 64

# What a worker writes in slot[2] (see _engines.local_main) when it is not running a given item.
STAGE_IDLE, STAGE_LOADING, STAGE_RUNNING, STAGE_PICKLING = -1, -2, -3, -4
# RunChunk.track: how closely the worker reports, in its shared slot, which item it is on.
# TRACK_INSIGHTS: as TRACK_TIME, and each item is timed (ChunkDone.slowest; enable_insights).
TRACK_NONE, TRACK_INDEX, TRACK_TIME, TRACK_INSIGHTS = 0, 1, 2, 3
SLOWEST_PER_CHUNK = 5  # (index, seconds) of a chunk's slowest items, with TRACK_INSIGHTS


class RunChunk(Message):
    """Run items ``start .. start+count-1`` of job ``job_id``; buffers: pickled item list."""

    job_id: int
    chunk_id: int
    start: int
    count: int
    kind: str  # "map": fn(x) | "star": fn(*x) | "apply": fn(*args, **kwds)
    fn: FnPayload | None  # None: the worker already holds fn_digest
    fn_digest: bytes
    track: int = TRACK_INDEX
    log_levels: tuple[tuple[str, int], ...] | None = None  # None: unchanged (see _worker.wlog)
    # pool.put objects the worker lacks (see _worker.refs): (id, how many buffers of the
    # message's are its pickle; -1: one, the object itself, from Ray's object store), after
    # the items' buffers; and ids it may forget
    refs: tuple[tuple[int, int], ...] = ()
    drop: tuple[int, ...] = ()
    shm: tuple[tuple[int, int, int, str], ...] = ()  # as Hello.shm (put objects' buffers)


class Cancel(Message):
    """Skip this job's chunks still queued in the worker (handled by its reader thread)."""

    worker_id: int
    job_id: int


class Release(Message):
    """The caller has mapped these result segments (ChunkDone.shm), or could not: close them,
    or, if ``lent``, keep them until the caller's ``Reuse`` says its mappings are gone (handled
    by the worker's reader, ahead of queued chunks)."""

    fds: tuple[tuple[int, str], ...]
    lent: bool = False


class Reuse(Message):
    """The caller no longer maps these result segments (lent to it by ``Release``): they may
    carry later results (``_shm.Arena``)."""

    fds: tuple[tuple[int, str], ...]


class Shutdown(Message):
    """Finish what is queued, then exit."""

    worker_id: int


# ------------------------------------------------------------------ worker -> kernel


class Ready(Message):
    worker_id: int
    pid: int
    host: str = ""  # a cluster node's address; "" for this machine
    node: str = ""  # a cluster node's id; "" for this machine


class LogRecord(Message):
    """A record a task logged, as plain data (see _worker.wlog); the caller handles it."""

    worker_id: int
    record: dict[str, Any]


class InitFailed(Message):
    """The initializer raised; the worker exits after sending this."""

    worker_id: int
    error: bytes  # pickled exception (see ItemFailure)
    tb: str
    lost: str = ""


class ExitDone(Message):
    """The answer to ``Shutdown``, last words of a worker that exits on its own: whether a
    ``worker_exit`` hook ran, and what it raised (else buffers[0..] hold its pickled result)."""

    worker_id: int
    ran: bool = False
    error: bytes = b""  # pickled exception (see ItemFailure)
    tb: str = ""
    lost: str = ""


class ItemFailure(Message):
    """One item raised. ``error`` is the pickled exception, or b"" when it could not be pickled."""

    index: int
    error: bytes
    tb: str
    type_name: str
    message: str
    lost: str = ""  # what of the exception could not be pickled (see _worker.remote_errors)


class ChunkDone(Message):
    """Results of a chunk; buffers: pickled result list (None where an item failed)."""

    worker_id: int
    job_id: int
    chunk_id: int
    elapsed: float
    failures: tuple[ItemFailure, ...] = ()
    skipped: bool = False  # the job was cancelled before this chunk started: nothing ran
    slowest: tuple[tuple[int, float], ...] = ()  # TRACK_INSIGHTS: (index, seconds), slowest first
    # result buffers in the worker's shared memory (Hello.results_shm): (index, fd, size, name);
    # the worker keeps each open until the caller's Release
    shm: tuple[tuple[int, int, int, str], ...] = ()
    # the chunk's arguments came in the caller's shared memory (RunChunk.shm) and no mapping of
    # it is left here: the caller may reuse it (_shm.Arena)
    unmapped: bool = False


class ChunkLoadFailed(Message):
    """The chunk's arguments could not be unpickled in the worker; nothing of it ran."""

    worker_id: int
    job_id: int
    chunk_id: int
    tb: str


class FnLoadFailed(Message):
    """The job's function could not be unpickled in the worker (e.g. a module it lacks)."""

    worker_id: int
    job_id: int
    chunk_id: int
    tb: str


# ------------------------------------------------------------------ framing


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view.nbytes:
        view = view[os.write(fd, view) :]


class UnreadableMessage(OSError):
    """A whole frame arrived but its message could not be unpickled on this side."""


def readable(fds: list[int], timeout: float) -> list[int]:
    """The fds of ``fds`` ready to read within ``timeout`` seconds. poll(), not select():
    select() cannot take an fd of 1024 or more, which a kernel with many open files reaches."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return [fd for fd, _ in p.poll(max(0, int(timeout * 1000 + 0.999)))]


class Channel:
    """One end of a worker's socket pair, as a raw fd (the worker then never imports ``socket``:
    its start-up is every pool's cold start). One sender and one reader at a time."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def send(self, msg: Any, buffers: list[Any] | tuple[Any, ...] = ()) -> None:
        # PickleBuffers inside the message (a large global of a function payload) travel as
        # raw buffers too, not copied into the header pickle.
        inner: list[pickle.PickleBuffer] = []
        head = pickle.dumps(msg, protocol=5, buffer_callback=inner.append)
        views = [memoryview(b).cast("B") for b in (*inner, *buffers)]
        parts: list[bytes | memoryview] = [_HEAD.pack(len(head), len(inner), len(buffers)), head]
        for v in views:
            parts.append(_LEN.pack(v.nbytes))
            if v.nbytes < 65536:
                parts.append(v)
            else:
                # Big buffer: flush what we have and write it straight from its memory.
                _write_all(self.fd, b"".join(parts))
                _write_all(self.fd, v)
                parts = []
        if parts:
            _write_all(self.fd, b"".join(parts))

    def _read_exact(self, n: int, timeout: float | None) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            if timeout is not None and not readable([self.fd], timeout):
                raise TimeoutError(f"no data from the worker within {timeout} s")
            k = os.readv(self.fd, [view[got:]])
            if k == 0:
                raise EOFError("peer closed the channel")
            got += k
        return buf

    def recv(self, timeout: float | None = None) -> tuple[Any, list[bytearray]]:
        """The next message and its buffers. ``timeout`` bounds each wait for more bytes."""
        head_len, ninner, nbuf = _HEAD.unpack(self._read_exact(_HEAD.size, timeout))
        head = self._read_exact(head_len, timeout)
        buffers = []
        for _ in range(ninner + nbuf):
            (n,) = _LEN.unpack(self._read_exact(_LEN.size, timeout))
            buffers.append(self._read_exact(n, timeout))
        try:
            msg = pickle.loads(head, buffers=buffers[:ninner])
        except Exception as exc:  # the frame was read whole: the stream is still in step
            raise UnreadableMessage(f"{type(exc).__name__}: {exc}") from exc
        return msg, buffers[ninner:]


def channel_pair() -> tuple[Channel, int]:
    """A caller-side Channel and the worker's end, as an fd to hand to the child."""
    import socket

    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (parent, child):
        # Bigger buffers: fewer wake-ups when results stream back.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return Channel(parent.detach()), child.detach()
