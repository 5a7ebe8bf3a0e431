"""Run every notebook in notebooks/ in a real Jupyter kernel, as a reader would.

Each notebook runs with nbclient in its own folder, with HOME, the Jupyter and IPython
directories and TMPDIR inside ``tmp_path`` and no ``PYTEST*`` variable in the kernel's
environment (a kernel that inherits ``PYTEST_CURRENT_TEST`` stops forwarding child output).
nbclient shuts the kernel down when the run ends, pass or fail; ``execute`` then checks that no
kernel or worker process is left (and so does the autouse ``no_leftovers`` fixture).

The notebooks are text (jupytext percent-format ``.py``, read by tools/run_notebook.py's
``read_notebook``); the checks find cells by the ids their headers give (``# %% id="setup"``).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import time

import nbformat
import psutil
import pytest
from conftest import ROOT, clean_env, jupyter_dirs, read_notebook, run_notebook_tool
from nbclient import NotebookClient

NOTEBOOKS_DIR = pathlib.Path(ROOT) / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.py"))
RUN_NOTEBOOK = pathlib.Path(ROOT) / "tools" / "run_notebook.py"
CELL_TIMEOUT_S = 60
STARTUP_TIMEOUT_S = 60
TOOL_TIMEOUT_S = 150
SHUTDOWN_GRACE_S = 10


def isolate(base: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point HOME, the Jupyter/IPython/XDG dirs and TMPDIR under ``base``, in this process (where
    nbclient writes the connection file) and in the returned environment for the kernel."""
    dirs = jupyter_dirs(base)
    for name, path in dirs.items():
        monkeypatch.setenv(name, path)
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # no jupyter_core migration warning
    return clean_env(JUPYTER_PLATFORM_DIRS="1", **dirs)


@pytest.fixture
def jupyter_env(tmp_path, monkeypatch) -> dict[str, str]:
    return isolate(tmp_path, monkeypatch)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def execute(path: pathlib.Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Run a notebook in place (the file is not written) and return the executed copy.

    Also checks that the kernel and every process it started are gone afterwards (the module-
    scoped ``tour`` fixture runs outside the per-test ``no_leftovers`` check).
    """
    before = _children()
    nb = read_notebook(path)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=STARTUP_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        # Raises CellExecutionError on the first failing cell; nbclient shuts the kernel down
        # either way (a graceful shutdown request, then a kill after its own timeout).
        client.execute(env=env)
    finally:
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while _children() - before and time.monotonic() < deadline:
            time.sleep(0.05)
    left = _children() - before
    assert not left, f"the kernel left processes behind: {sorted(left)}"
    return nb


def cell_text(nb: nbformat.NotebookNode, cell_id: str) -> str:
    """Everything a code cell showed as text: streams and text/plain results."""
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


WORKER_LINE = re.compile(r"\[w\d+ pid \d+\] ")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def dashboards(nb: nbformat.NotebookNode, cell_id: str) -> list[dict]:
    """The saved final snapshot of each dashboard a cell shows (from the notebook's widget
    state), checking that its output also carries the plain-text and HTML fallbacks."""
    states = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    found = []
    for out in cell.outputs:
        data = out.get("data", {})
        if WIDGET_VIEW not in data:
            continue
        model = states[data[WIDGET_VIEW]["model_id"]]
        assert model["model_name"] == "AnyModel", model["model_name"]
        snap = model["state"]["snapshot"]
        assert snap["state"] in data["text/plain"] and snap["title"] in data["text/plain"]
        assert "nbpool" in data["text/html"]
        found.append(snap)
    return found


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOKS_DIR}"


def test_notebooks_are_text_and_no_output_is_committed():
    """notebooks/ holds text notebooks only, each cell named; no committed ``.ipynb`` anywhere
    carries outputs (an ``.ipynb`` made from a text notebook is ignored by git)."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--", "*.ipynb"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.split(b"\0")
    tracked_nbs = [pathlib.Path(ROOT) / p.decode() for p in tracked if p]
    assert not [p for p in tracked_nbs if p.parent == NOTEBOOKS_DIR], (
        "commit the text notebook (notebooks/*.py), not the .ipynb"
    )
    for path in tracked_nbs:
        nb = nbformat.read(path, as_version=4)
        with_outputs = [c.id for c in nb.cells if c.get("outputs") or c.get("execution_count")]
        assert not with_outputs, f"{path} was committed with outputs in cells {with_outputs}"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "notebooks/tour.ipynb"], cwd=ROOT, timeout=30
    )
    assert ignored.returncode == 0, "notebooks/*.ipynb must be ignored by git"
    for path in NOTEBOOKS:
        nb = read_notebook(path)  # a jupytext notebook, its ids unique and valid
        assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent", path
        unnamed = [c.source[:40] for c in nb.cells if not re.fullmatch(r"[a-z0-9-]+", c.id)]
        assert not unnamed, f"{path.name}: give these cells an id (# %% id=...): {unnamed}"


