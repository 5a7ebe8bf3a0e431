"""``start_method="forkserver"``: workers forked from a server, never from the caller.

::

  caller (kernel)                               fork server (spawned once per process)
  ───────────────                               ─────────────────────────────────────
  ForkServer.start()  ── subprocess ──►  a fresh interpreter: imports nbpool's worker code,
                                         cloudpickle and dill, then waits on its socket
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

import os
import pickle
import socket
import struct
import sys
import threading

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

_NBPOOL_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    "import sys; sys.path.insert(0, {path!r}); from nbpool._engines.forkserver import main; main()"
)
_PID = struct.Struct("q")
_NFDS = 6  # channel, slot, lifeline, stdout, stderr, status


class ForkServer:
    """The caller's side: one server per process, shared by every forkserver pool."""

    _instance: ForkServer | None = None
    _start_lock = threading.Lock()

    def __init__(self) -> None:
        import subprocess

        self._lock = threading.Lock()  # one request at a time (pools' dispatchers, Pool())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT.format(path=_NBPOOL_PARENT), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # the kernel's interrupt is not the server's
            )
        finally:
            theirs.close()
        self.sock = ours
        self.pid = self.proc.pid
        self.owner = os.getpid()  # a process that forked after us needs a server of its own

    @classmethod
    def get(cls) -> ForkServer:
        """The process's server, started on first use (again if the last one died)."""
        with cls._start_lock:
            server = cls._instance
            if server is None or server.owner != os.getpid() or server.proc.poll() is not None:
                server = cls._instance = ForkServer()
            return server

    def fork(self, fds: tuple[int, ...]) -> int:
        """Fork a worker that takes ``fds`` (see ``_NFDS``); its pid."""
        request = pickle.dumps(("fork", os.getcwd(), dict(os.environ), os.getpid()))
        with self._lock:
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


def main() -> None:
    import selectors
    import signal

    # What every worker needs, imported once here instead of in each worker.
    import nbpool._engines.local_main
    import nbpool._worker.functions
    import nbpool._worker.serialize  # noqa: F401

    for name in ("cloudpickle", "dill"):
        try:
            __import__(name)
        except ImportError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
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
