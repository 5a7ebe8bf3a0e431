"""Whether a cluster's nodes can run this kernel's nbpool workers (the Ray and Dask engines).

A node needs the kernel's Python major.minor version (functions defined in the notebook travel
as that version's bytecode) and the kernel's nbpool (the node runs nbpool's worker process and
speaks its protocol). Ray checks its own and Python's versions when it connects, and Dask warns
about its own; neither knows about nbpool, and a node without it failed later, in each actor,
with an error that did not say so. Each engine asks each node once, with ``probe()``.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["probe", "version_problems", "versions_message"]

# Defined from text, in a module of its own name that nobody can import, so that cloudpickle
# (Ray's and Dask's) ships it by value: a node without nbpool can run it and say so, where a
# function of this module would fail to unpickle there first.
_PROBE = """
def probe():
    import sys
    try:
        import nbpool
        version = nbpool.__version__
    except Exception as exc:
        version = exc
    return tuple(sys.version_info[:3]), version
"""
_PROBE_FN: list[Callable[[], Any]] = []


def probe() -> Callable[[], tuple[tuple[int, ...], Any]]:
    """A function to run on a node: (its Python's version_info[:3], its ``nbpool.__version__``
    or the exception importing nbpool raised there)."""
    if not _PROBE_FN:
        namespace: dict[str, Any] = {"__name__": "nbpool_version_probe"}
        exec(_PROBE, namespace)
        _PROBE_FN.append(namespace["probe"])
    return _PROBE_FN[0]


def version_problems(got: dict[str, Any], python: tuple[int, ...], nbpool: str) -> dict[str, str]:
    """Node -> what differs from this kernel, for each node that differs. ``got``: node ->
    what ``probe()`` returned there, or the exception that running it raised."""
    wrong = {}
    for node, answer in sorted(got.items()):
        if not isinstance(answer, tuple) or len(answer) != 2:
            wrong[node] = f"a Python that could not be asked its versions ({answer!r})"
            continue
        (there, version), problems = answer, []
        if tuple(there[:2]) != tuple(python[:2]):
            problems.append("Python " + ".".join(map(str, there)))
        if isinstance(version, ModuleNotFoundError) and version.name == "nbpool":
            problems.append("no nbpool")
        elif isinstance(version, BaseException) or not isinstance(version, str):
            problems.append(f"an nbpool that fails to import ({version!r})")
        elif version != nbpool:
            problems.append(f"nbpool {version}")
        if problems:
            wrong[node] = " and ".join(problems)
    return wrong


def versions_message(cluster: str, nodes: str, wrong: dict[str, str], nbpool: str) -> str:
    """The error for the nodes in ``wrong`` (``version_problems``): the first three named, and
    what to install. ``cluster``: "the Dask cluster at tcp://..."; ``nodes``: "Dask worker"."""
    py = ".".join(map(str, sys.version_info[:3]))
    listed = [f"{node} has {what}" for node, what in list(wrong.items())[:3]]
    if len(wrong) > 3:
        listed.append(f"{len(wrong) - 3} more {nodes}s differ too")
    return (
        f"{cluster} cannot run this kernel's nbpool workers: {'; '.join(listed)}. This kernel "
        f"has Python {py} and nbpool {nbpool}: each {nodes} needs the same Python minor "
        "version (functions from the notebook travel as its bytecode) and the same nbpool "
        f"(`pip install nbpool=={nbpool}` in the {nodes}s' environment), then a restart of "
        f"the {nodes}s"
    )
