"""Large buffers in shared memory (local engine): of shared objects, ``pool.put`` objects,
a chunk's arguments (caller → worker) and its results (worker → caller).

::

  caller                                          each local worker
  ──────                                          ─────────────────
  pickle (protocol 5): large buffers out of band
  each buffer of SHM_MIN or more → a memfd        Hello / RunChunk say (index, fd, size, name)
  (anonymous shared memory: no name in /dev/shm,  ─► open /proc/<caller>/fd/<fd>, check its
  one copy, whatever the number of workers)           name, mmap it MAP_PRIVATE, close the fd
                                                   ─► the unpickled array uses those pages

Why a memfd and ``/proc/<caller>/fd``: nothing is ever left in ``/dev/shm``, whoever is killed
(the memory is freed when the last process that holds the fd or a mapping is gone), and no
descriptor has to be passed over the worker's socket (which the worker reads as a raw fd,
without importing ``socket``). The caller keeps the fd open as long as the object may be sent:
the pool's life for shared objects, the ``ObjectRef``'s life for ``put`` (a chunk in flight
holds its ``ObjectRef``, so a worker has mapped it before it can be closed), the chunk's for
its arguments. The worker checks the fd's name before it maps it, so a number reused by another
file is refused, never read.

Results go the other way (``Runner._share``, ``_driver.inbox._map_results``): the worker keeps
each segment open until the caller's ``Release``; the caller maps it without holding an fd
(ctypes: a caller may keep thousands of results).

Segments of arguments and results are reused once nothing maps them any more (``Arena``, and
the diagram in docs/architecture.md): fresh memory costs a page fault per 4 KiB.

``MAP_PRIVATE``: a worker reads the caller's pages without a copy; what a task writes to the
array is copied on write into that worker (as after a fork), never seen by other workers or the
caller.

Linux only (``memfd_create``, ``/proc``); elsewhere buffers go over the socket as before.
"""

from __future__ import annotations

import functools
import itertools
import mmap
import os
import sys
import time

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SHM_MIN = 1 << 20  # smaller buffers are cheaper to copy through the socket
_tokens = itertools.count(1)

# How many times this process has forked. A child inherits our private mappings, and its view
# of a page it never wrote follows the file: memory mapped before a fork is never reused.
_forks = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_parent=lambda: _forks.__setitem__(0, _forks[0] + 1))


def forks() -> int:
    return _forks[0]


def available() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd")


class _Seg:
    """One memfd of the caller's."""

    __slots__ = ("capacity", "fd", "name", "used", "view")

    def __init__(self, fd: int, name: str, capacity: int) -> None:
        self.fd, self.name, self.capacity = fd, name, capacity
        self.view: mmap.mmap | None = None  # a shared mapping, made when it is first reused
        self.used = 0.0  # when it was given back to its Arena (time.monotonic)

    def write(self, view: memoryview) -> None:
        if self.view is None:  # fresh: written, not copied into a mapping, as the kernel fills
            done = 0  # its fresh pages directly (~1.7x faster here than faulting them in)
            while done < view.nbytes:
                done += os.pwrite(self.fd, view[done:], done)
        else:  # reused, with our mapping of its pages: a plain copy (~10 GB/s here)
            self.view[: view.nbytes] = view

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
            self.view = None
        try:
            os.close(self.fd)
        except OSError:
            pass


class Segments:
    """Caller side: the memfds of one pickled object's large buffers."""

    def __init__(self) -> None:
        self.segs: dict[int, tuple[_Seg, int]] = {}  # buffer index -> (memfd, bytes used)

    def close(self) -> None:
        segs, self.segs = self.segs, {}
        for seg, _ in segs.values():
            seg.close()

    def recycle(self, arena: Arena) -> None:
        """Give them back to ``arena``, to carry other arguments: only once no process maps
        them any more (the worker said so: ``ChunkDone.unmapped``)."""
        segs, self.segs = self.segs, {}
        for seg, _ in segs.values():
            arena.give(seg)


class Arena:
    """Caller side: memfds that carried a chunk's arguments, kept for the next ones.

    Memory a process touches for the first time costs a page fault per 4 KiB: a fresh memfd
    fills at ~1.4 GB/s here, one whose pages exist at ~10 GB/s through a mapping kept open
    (``benchmarks/memcopy.py``). So a segment is reused, once its worker has unmapped it (an
    array a task kept would otherwise change under it), by a later argument of its size. A
    free segment is closed after ``keep_s`` unused, and the free ones hold at most ``cap``
    bytes and ``MAX_FREE`` fds.
    """

    KEEP_S = 10.0  # the default of keep_s
    MAX_FREE = 16

    def __init__(self, cap: int | None = None, mapped: bool = True) -> None:
        self.cap = _default_cap() if cap is None else cap
        self.keep_s = _keep_s()  # (read now: a notebook may set it after importing nbpool)
        # Copy into a reused segment through a mapping of it kept open (2.5x faster than pwrite
        # here); not in a worker, whose RSS would then count that memory against
        # max_memory_per_worker (written with pwrite: no page of it is ever in its RSS)
        self.mapped = mapped
        self.free: list[_Seg] = []  # oldest first

    @property
    def size(self) -> int:
        """Bytes of the free ones."""
        return sum(seg.capacity for seg in self.free)

    def take(self, nbytes: int) -> _Seg | None:
        """The smallest free segment that holds ``nbytes`` and is not more than twice that."""
        best = None
        for seg in self.free:
            if nbytes <= seg.capacity <= 2 * nbytes and (
                best is None or seg.capacity < best.capacity
            ):
                best = seg
        if best is not None:
            if best.view is None and self.mapped:
                best.view = mmap.mmap(best.fd, best.capacity, flags=mmap.MAP_SHARED)
            self.free.remove(best)
        return best

    def give(self, seg: _Seg) -> None:
        if seg.capacity > self.cap or self.keep_s <= 0:
            seg.close()
            return
        seg.used = time.monotonic()
        self.free.append(seg)
        while self.size > self.cap or len(self.free) > self.MAX_FREE:
            self.free.pop(0).close()

    def trim(self) -> bool:
        """Close the segments unused for ``keep_s``. True while some are left."""
        limit = time.monotonic() - self.keep_s
        while self.free and self.free[0].used <= limit:
            self.free.pop(0).close()
        return bool(self.free)

    def close(self) -> None:
        free, self.free = self.free, []
        for seg in free:
            seg.close()


