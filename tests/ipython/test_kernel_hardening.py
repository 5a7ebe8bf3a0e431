"""Issue 8 in a real kernel: what a new user broke in an afternoon of notebook work."""

from __future__ import annotations

import os
import signal
import time

import pytest
from kernel_util import kernel, run_cell
from proc_util import alive, wait_for_file, wait_gone

pytestmark = pytest.mark.kernel


def test_a_kernel_restart_stops_what_tasks_started(tmp_path):
    path = str(tmp_path / "child")
    child = 0
    with kernel(str(tmp_path)) as (km, kc):
        try:
            out, _ = run_cell(
                kc,
                "import nbpool, nbfuncs\npool = nbpool.Pool(1)\n"
                f"r = pool.apply_async(nbfuncs.spawn_sleep, (({path!r}, False),))\n"
                "print(*pool._engine.worker_pids())",
            )
            workers = [int(p) for p in out.split()]
            child = int(wait_for_file(path))
            km.restart_kernel(now=True)
            assert wait_gone([*workers, child]) == []
        finally:
            if child and alive(child):
                os.kill(child, signal.SIGKILL)


def test_a_remote_traceback_shows_the_cell_and_its_line(tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, "import nbpool\npool = nbpool.Pool(1)")
        run_cell(kc, "def boom(x):\n    y = x + 1\n    raise ValueError(f'bad {y}')\n")
        out, _ = run_cell(
            kc,
            "try:\n    pool.map(boom, [1])\nexcept ValueError as e:\n    print(e.__cause__)\n"
            "pool.terminate()",
        )
    assert "Cell In[2], line 3, in boom" in out, out
    assert "raise ValueError(f'bad {y}')" in out, out
    assert "<dynamic-code>" not in out


HELPERS = "VERSION = {v!r}\n\ndef clean(x):\n    return (VERSION, x)\n"


def test_every_item_runs_the_code_the_kernel_has_after_an_autoreload_edit(tmp_path):
    """The new user's case: after editing a module next to the notebook, one map returned
    [('v1', 1), ('v2', 2)]: a fresh worker imported the new file, an old one kept the old."""
    (tmp_path / "helpers.py").write_text(HELPERS.format(v="v1"))
    with kernel(str(tmp_path)) as (_km, kc):
        out, _ = run_cell(
            kc,
            "%load_ext autoreload\n%autoreload 2\nimport nbpool, helpers\n"
            "pool = nbpool.Pool(2, maxtasksperchild=1)\n"
            "print(pool.map(helpers.clean, [1, 2], 1))",
        )
        assert out.strip() == "[('v1', 1), ('v1', 2)]"
        time.sleep(1.1)  # a later mtime for the edit
        (tmp_path / "helpers.py").write_text(HELPERS.format(v="v2"))
        out, _ = run_cell(kc, "print(helpers.clean(0), pool.map(helpers.clean, [1, 2, 3, 4], 1))")
        assert out.strip() == "('v2', 0) [('v2', 1), ('v2', 2), ('v2', 3), ('v2', 4)]"
        # without autoreload the kernel keeps v1, and so do the workers, fresh ones included
        run_cell(kc, "%autoreload 0")
        time.sleep(1.1)
        (tmp_path / "helpers.py").write_text(HELPERS.format(v="v3"))
        out, _ = run_cell(kc, "print(pool.map(helpers.clean, [1, 2, 3, 4], 1))\npool.terminate()")
        assert out.strip() == "[('v2', 1), ('v2', 2), ('v2', 3), ('v2', 4)]"


def test_a_module_next_to_the_notebook_that_workers_cannot_import(tmp_path):
    (tmp_path / "gone.py").write_text("SCALE = 3\n\ndef scale(x):\n    return SCALE * x\n")
    with kernel(str(tmp_path)) as (_km, kc):
        out, _ = run_cell(
            kc,
            "import os, shutil, nbpool, gone\nos.remove('gone.py')\n"
            "shutil.rmtree('__pycache__', ignore_errors=True)\n"
            "with nbpool.Pool(1) as pool:\n    print(pool.map(gone.scale, [1, 2]))",
        )
    assert out.strip() == "[3, 6]"
