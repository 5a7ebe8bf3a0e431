"""How fast this machine moves 400 MB, by each route nbpool could use (docs/performance.md).

    .venv/bin/python benchmarks/memcopy.py

Fresh memory costs a page fault per 4 KiB, which bounds every row that moves arrays: compare a
sum in place, copies into fresh memory, a memfd written with ``pwrite`` or through a mapping, a
memfd mapped copy-on-write, and a ``socketpair``. Median of 5 runs each.
"""

from __future__ import annotations

import mmap
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np

N = 50_000_000  # float64: 400 MB


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    a = np.ones(N)
    view = memoryview(a).cast("B")
    n = view.nbytes

    def fresh_copy() -> None:
        b = bytearray(n)
        b[:] = view

    def memfd_mmap() -> None:
        fd = os.memfd_create("nbpool-bench", os.MFD_CLOEXEC)
        os.ftruncate(fd, n)
        with mmap.mmap(fd, n) as m:
            m[:] = view
        os.close(fd)

    def memfd_pwrite() -> None:
        fd = os.memfd_create("nbpool-bench", os.MFD_CLOEXEC)
        done = 0
        while done < n:
            done += os.pwrite(fd, view[done:], done)
        os.close(fd)

    filled = os.memfd_create("nbpool-bench", os.MFD_CLOEXEC)
    os.pwrite(filled, view, 0)

    def map_and_sum() -> None:
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        m = mmap.mmap(filled, n, flags=mmap.MAP_PRIVATE, prot=prot)
        np.frombuffer(m, dtype=np.float64).sum()

    s1, s2 = socket.socketpair()

    def through_socket() -> None:
        def receive() -> None:
            got = bytearray(n)
            into = memoryview(got)
            done = 0
            while done < n:
                done += s2.recv_into(into[done:])

        reader = threading.Thread(target=receive)
        reader.start()
        s1.sendall(view)
        reader.join()

    rows = [
        ("a.sum() on an array already in memory", lambda: a.sum()),
        ("copy into a fresh bytearray", fresh_copy),
        ("write into a fresh memfd with pwrite", memfd_pwrite),
        ("the same through an mmap of the memfd", memfd_mmap),
        ("through a socketpair (into fresh memory)", through_socket),
        ("map a memfd copy-on-write and sum it", map_and_sum),
    ]
    print(f"{n / 1e6:.0f} MB, median of 5, {os.cpu_count()} CPUs")
    for name, fn in rows:
        print(f"{name:<45} {timed(fn):.3f} s")
    os.close(filled)


if __name__ == "__main__":
    main()