def _keep_s() -> float:
    """``NBPOOL_SHM_KEEP_S``: 0 (keep nothing) to 3600 seconds; anything else: the default."""
    try:
        keep = float(os.environ.get("NBPOOL_SHM_KEEP_S", Arena.KEEP_S))
    except ValueError:
        return Arena.KEEP_S
    return keep if 0.0 <= keep <= 3600.0 else Arena.KEEP_S


def _default_cap() -> int:
    """An eighth of this machine's memory, and 2 GiB at most."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return min(2 << 30, total // 8)


def share(buffers: list[Any], arena: Arena | None = None) -> tuple[list[Any], Segments | None]:
    """Move each buffer of ``SHM_MIN`` bytes or more into a memfd (one of ``arena``'s free
    ones where it fits). Returns the buffer list with ``b""`` where a buffer went to shared
    memory, and the segments (index into that list); or the buffers as they are and None when
    none is that large or this system has no memfd."""
    if not any(memoryview(b).nbytes >= SHM_MIN for b in buffers) or not available():
        return list(buffers), None
    segments = Segments()
    out: list[Any] = []
    try:
        for i, b in enumerate(buffers):
            view = memoryview(b).cast("B")
            if view.nbytes < SHM_MIN:
                out.append(b)
                continue
            seg = arena.take(view.nbytes) if arena is not None else None
            if seg is None:
                name = f"nbpool-{os.getpid()}-{next(_tokens)}"
                seg = _Seg(os.memfd_create(name, os.MFD_CLOEXEC), name, view.nbytes)
            segments.segs[i] = (seg, view.nbytes)
            seg.write(view)
            out.append(b"")
    except BaseException:
        segments.close()
        raise
    return out, segments


def describe(segments: Segments, offset: int = 0) -> tuple[tuple[int, int, int, str], ...]:
    """What a message says of them: (buffer index + ``offset``, fd, size, name)."""
    return tuple((i + offset, seg.fd, size, seg.name) for i, (seg, size) in segments.segs.items())


# ----------------------------------------------------------------------------- worker side


# Python's mmap keeps a duplicate of the fd for as long as the mapping lives, until 3.13's
# trackfd=False: one fd per array a caller keeps would soon meet the fd limit (1024 here), so
# the caller's mappings of results are made with ctypes (_map_without_fd).
_UNTRACKED = sys.version_info >= (3, 13)


def attach(
    buffers: list[Any],
    shm: tuple[tuple[int, int, int, str], ...],
    owner: int,
    many: bool = False,
    unmapped: Callable[[int, str], object] | None = None,
) -> list[Any]:
    """Put ``owner``'s shared-memory segments in place in ``buffers``: private (copy-on-write)
    mappings. ``many``: the caller's results, which it may keep by the thousand: mapped without
    holding an fd each, and ``unmapped(fd, name)`` called once each is gone. Returns
    (index, weak reference to its mapping) for each (not for ``many``): the reference is dead
    once nothing uses that memory."""
    import weakref

    mapped = []
    for index, fd, size, name in shm:
        path = f"/proc/{owner}/fd/{fd}"
        if os.readlink(path) != f"/memfd:{name} (deleted)":
            raise RuntimeError(f"nbpool: shared memory {name} is gone from {owner} ({path})")
        own = os.open(path, os.O_RDONLY)
        try:
            if many:
                then = None if unmapped is None else functools.partial(unmapped, fd, name)
                buffers[index] = _map_without_fd(own, size, then)
                continue
            m = mmap.mmap(
                own,
                size,
                flags=mmap.MAP_PRIVATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
                **({"trackfd": False} if _UNTRACKED else {}),
            )
        finally:
            os.close(own)
        buffers[index] = memoryview(m)
        mapped.append((index, weakref.ref(m)))
    return mapped


def _map_without_fd(fd: int, size: int, then: Callable[[], object] | None) -> memoryview:
    """A private mapping that holds no fd (Python's mmap holds one before 3.13): libc's mmap
    through ctypes, unmapped when the last view of it goes, and then ``then()``."""
    import ctypes
    import weakref

    libc = _libc()
    addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
    region = (ctypes.c_char * size).from_address(addr)
    # (not at exit: an array may still be read then, by an atexit hook or a daemon thread)
    weakref.finalize(region, _unmap, addr, size, then).atexit = False
    return memoryview(region).cast("B")


def _unmap(addr: int, size: int, then: Callable[[], object] | None) -> None:
    _libc().munmap(addr, size)
    if then is not None:
        then()


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_long,
        ]  # fmt: skip
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _LIBC = libc
    return _LIBC
