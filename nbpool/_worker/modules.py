"""Which code travels by value: the notebook's, and that of modules next to it.

``__main__`` (the notebook, a ``python -c`` script) has always been shipped by value: workers
cannot import it. Modules next to the notebook are shipped by value too, for two reasons:

* A worker that imports ``helpers`` reads ``helpers.py`` from disk when it starts. After an
  edit (with ``%autoreload``, or none), workers started at different times ran different
  versions of it, and none of them ran what the kernel has: a call's items could run two
  versions of one function. By value, every item of a call runs the code the kernel has when
  the call is submitted.
* A cluster's workers may not have the file at all.

"Next to the notebook": the module's file is inside the caller's working directory (a
notebook kernel's is the notebook's folder), and not inside an installed location (the
standard library, site-packages, the environment's prefix). nbpool itself, cloudpickle and
dill never are. Installed packages, editable installs elsewhere and the standard library go
by reference, as with every other pool.

A function whose by-value pickle fails (a class next to the notebook holding a lock or a pool
as a class attribute) is pickled again with those modules by reference (``by_reference``):
the workers import them, which works wherever they can (this machine), and the error names
the first failure otherwise.
"""

from __future__ import annotations

import _thread
import os
import sys

__all__ = ["by_reference", "by_value_module"]

_NEVER = frozenset({"nbpool", "cloudpickle", "dill", "xxhash"})
_cache: dict[tuple[str, str], bool] = {}
_installed: list[str] = []


def _installed_dirs() -> list[str]:
    if not _installed:
        import site
        import sysconfig

        dirs = set(sysconfig.get_paths().values())
        dirs.update({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
        try:
            dirs.update(site.getsitepackages())
            dirs.add(site.getusersitepackages())
        except Exception:  # a virtualenv of the old kind lacks getsitepackages
            pass
        _installed.extend(os.path.realpath(d) + os.sep for d in dirs if d)
    return _installed


_only_main = _thread._local()  # .on: inside by_reference(), in this thread only


class by_reference:
    """``with by_reference():`` only ``__main__`` travels by value (see the module docstring),
    for what this thread pickles (the dispatcher pickling items meanwhile is not affected)."""

    def __enter__(self) -> None:
        _only_main.on = True

    def __exit__(self, *exc: object) -> None:
        _only_main.on = False


def in_by_reference() -> bool:
    return getattr(_only_main, "on", False)


def by_value_module(name: str | None) -> bool:
    """Whether functions and classes of module ``name`` are pickled by value."""
    if name == "__main__":
        return True
    if not name or name.partition(".")[0] in _NEVER or getattr(_only_main, "on", False):
        return False
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was deleted
        return False
    key = (name, cwd)
    hit = _cache.get(key)
    if hit is None:
        hit = _cache[key] = _next_to(name, cwd)
    return hit


def _next_to(name: str, cwd: str) -> bool:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        return False
    path = os.path.realpath(path)
    if not path.startswith(os.path.realpath(cwd) + os.sep):
        return False
    return not any(path.startswith(d) for d in _installed_dirs())
