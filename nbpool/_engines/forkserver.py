"""The fork server: workers forked from a server, never from the caller.

``start_method="forkserver"`` forks every worker from it. The default (``start_method=None``)
spawns workers until the server is up: the end of a first worker starts it (``warm``, from
``local.Worker.reap``; the server waits WARM_DELAY_S, then imports at the lowest priority, so
that it does not slow anything down) and nobody waits for it; ``ForkServer.running()`` (no
wait) says when later workers (replacements, other pools) can be forked. Its first message,
``_READY``, says that its imports are done.

::

  caller (kernel)                               fork server (spawned once per process)
  ───────────────                               ─────────────────────────────────────
  ForkServer.start()  ── subprocess ──►  a fresh interpreter: imports nbpool's worker code,
                                         cloudpickle, then waits on its socket
  Worker(start="forkserver"):
    request ("fork", cwd, env, caller pid)
    + the worker's 6 fds (SCM_RIGHTS)   ──►  fork(): the child takes its fds as 0-2 and the
                                              local engine's arguments, runs local_main.main()
    ◄── the child's pid                       (a single-threaded, pre-imported process: ~2 ms)
  the status pipe's read end stands in   ◄──  on SIGCHLD: the exit code (waitid WNOWAIT: not
  for a pidfd: readable when it exits          reaped yet, so its pid cannot be reused)
  reap(): read the code, ("reap", pid) ──►   waitpid: now it is gone

The server is the caller's own child: started by ``subprocess`` (fork + exec, as a spawned
worker), so nothing of the kernel's memory or threads is forked. It exits when the caller closes
its socket or dies (EOF). Each request carries the caller's working directory and environment as
they are now, so a worker forked later sees a ``chdir`` or ``os.environ`` change made after the
server started, as a spawned worker would. What it cannot see: a module the caller's
environment upgraded after the server started (the server preloaded the old one; restart the
pool's process, or use ``start_method="spawn"``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
import sys
import threading

from .local import _OWN_GROUP

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

_NBPOOL_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Everything but the interpreter's own start-up runs in a thread at the lowest priority (Linux:
# nice is per thread): started next to a pool's first workers, the server must not slow them
# down. Forks are made by the main thread, which keeps its priority (so do the workers).
_BOOT = """import os, sys, threading
def load():
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass
    sys.path.insert(0, {path!r})
    from nbpool._engines.forkserver import preload
    preload()
t = threading.Thread(target=load)
t.start()
t.join()
from nbpool._engines.forkserver import main
main()
"""
_PID = struct.Struct("q")
_NFDS = 6  # channel, slot, lifeline, stdout, stderr, status
_READY = b"ready"  # the server's first message: its imports are done
READY_TIMEOUT_S = 60.0  # how long a fork waits for a server that is still starting
# How long a server started by ``warm`` waits before it starts its interpreter. Its start-up
# (~10 ms of CPU that its low priority cannot cover) made a pool that starts at the same moment
# (the next cell's, say) 15-20 ms slower on 2 cores; that pool's workers are spawned then, and
# the server is ready ~50 ms after this delay.
WARM_DELAY_S = 0.3


def at_exit() -> None:
    """The caller is exiting (``_driver.dispatcher``'s atexit hook, before it stops the pools):
    no server is started from now on (``warm``), and one still starting (its delay, its
    imports) is stopped, so that it does not outlive the caller. A ready one ends on its own
    (EOF on its socket)."""
    ForkServer._no_more = True
    server = ForkServer._instance
    if server is None or server.owner != os.getpid() or server._ready:
        return
    with contextlib.suppress(Exception):
        server.proc.kill()
        server.proc.wait(2)


class ForkServer:
    """The caller's side: one server per process, shared by every pool of the process."""

    _instance: ForkServer | None = None
    _start_lock = threading.Lock()
    _no_more = False  # the default start method no longer uses or starts one (give_up, at_exit)

    def __init__(self, delay: float = 0.0) -> None:
        """``delay``: seconds before the interpreter starts (see ``warm``)."""
        import subprocess

        self._lock = threading.Lock()  # one request at a time (pools' dispatchers, Pool())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-c", _BOOT.format(path=_NBPOOL_PARENT), str(theirs.fileno())]
        if delay > 0 and os.path.exists("/bin/sh"):
            command = ["/bin/sh", "-c", f'sleep {delay:g}; exec "$0" "$@"', *command]
        try:
            self.proc = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # It may outlive the caller by a moment (warm's delay): it must not write into
                # the user's terminal then. Its failures reach the caller as a failed fork.
                stderr=subprocess.DEVNULL,
                # The kernel's interrupt is not the server's. A process group, not a session: a
                # session is a scheduler autogroup of its own on Linux, where the low priority
                # of its start-up (_BOOT) would count for nothing against the caller's group.
                **_OWN_GROUP,
            )
        finally:
            theirs.close()
        self.sock = ours
        self.pid = self.proc.pid
        self.owner = os.getpid()  # a process that forked after us needs a server of its own
        self._ready = False  # its imports are done (it sent _READY)

    def _alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    @classmethod
    def get(cls, delay: float = 0.0) -> ForkServer:
        """The process's server, started on first use (again if the last one died)."""
        with cls._start_lock:
            server = cls._instance
            if server is None or not server._alive():
                server = cls._instance = ForkServer(delay)
            return server

    @classmethod
    def warm(cls) -> None:
        """Start the process's server if it has none, in WARM_DELAY_S (returns at once). For
        the default start method, when a first worker ends (see ``local.Worker.reap``)."""
        if not cls._no_more:
            cls.get(WARM_DELAY_S)

    @classmethod
    def give_up(cls) -> None:
        """A fork failed for the default start method: it spawns from now on."""
        cls._no_more = True

    @classmethod
    def running(cls) -> ForkServer | None:
        """The process's server if it is up and ready to fork now, else None: never waits
        (not even for a fork in progress), never raises."""
        server = cls._instance
        if cls._no_more or server is None or not server._alive():
            return None
        if not server._lock.acquire(blocking=False):
            return None
        try:
            if not server._ready:
                from .._worker.protocol import readable

                if readable([server.sock.fileno()], 0):
                    server._take_ready()
        except Exception:
            return None
        finally:
            server._lock.release()
        return server if server._ready else None

    def _take_ready(self, timeout: float | None = None) -> None:
        """Read the server's _READY (under ``_lock``)."""
        self.sock.settimeout(timeout)
        try:
            msg = self.sock.recv(64)
        finally:
            self.sock.settimeout(None)
        if msg != _READY:
            raise RuntimeError("nbpool's fork server did not start (it exited)")
        self._ready = True

    def fork(self, fds: tuple[int, ...]) -> int:
        """Fork a worker that takes ``fds`` (see ``_NFDS``); its pid."""
        request = pickle.dumps(("fork", os.getcwd(), dict(os.environ), os.getpid()))
        with self._lock:
            if not self._ready:
                try:
                    self._take_ready(READY_TIMEOUT_S)
                except TimeoutError:
                    raise RuntimeError(
                        f"nbpool's fork server did not start within {READY_TIMEOUT_S:g} s"
                    ) from None
            socket.send_fds(self.sock, [request], list(fds))
            reply = self.sock.recv(64)
        if len(reply) != _PID.size:
            raise RuntimeError("nbpool's fork server did not answer (it exited)")
        (pid,) = _PID.unpack(reply)
        if pid < 0:
            raise OSError(-pid, os.strerror(-pid))
        return int(pid)

    def release(self, pid: int) -> None:
        """The caller has the exit code of ``pid``: the server may reap it now."""
        try:
            with self._lock:
                self.sock.send(pickle.dumps(("reap", pid)))
        except OSError:  # the server is gone: its children were reparented and reaped
            pass


