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
each segment open until the caller's ``Release``; the caller maps it, or reads it into memory
where each mapping would hold an fd (before Python 3.13), since a caller may keep thousands.

``MAP_PRIVATE``: a worker reads the caller's pages without a copy; what a task writes to the
array is copied on write into that worker (as after a fork), never seen by other workers or the
caller.

Linux only (``memfd_create``, ``/proc``); elsewhere buffers go over the socket as before.
"""

from __future__ import annotations

import itertools
import mmap
import os
import sys

TYPE_CHECKING = False  # see nbpool/__init__.py: no typing import on the worker's path
if TYPE_CHECKING:
    from typing import Any

SHM_MIN = 1 << 20  # smaller buffers are cheaper to copy through the socket
_tokens = itertools.count(1)


def available() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd")


class Segments:
    """Caller side: the memfds of one pickled object's large buffers."""

    def __init__(self) -> None:
        self.fds: dict[int, tuple[int, int, str]] = {}  # buffer index -> (fd, size, name)

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd, _, _ in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass


def share(buffers: list[Any]) -> tuple[list[Any], Segments | None]:
    """Move each buffer of ``SHM_MIN`` bytes or more into a memfd. Returns the buffer list with
    ``b""`` where a buffer went to shared memory, and the segments (index into that list); or
    the buffers as they are and None when none is that large or this system has no memfd."""
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
            name = f"nbpool-{os.getpid()}-{next(_tokens)}"
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
            segments.fds[i] = (fd, view.nbytes, name)
            # (written, not copied into a mapping: the kernel fills its fresh pages directly,
            # ~1.7x faster here than page-faulting them in through an mmap)
            done = 0
            while done < view.nbytes:
                done += os.pwrite(fd, view[done:], done)
            out.append(b"")
    except BaseException:
        segments.close()
        raise
    return out, segments


def describe(segments: Segments, offset: int = 0) -> tuple[tuple[int, int, int, str], ...]:
    """What a message says of them: (buffer index + ``offset``, fd, size, name)."""
    return tuple((i + offset, fd, size, name) for i, (fd, size, name) in segments.fds.items())


# ----------------------------------------------------------------------------- worker side


# Python's mmap keeps a duplicate of the fd for as long as the mapping lives, until 3.13's
# trackfd=False: one fd per array a caller keeps would soon meet the fd limit (1024 here).
_UNTRACKED = sys.version_info >= (3, 13)


def attach(
    buffers: list[Any],
    shm: tuple[tuple[int, int, int, str], ...],
    owner: int,
    many: bool = False,
) -> None:
    """Put ``owner``'s shared-memory segments in place in ``buffers``: private (copy-on-write)
    mappings. ``many``: the caller's results, which it may keep by the thousand: mapped without
    holding an fd each."""
    for index, fd, size, name in shm:
        path = f"/proc/{owner}/fd/{fd}"
        if os.readlink(path) != f"/memfd:{name} (deleted)":
            raise RuntimeError(f"nbpool: shared memory {name} is gone from {owner} ({path})")
        own = os.open(path, os.O_RDONLY)
        try:
            if many and not _UNTRACKED:
                buffers[index] = _map_without_fd(own, size)
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


def _map_without_fd(fd: int, size: int) -> memoryview:
    """A private mapping that holds no fd (before Python 3.13): libc's mmap through ctypes,
    unmapped when the last view of it goes."""
    import ctypes
    import weakref

    libc = _libc()
    addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
    region = (ctypes.c_char * size).from_address(addr)
    weakref.finalize(region, libc.munmap, addr, size)
    return memoryview(region).cast("B")


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