@pytest.mark.kernel
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path, tmp_path_factory):
    nb = run_once(tmp_path_factory, path.stem)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    # No stderr, except lines a worker wrote there on purpose (tagged "[wN pid P]").
    stderr = [o.text for c in code_cells for o in c.outputs if o.get("name") == "stderr"]
    untagged = [t for t in stderr if not all(WORKER_LINE.match(ln) for ln in t.splitlines())]
    assert not untagged, untagged


_EXECUTED: dict[str, nbformat.NotebookNode] = {}


def run_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> nbformat.NotebookNode:
    """notebooks/<name>.py executed in a folder of its own, once per session: the check that it
    runs without errors and the checks of its cells read the same run (nobody modifies it)."""
    if name not in _EXECUTED:
        with pytest.MonkeyPatch.context() as monkeypatch:
            env = isolate(tmp_path_factory.mktemp(name), monkeypatch)
            _EXECUTED[name] = execute(NOTEBOOKS_DIR / f"{name}.py", env)
    return _EXECUTED[name]


@pytest.fixture(scope="module")
def tour(tmp_path_factory) -> nbformat.NotebookNode:
    return run_once(tmp_path_factory, "tour")


@pytest.mark.kernel
def test_tour_function_and_lambda(tour):
    text = cell_text(tour, "functions")
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in text
    assert "['A', 'B', 'C']" in text


@pytest.mark.kernel
def test_tour_closure(tour):
    assert "[0, 3, 6, 9, 12]" in cell_text(tour, "closure")


@pytest.mark.kernel
def test_tour_notebook_class_keeps_isinstance(tour):
    text = cell_text(tour, "classes")
    assert "[Point(x=2, y=1), Point(x=4, y=3)]" in text
    assert "isinstance: True" in text


@pytest.mark.kernel
def test_tour_notebook_exception_caught_by_type(tour):
    text = cell_text(tour, "errors")
    assert "caught BadInput - negative input: -3" in text
    assert "raised while running item 2:" in text


@pytest.mark.kernel
def test_tour_imap_partial_results(tour):
    assert "[1, 2, BadInput('negative input: -3'), 4]" in cell_text(tour, "partial")


@pytest.mark.kernel
def test_tour_initializer_global(tour):
    text = cell_text(tour, "initializer")
    assert "[0, 10, 20, 30, 40]" in text
    assert "MODEL in the kernel: None" in text


@pytest.mark.kernel
def test_tour_changed_constant_reaches_workers(tour):
    assert "[1, 1]\n[2, 2]" in cell_text(tour, "constants")


@pytest.mark.kernel
def test_tour_imap_over_generator(tour):
    assert "0 1 4 9 16 25" in cell_text(tour, "imap")


