"""``get_ipython()`` inside a worker, for ``%%pmap`` bodies that use IPython syntax.

``%%pmap`` transforms its body as IPython transforms a cell, so ``!wget {url}``,
``files = !ls {folder}`` and ``%time f(x)`` become ``get_ipython().system(...)``,
``.getoutput(...)`` and ``.run_line_magic(...)`` calls. In a worker there is no kernel: this
``get_ipython`` gives a plain IPython shell of the worker's own, made on first use (~0.15 s,
once per worker; no history is written), whose namespace is the worker's ``__main__``. Shell
commands write to the worker's stdout, which reaches the cell like any worker output.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["get_ipython"]

_shell: list[Any] = []


def get_ipython() -> Any:
    if not _shell:
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.enabled = False  # workers must not share one history database
        _shell.append(InteractiveShell.instance(config=config, user_module=sys.modules["__main__"]))
    return _shell[0]
