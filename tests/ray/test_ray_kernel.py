"""The Ray engine from a real notebook kernel: %pool connect, %%pmap, output in its cell."""

from __future__ import annotations

import pytest
from cluster_checks import check_pool_connect

pytestmark = pytest.mark.kernel


def test_pool_connect_moves_the_session_pool_to_ray_and_back(ray_head, tmp_path):
    check_pool_connect(ray_head.address, "Ray", tmp_path)
