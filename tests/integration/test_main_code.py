"""Notebook-style code run from ``__main__`` of a ``python -c`` script, with both serializers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import clean_env
from notebook_cells import CELLS


@pytest.mark.smoke
@pytest.mark.parametrize("serializer", ["cloudpickle", "dill"])
def test_main_code(serializer, tmp_path):
    script = f"SERIALIZER = {serializer!r}\n" + "\n".join(code for code, _ in CELLS)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert out.returncode == 0, out.stderr
    expected = "\n".join(want for _, want in CELLS)
    assert out.stdout.strip().splitlines() == expected.splitlines(), out.stderr
