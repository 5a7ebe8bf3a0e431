"""The Ray engine from a real notebook kernel: %pool connect, %%pmap, output in its cell."""

from __future__ import annotations

import sys

import pytest
from conftest import HERE

sys.path.insert(0, f"{HERE}/ipython")
from kernel_util import kernel, run_cell

pytestmark = pytest.mark.kernel


def test_pool_connect_moves_the_session_pool_to_ray_and_back(ray_head, tmp_path):
    with kernel(str(tmp_path)) as (_km, kc):
        run_cell(kc, "%load_ext nbpool")
        out, _ = run_cell(kc, f"%pool connect {ray_head.address}")
        assert f"2 workers on Ray ({ray_head.address})" in out
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
