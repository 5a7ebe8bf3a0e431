"""Stopping a worker means stopping everything it started.

A task may start subprocesses (``subprocess.run(["sleep", "61"])``, a tool it shells out to, a
server). They must not outlive the worker: not after an interrupt, a ``task_timeout``,
``terminate()``, nor when the kernel itself is killed or restarted. Each worker leads a process
group of its own (see ``_engines.local``), which its subprocesses join unless they leave it
(``start_new_session=True``, a daemonizing tool). So a stop is two steps:

1. find the descendants first: once the worker is dead they are re-parented (to init or a
   subreaper) and can no longer be told apart from anyone else's processes;
2. SIGKILL the worker's process group (the worker and whatever stayed in its group), then the
   descendants found in step 1 that had left the group.

Caller side (``kill_tree``) uses psutil. Worker side (``exit_with_tree``, for when the caller is
gone) reads ``/proc`` itself: it runs in every worker and must not cost an import at start-up.
"""

from __future__ import annotations

import _signal  # not `signal` (nor contextlib): this module is imported by every worker
import os

__all__ = ["exit_with_tree", "kill_group", "kill_tree"]


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group ``pgid`` (nothing if it is empty)."""
    try:
        os.killpg(pgid, _signal.SIGKILL)
    except OSError:
        pass


def kill_tree(pid: int) -> None:
    """Caller side: SIGKILL the worker ``pid``, its process group and its descendants.

    Only for a live (or zombie, not yet reaped) worker: its pid, and so its group id, cannot
    have been reused while it is not reaped.
    """
    try:
        import psutil

        kids = psutil.Process(pid).children(recursive=True)
    except Exception:  # gone already, or psutil failed: the group kill still does most
        kids = []
    kill_group(pid)
    for kid in kids:
        # psutil checks the process's start time before it signals: a pid reused since the
        # listing is not touched.
        try:
            kid.kill()
        except Exception:
            pass


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, from ``/proc/*/stat`` (Linux)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            # The command name may hold spaces and parentheses: the fields after it start
            # after the last ')'. Field 2 after it is the parent pid.
            ppid = int(data[data.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found: list[int] = []
    stack = [pid]
    while stack:
        kids = children.get(stack.pop(), [])
        found.extend(kids)
        stack.extend(kids)
    return found


def exit_with_tree(code: int) -> None:
    """Worker side, when the caller is gone: kill our descendants and our process group (which
    includes this process), so that nothing the tasks started is left running."""
    try:
        for pid in _descendants(os.getpid()):
            try:
                os.kill(pid, _signal.SIGKILL)
            except OSError:
                pass
        if os.getpgid(0) == os.getpid():  # only a group we lead: never the caller's own
            os.killpg(0, _signal.SIGKILL)
    finally:
        os._exit(code)
