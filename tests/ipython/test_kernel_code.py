"""The notebook cases in a real Jupyter kernel (jupyter_client), cell by cell."""

from __future__ import annotations

import pytest
from kernel_util import kernel, run_cell
from notebook_cells import CELLS

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("serializer", ["cloudpickle", "dill"])
def test_notebook_cells_in_a_real_kernel(serializer, tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, f"SERIALIZER = {serializer!r}")
        # In a kernel, __main__ is IPython's user namespace: the case nbpool exists for.
        out, _ = run_cell(kc, "import sys; print(sys.modules['__main__'].__dict__ is globals())")
        assert out.strip() == "True"
        for code, expected in CELLS:
            out, _ = run_cell(kc, code)
            assert out.strip() == expected, code
