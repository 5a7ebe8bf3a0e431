"""Checks shared by the Ray and Dask runs: the clusters notebook and ``%pool connect`` in a real
kernel, on whichever cluster the caller started (``address``) and named (``engine``); and the
environments of nodes unlike the kernel (``unlike_the_kernel``)."""

from __future__ import annotations

import pathlib
import sys
import time

from conftest import HERE, ROOT, _children, clean_env, jupyter_dirs, read_notebook

NOTEBOOK = pathlib.Path(ROOT) / "notebooks" / "clusters.py"


def check_clusters_notebook(address: str, engine: str, tmp_path, monkeypatch) -> None:
    """notebooks/clusters.py, unchanged: NBPOOL_ADDRESS is the only switch."""
    from nbclient import NotebookClient

    sys.path.insert(0, f"{HERE}/notebooks")
    from test_notebooks import cell_text

    dirs = jupyter_dirs(tmp_path)
    for name, path in dirs.items():
        monkeypatch.setenv(name, path)
    env = clean_env(JUPYTER_PLATFORM_DIRS="1", NBPOOL_ADDRESS=address, **dirs)
    nb = read_notebook(NOTEBOOK)
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
    assert f"backend: {engine}" in cell_text(nb, "pool")
    assert cell_text(nb, "map").strip().endswith("[0, 3, 6, 9, 12, 15, 18, 21]")
    where = cell_text(nb, "where")
    assert where.count("working") == 4 and where.count("on 127.0.0.1] working") == 4
    errors = cell_text(nb, "errors")
    assert "caught: only 5 left, 7 ordered" in errors
    assert "on 127.0.0.1) raised while running item 1" in errors


def check_pool_connect(address: str, name: str, tmp_path) -> None:
    """%pool connect ADDRESS moves the session pool there (%%pmap, output in its cell) and
    %pool connect --local back."""
    sys.path.insert(0, f"{HERE}/ipython")
    from kernel_util import kernel, run_cell

    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, "%load_ext nbpool")
        out, _ = run_cell(kc, f"%pool connect {address}")
        assert f"2 workers on {name} ({address})" in out
        run_cell(kc, "K = 10\ndef scale(v):\n    print('scaling', v)\n    return v * K")
        out, msgs = run_cell(kc, "%%pmap x in range(4)\nscale(x)")
        result = "".join(
            m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "execute_result"
        )
        assert result == "[0, 10, 20, 30]"
        # the workers' output is in this cell, tagged with worker and host, once each
        for v in range(4):
            assert out.count(f"scaling {v}") == 1
        assert "on 127.0.0.1] scaling" in out
        out, _ = run_cell(kc, "%pool connect --local")
        assert "workers on this machine" in out
        run_cell(kc, "%pool stop")


BLOCK_NBPOOL = """
import sys

class _NoNbpool:  # this node has no nbpool installed
    def find_spec(self, name, path=None, target=None):
        if name == "nbpool" or name.startswith("nbpool."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoNbpool())
"""


def unlike_the_kernel(tmp_path: pathlib.Path, how: str) -> dict[str, str]:
    """Environment for a cluster node whose Python finds an older nbpool first on its path
    (``how="old"``: a copy of ours that says 0.0.1) or cannot import nbpool (``"none"``)."""
    import shutil

    import nbpool

    where = tmp_path / how
    if how == "old":
        shutil.copytree(
            pathlib.Path(nbpool.__file__).parent, where / "nbpool",
            ignore=shutil.ignore_patterns("__pycache__"),
        )  # fmt: skip
        init = where / "nbpool" / "__init__.py"
        line = f'__version__ = "{nbpool.__version__}"'
        assert line in init.read_text()
        init.write_text(init.read_text().replace(line, '__version__ = "0.0.1"'))
    else:
        where.mkdir()
        (where / "sitecustomize.py").write_text(BLOCK_NBPOOL)
    return {"PYTHONPATH": str(where)}
