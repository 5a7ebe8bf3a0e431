"""notebooks/clusters.py, unchanged, on a Ray head: NBPOOL_ADDRESS is the only switch."""

from __future__ import annotations

import pytest
from cluster_checks import check_clusters_notebook

pytestmark = pytest.mark.kernel


def test_the_clusters_notebook_runs_on_ray_with_no_code_change(ray_head, tmp_path, monkeypatch):
    check_clusters_notebook(ray_head.address, "ray", tmp_path, monkeypatch)