class ForkedProcess:
    """A forked worker as ``subprocess.Popen`` shows a child: ``pid``, ``returncode``,
    ``wait(timeout)``; ``status_fd`` is readable once it has exited."""

    def __init__(self, server: ForkServer, pid: int, status_fd: int) -> None:
        self.server, self.pid, self.status_fd = server, pid, status_fd
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        from .._worker.protocol import readable

        if self.returncode is not None:
            return self.returncode
        if not readable([self.status_fd], 1e6 if timeout is None else timeout):
            raise subprocess.TimeoutExpired("nbpool worker", timeout or 0)
        data = os.read(self.status_fd, _PID.size)
        # EOF without a code: the server died (and the worker was reparented and reaped)
        self.returncode = _PID.unpack(data)[0] if len(data) == _PID.size else -9
        os.close(self.status_fd)
        self.server.release(self.pid)
        return self.returncode


# ----------------------------------------------------------------------------- the server


def _exit_code(info: Any) -> int:
    """As ``Popen.returncode``: the exit status, or minus the signal that ended it."""
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    return -int(info.si_status)  # killed (or dumped core) by that signal


def preload() -> None:
    """What every worker needs, imported once here instead of in each worker (see _BOOT)."""
    import nbpool._engines.local_main
    import nbpool._worker.functions
    import nbpool._worker.serialize  # noqa: F401

    # (not dill: only serializer="dill" needs it, and it would make the server ready ~20 ms
    # later; a worker that needs it imports it)
    with contextlib.suppress(ImportError):
        import cloudpickle  # noqa: F401


def main() -> None:
    import selectors
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        sock.send(_READY)
    except OSError:  # the caller ended while we started: nothing to say, and nobody to say it
        os._exit(0)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    status: dict[int, int] = {}  # pid -> write end of its status pipe, until it exits
    exited: set[int] = set()  # exit code sent, not reaped yet (the caller says when)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                for pid in list(status):
                    try:
                        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    except ChildProcessError:
                        info = None
                    if info is None:
                        continue
                    fd = status.pop(pid)
                    try:
                        os.write(fd, _PID.pack(_exit_code(info)))
                    except OSError:
                        pass
                    os.close(fd)
                    exited.add(pid)
                continue
            try:
                msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, _NFDS)
            except OSError:
                msg, fds = b"", []
            if not msg:  # the caller is gone: so are we (its workers watch their lifeline)
                os._exit(0)
            op = pickle.loads(msg)
            if op[0] == "reap":
                pid = op[1]
                if pid in exited:
                    exited.discard(pid)
                    try:
                        os.waitpid(pid, 0)
                    except ChildProcessError:
                        pass
                continue
            _, cwd, env, caller = op
            try:
                pid = os.fork()
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                sock.send(_PID.pack(-(exc.errno or 1)))
                continue
            if pid == 0:
                _child(fds, cwd, env, caller, [sock.fileno(), wake_r, wake_w, *status.values()])
            status[pid] = fds[5]
            for fd in fds[:5]:
                os.close(fd)
            sock.send(_PID.pack(pid))


def _child(fds: list[int], cwd: str, env: dict[str, str], caller: int, close: list[int]) -> None:
    """In the forked child: become the worker that ``local_main`` would be in a spawned one."""
    import signal

    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in [*close, fds[5]]:
            os.close(fd)
        os.setpgid(0, 0)  # a group of its own, as a spawned worker (see _engines.local)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[3], 1)
        os.dup2(fds[4], 2)
        for fd in (devnull, fds[3], fds[4]):
            os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["nbpool-worker", str(fds[0]), str(fds[1]), str(fds[2]), str(caller)]
        from nbpool._engines.local_main import main as worker_main

        worker_main()
    finally:
        os._exit(0)
