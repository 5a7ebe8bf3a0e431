"""The local engine's workers: processes on this machine, started, watched and stopped.

A worker is started with ``subprocess`` (fork + exec of a fresh interpreter, never a bare fork
of the caller) and gets five descriptors: its end of an AF_UNIX socket pair (messages), a
64-byte shared-memory slot (which item it is on), the read end of the pool's lifeline pipe
(EOF when the caller is gone), and its stdout/stderr, which are pipes that the dispatcher
reads. The caller also holds a pidfd (Linux) so that a death is seen in the same ``select()``
as the results, even if a grandchild keeps the socket open.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import subprocess
import sys
import threading
import time

from .._driver.handle import WorkerHandle
from .._worker.protocol import STAGE_IDLE, channel_pair, readable
from .proctree import kill_group, kill_tree

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

_NBPOOL_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    "import sys; sys.path.insert(0, {path!r}); from nbpool._engines.local_main import main; main()"
)
SLOT_BYTES = 64
# A process group, not a session: a new session is also a new scheduler autogroup on Linux,
# and workers in autogroups of their own ran CPU-bound items measurably slower here.
# (``process_group`` is new in 3.11; 3.10 falls back to a session.)
_OWN_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
)


def _shared_slot() -> tuple[int, mmap.mmap]:
    """An fd for the child and our own mapping of the same 64 bytes (no name, nothing to clean)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("nbpool-slot", 0)
    else:  # an unlinked temporary file serves as well where memfd is missing
        import tempfile

        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, SLOT_BYTES)
    return fd, mmap.mmap(fd, SLOT_BYTES)


class Worker(WorkerHandle):
    """A local worker process."""

    maps_memory = True
    proc: Any  # a subprocess.Popen, or a forkserver.ForkedProcess (the same few members)

    def __init__(self, wid: int, lifeline: int, start_method: str = "auto") -> None:
        super().__init__(wid)
        # "auto" (the default): forked if this process's fork server is up already, else
        # spawned (reap starts the server, for the next pools and replacements). A server
        # that fails is given up, and its workers are spawned: the default never fails for it.
        self._auto = start_method == "auto"
        if start_method != "spawn":
            from .forkserver import ForkServer

            if start_method == "forkserver":
                self._start(lifeline, ForkServer.get())
                return
            server = ForkServer.running() if self._auto else None
            if server is not None:
                try:
                    self._start(lifeline, server)
                    return
                except Exception:
                    ForkServer.give_up()
        self._start(lifeline, None)

    def _start(self, lifeline: int, server: Any) -> None:
        """Start the process: forked by ``server`` (``_engines.forkserver``), or spawned if it
        is None. On failure, everything opened here is closed again."""
        ch, child_end = channel_pair()
        slot_fd, slot_map = _shared_slot()
        slot = memoryview(slot_map).cast("q")
        slot[2] = STAGE_IDLE
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_fds = (child_end, slot_fd, lifeline)
        try:
            if server is not None:
                from .forkserver import ForkedProcess

                # Its status pipe stands in for the pidfd: readable once the worker exited.
                status_r, status_w = os.pipe()
                try:
                    pid = server.fork((*child_fds, out_w, err_w, status_w))
                    self.pidfd = os.dup(status_r)
                except BaseException:
                    os.close(status_r)
                    raise
                finally:
                    os.close(status_w)
                self.proc = ForkedProcess(server, pid, status_r)
            else:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", _BOOT.format(path=_NBPOOL_PARENT), *map(str, child_fds)],
                    pass_fds=child_fds,
                    stdin=subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    # Its own process group: Jupyter's interrupt (SIGINT to the kernel's
                    # process group) and a terminal's Ctrl-C reach the caller only. A worker
                    # just starting, still importing, would otherwise die of it with a
                    # traceback (seen here). The caller stops workers itself; they exit on
                    # their own when the caller dies.
                    **_OWN_GROUP,
                )
                if hasattr(os, "pidfd_open"):
                    with contextlib.suppress(OSError):
                        self.pidfd = os.pidfd_open(self.proc.pid)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            ch.close()
            slot.release()
            slot_map.close()
            raise
        finally:
            for fd in (child_end, slot_fd, out_w, err_w):
                os.close(fd)
        self._slot_map, self.slot = slot_map, slot
        self.pid = self.proc.pid
        self._reap_lock = threading.Lock()
        self.ch = ch
        self.out_fds = {out_r: "stdout", err_r: "stderr"}

    def _stop(self) -> None:
        """SIGKILL the worker, its process group and its descendants (see ``_engines.proctree``)."""
        with self._reap_lock:  # (force_stop calls this from another thread than reap's)
            if self.proc.returncode is None:  # not reaped: its pid (and group id) are ours
                kill_tree(self.pid)

    def _exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the process to exit, without reaping it."""
        if self.pidfd is not None:
            return bool(readable([self.pidfd], timeout))
        deadline = time.monotonic() + timeout  # no pidfd (old kernel): poll waitid(WNOWAIT)
        while True:
            try:
                flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
                if os.waitid(os.P_PID, self.pid, flags) is not None:
                    return True
            except ChildProcessError:  # reaped already
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def reap(self) -> int:
        """Wait for the exit status (the process is gone or going); close what we hold.

        Whatever is left in its process group (a subprocess a task started and did not wait
        for) is killed before the worker is reaped: until then its pid, which is the group's
        id, cannot be reused by another process.
        """
        with self._reap_lock:
            if self.proc.returncode is None:
                if not self._exited(2):
                    kill_tree(self.pid)
                    self._exited(2)
                kill_group(self.pid)
            try:
                code = self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                kill_tree(self.pid)
                code = self.proc.wait()
        self.ch.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        for fd in list(self.out_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.out_fds.clear()
        self.slot.release()
        self._slot_map.close()
        if self._auto:
            # A first worker has ended (its pool stopped, or it is being replaced): the fork
            # server starts now (once, in WARM_DELAY_S), for the next pools and replacements.
            # Not earlier: its start-up would compete with the first pool's work (on 2 cores,
            # starting it with the first pool made that pool's first result ~20 ms later;
            # with its first Ready, ~6 ms). Never at the cost of this reap.
            from .forkserver import ForkServer

            with contextlib.suppress(Exception):
                ForkServer.warm()
        return code

    def rss(self) -> int | None:
        import psutil

        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return None
