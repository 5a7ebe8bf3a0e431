"""notebooks/clusters.ipynb, unchanged, on a Ray head: NBPOOL_ADDRESS is the only switch."""

from __future__ import annotations

import pathlib
import sys
import time

import nbformat
import pytest
from conftest import HERE, ROOT, _children, clean_env, jupyter_dirs
from nbclient import NotebookClient

sys.path.insert(0, f"{HERE}/notebooks")
from test_notebooks import cell_text

pytestmark = pytest.mark.kernel

NOTEBOOK = pathlib.Path(ROOT) / "notebooks" / "clusters.ipynb"


def test_the_clusters_notebook_runs_on_ray_with_no_code_change(ray_head, tmp_path, monkeypatch):
    dirs = jupyter_dirs(tmp_path)
    for name, path in dirs.items():
        monkeypatch.setenv(name, path)
    env = clean_env(JUPYTER_PLATFORM_DIRS="1", NBPOOL_ADDRESS=ray_head.address, **dirs)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    before = _children()
    client = NotebookClient(
        nb, timeout=120, startup_timeout=60, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )  # fmt: skip
    try:
        client.execute(env=env)
    finally:
        deadline = time.monotonic() + 10
        while _children() - before and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not _children() - before
    assert "backend: ray" in cell_text(nb, "pool")
    assert cell_text(nb, "map").strip().endswith("[0, 3, 6, 9, 12, 15, 18, 21]")
    where = cell_text(nb, "where")
    assert where.count("working") == 4 and where.count("on 127.0.0.1] working") == 4
    errors = cell_text(nb, "errors")
    assert "caught: only 5 left, 7 ordered" in errors
    assert "on 127.0.0.1) raised while running item 1" in errors
