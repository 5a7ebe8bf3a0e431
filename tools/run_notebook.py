"""Run a notebook headless and print what each cell showed (the ``make tour`` command).

Usage: ``.venv/bin/python tools/run_notebook.py notebooks/tour.py [--output OUT.ipynb] [--quiet]``

The notebooks of notebooks/ are text: jupytext percent-format ``.py`` files, which people edit
and review as code (``read_notebook`` turns one into a notebook; an ``.ipynb`` runs as it is).

The notebook runs in a real ``python3`` kernel with nbclient, in the notebook's own folder (so a
module next to it imports, in the kernel and in nbpool's workers), with a 120 s limit per cell.
Variables starting with ``PYTEST`` are dropped from the kernel's environment: a kernel that
inherits ``PYTEST_CURRENT_TEST`` stops forwarding child-process output. The notebook file is
not modified; ``--output`` writes the executed copy elsewhere. Exit status: 0 when every cell
ran, 1 when a cell raised or timed out, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

CELL_TIMEOUT_S = 120
STARTUP_TIMEOUT_S = 60


def kernel_env() -> dict[str, str]:
    """This process's environment minus every ``PYTEST*`` variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


def output_text(output: nbformat.NotebookNode) -> str:
    """The text a reader would see for one output (streams, text/plain, errors)."""
    kind = output.get("output_type")
    if kind == "stream":
        return output.get("text", "")
    if kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        if "text/plain" in data:
            return data["text/plain"] + "\n"
        return f"<{', '.join(sorted(data))}>\n"
    if kind == "error":
        return f"{output.get('ename')}: {output.get('evalue')}\n"
    return ""


def summary(source: str, width: int = 96) -> str:
    """The first line of a cell (plus how many more there are)."""
    lines = source.strip().splitlines() or [""]
    first = lines[0] if len(lines[0]) <= width else lines[0][: width - 3] + "..."
    more = f"  (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return first + more


def print_cell(cell: nbformat.NotebookNode) -> None:
    """``--- In [n]: first line`` and then the cell's text outputs."""
    out = sys.stdout
    count = cell.get("execution_count")
    out.write(f"--- In [{count if count is not None else ' '}]: {summary(cell.source)}\n")
    text = "".join(output_text(o) for o in cell.get("outputs", []))
    if text:
        out.write(text if text.endswith("\n") else text + "\n")
    out.flush()


def read_notebook(path: str | os.PathLike[str]) -> nbformat.NotebookNode:
    """The notebook at ``path``: an ``.ipynb`` as it is, or a jupytext text notebook.

    A text notebook names its cells in their headers (``# %% id="setup"``); jupytext keeps that
    as cell metadata, and here it becomes the cell's own id again, so an executed copy has the
    same stable ids as the text (tests find the cells they check by id).
    """
    path = pathlib.Path(path)
    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    import jupytext  # only text notebooks need it

    nb = jupytext.read(path)
    for cell in nb.cells:
        cell_id = cell.metadata.pop("id", None)
        if cell_id:
            cell.id = cell_id
    ids = [cell.id for cell in nb.cells]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{path}: two cells have the same id: {', '.join(twice)}")
    nbformat.validate(nb)  # an id nbformat does not allow (characters, length)
    return nb


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def static_outputs(nb: nbformat.NotebookNode) -> None:
    """For a static page (the docs site): an output that also has a static HTML form (the
    dashboard's final state) keeps that and drops its live widget view, which a page could only
    draw with the widget's JavaScript fetched from a CDN; the saved widget state goes too."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data and "text/html" in data:
                del data[WIDGET_VIEW]
    nb.metadata.pop("widgets", None)


def run(
    path: pathlib.Path,
    output: pathlib.Path | None,
    timeout: int,
    quiet: bool = False,
    static: bool = False,
) -> int:
    nb = read_notebook(path)
    printed: set[int] = set()

    def on_cell_executed(cell, cell_index, **_):
        # Called as each cell finishes (also when it raised), so progress shows as it happens.
        if not quiet:
            printed.add(cell_index)
            print_cell(cell)

    client = NotebookClient(
        nb,
        timeout=timeout,
        startup_timeout=STARTUP_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_executed=on_cell_executed,
    )
    t0 = time.monotonic()
    status = 0
    failure = ""
    try:
        client.execute(env=kernel_env())
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        status = 1
        failure = f"{type(exc).__name__}: {exc}"
    # A cell that timed out or killed the kernel got no hook call: show what it printed (and,
    # quiet, show every cell of a notebook that failed: the error needs its context).
    for index, cell in enumerate(nb.cells):
        shown = index in printed or (quiet and not status)
        if not shown and cell.cell_type == "code" and cell.get("outputs"):
            print_cell(cell)
    if output is not None:
        if static:
            static_outputs(nb)
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, output)
        if not quiet:
            print(f"executed notebook written to {output}")
    elapsed = time.monotonic() - t0
    if status:
        print(f"\nFAILED: {path} ({elapsed:.1f} s)\n{failure}", file=sys.stderr)
    else:
        print(f"\nOK: {path} ran in {elapsed:.1f} s")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=pathlib.Path)
    parser.add_argument("--output", type=pathlib.Path, help="write the executed notebook here")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds per cell")
    parser.add_argument(
        "--quiet", action="store_true", help="print only the outcome (every cell if one fails)"
    )
    parser.add_argument(
        "--static",
        action="store_true",
        help="--output for a static page: widgets as their static HTML (see static_outputs)",
    )
    args = parser.parse_args(argv)
    if not args.notebook.is_file():
        parser.error(f"no such notebook: {args.notebook}")
    return run(args.notebook.resolve(), args.output, args.timeout, args.quiet, args.static)


if __name__ == "__main__":
    sys.exit(main())