@pytest.mark.kernel
def test_tour_worker_crash(tour):
    text = cell_text(tour, "crash")
    assert "WorkerLostError:" in text
    assert "SIGKILL" in text
    assert "still usable: [0, 1, 4, 9, 16]" in text


@pytest.mark.kernel
def test_tour_pool_closed_at_end(tour):
    assert "state=closed" in cell_text(tour, "close")


@pytest.mark.kernel
def test_run_notebook_tool_prints_outputs(jupyter_env):
    """``make tour``: the tool runs the tour, prints each cell's outputs and exits 0."""
    proc = subprocess.run(
        [sys.executable, str(RUN_NOTEBOOK), str(NOTEBOOKS_DIR / "tour.py")],
        env=jupyter_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "isinstance: True" in proc.stdout
    assert "SIGKILL" in proc.stdout
    assert "OK: " in proc.stdout


@pytest.mark.kernel
def test_run_notebook_tool_fails_on_error(jupyter_env, tmp_path):
    """A cell that raises makes the tool exit 1 and name the error; later cells don't run."""
    path = tmp_path / "broken.py"  # a text notebook, as in notebooks/
    path.write_text(
        '# %% id="first"\nprint("first cell ran")\n\n# %% id="boom"\n1 / 0\n\n'
        '# %% id="after"\nprint("never printed")\n'
    )
    proc = subprocess.run(
        [sys.executable, str(RUN_NOTEBOOK), str(path)],
        env=jupyter_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "first cell ran" in proc.stdout
    assert "ZeroDivisionError" in proc.stdout + proc.stderr
    assert "never printed" not in proc.stdout
    assert "FAILED" in proc.stderr
    assert not os.path.exists(tmp_path / "broken.nbconvert.ipynb")


@pytest.mark.kernel
def test_tour_dashboard_is_saved_in_its_final_state(tour):
    (snap,) = dashboards(tour, "dashboard")
    assert snap["state"] == "finished"
    assert snap["done"] == snap["total"] == 60 and snap["failed"] == 0
    assert len(snap["workers"]) == 2 and all(w["pid"] for w in snap["workers"])
    assert sum(w["done"] for w in snap["workers"]) == 60
    assert "sum: 70210" in cell_text(tour, "dashboard")
    assert dashboards(tour, "functions") == []  # quick calls show nothing


@pytest.mark.kernel
def test_the_docs_site_shows_a_dashboard_as_its_static_summary(tour):
    """``run_notebook.py --static`` (the docs site's copy): the dashboard's output keeps its
    static HTML, the same final state, and loses the widget view a page cannot draw."""
    import copy

    nb = copy.deepcopy(tour)
    run_notebook_tool().static_outputs(nb)
    (cell,) = [c for c in nb.cells if c.get("id") == "dashboard"]
    shown = [o["data"] for o in cell.outputs if o.output_type == "display_data"]
    assert shown and all(WIDGET_VIEW not in d and "text/html" in d for d in shown)
    assert "60 / 60 items" in shown[-1]["text/html"] and "finished" in shown[-1]["text/html"]
    assert "widgets" not in nb.metadata
    assert any(WIDGET_VIEW in o.get("data", {}) for c in tour.cells for o in c.get("outputs", []))


@pytest.mark.kernel
def test_tour_pmap(tour):
    assert "['ALPHA!', 'BETA!', 'GAMMA!']" in cell_text(tour, "pmap")
    assert "stopped" in cell_text(tour, "pool-stop")


@pytest.fixture(scope="module")
def dashboard_nb(tmp_path_factory) -> nbformat.NotebookNode:
    return run_once(tmp_path_factory, "dashboard")


@pytest.mark.kernel
def test_dashboard_notebook_auto_and_quick(dashboard_nb):
    (snap,) = dashboards(dashboard_nb, "auto")
    assert snap["state"] == "finished" and snap["done"] == 60
    assert snap["title"] == "map(work) · 60 items"
    (forced,) = dashboards(dashboard_nb, "quick")  # only the progress=True call shows one
    assert forced["state"] == "finished" and forced["done"] == forced["total"] == 4


@pytest.mark.kernel
def test_dashboard_notebook_failed_state(dashboard_nb):
    (snap,) = dashboards(dashboard_nb, "failed")
    assert snap["state"] == "failed" and snap["failed"] == 1 and snap["done"] == 40
    assert "40 results, 1 failed" in cell_text(dashboard_nb, "failed")


@pytest.mark.kernel
def test_dashboard_notebook_pool_view(dashboard_nb):
    (snap,) = dashboards(dashboard_nb, "pool-dashboard")
    assert snap["title"] == "pool · 2 workers"
    assert len(snap["workers"]) == 2


@pytest.fixture(scope="module")
def magics_nb(tmp_path_factory) -> nbformat.NotebookNode:
    return run_once(tmp_path_factory, "magics")


@pytest.mark.kernel
def test_magics_notebook(magics_nb):
    assert "[0, 1, 4, 9, 16, 25, 36, 49]" in cell_text(magics_nb, "basic")
    assert cell_text(magics_nb, "tuple-target") == ""  # -o: stored, not shown
    assert "[103, 107, 111]" in cell_text(magics_nb, "show-sums")
    (snap,) = dashboards(magics_nb, "long")
    assert snap["state"] == "finished" and snap["done"] == 30
    text = cell_text(magics_nb, "errors")
    assert "1 of 4 items failed" in text and "raised: ZeroDivisionError" in text
    assert "[10, 5, ZeroDivisionError(" in text
    assert "2 workers" in cell_text(magics_nb, "status")
    assert "stopped" in cell_text(magics_nb, "stop")


@pytest.fixture(scope="module")
def output_nb(tmp_path_factory) -> nbformat.NotebookNode:
    return run_once(tmp_path_factory, "output")


def streams(nb: nbformat.NotebookNode, cell_id: str, name: str) -> str:
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    return "".join(o.text for o in cell.outputs if o.get("name") == name)


@pytest.mark.kernel
def test_output_notebook_worker_lines_are_tagged_and_in_their_cell(output_nb):
    out = streams(output_nb, "print", "stdout")
    lines = [ln for ln in out.splitlines() if ln.startswith("[w")]
    assert sorted(re.sub(r"^\[w\d+ pid \d+\] ", "", ln) for ln in lines) == [
        f"working on {i}" for i in range(4)
    ], out
    assert "[0, 10, 20, 30]" in out
    # stderr stays stderr; a raw write to fd 1 (as C code does) is captured too
    assert re.search(
        r"^\[w\d+ pid \d+\] warning about 1$", streams(output_nb, "streams", "stderr"), re.M
    )
    assert re.search(
        r"^\[w\d+ pid \d+\] raw write 1$", streams(output_nb, "streams", "stdout"), re.M
    )
    text = streams(output_nb, "async", "stdout")
    assert "async item 0 done" in text and "async item 1 done" in text
    assert streams(output_nb, "close", "stdout") == ""  # nothing leaked into a later cell


@pytest.fixture(scope="module")
def worker_features(tmp_path_factory) -> nbformat.NotebookNode:
    return run_once(tmp_path_factory, "worker-features")


@pytest.mark.kernel
def test_worker_features_notebook_shows_state_shared_objects_put_and_insights(worker_features):
    nb = worker_features
    assert "workers used: [0, 1]" in cell_text(nb, "state")
    assert "('cat', 40), ('dog', 20)" in cell_text(nb, "state")  # every worker's state summed
    assert "one object per worker: True" in cell_text(nb, "shared")
    put = cell_text(nb, "put")
    assert "<nbpool.ObjectRef" in put and "[0, 2, 4, 6, 8]" in put and "499500" in put
    insights = cell_text(nb, "insights")
    assert "nbpool insights: 2 worker slots, 21 items" in insights
    assert "slowest: 'https://example.org/slow'" in insights
