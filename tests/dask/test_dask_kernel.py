"""The Dask engine from real kernels: the clusters notebook with NBPOOL_ADDRESS as the only
switch, and %pool connect tcp://... with %%pmap and output in its cell."""

from __future__ import annotations

import pytest
from cluster_checks import check_clusters_notebook, check_pool_connect

pytestmark = pytest.mark.kernel


def test_the_clusters_notebook_runs_on_dask_with_no_code_change(
    dask_cluster, tmp_path, monkeypatch
):
    check_clusters_notebook(dask_cluster.address, "dask", tmp_path, monkeypatch)


def test_pool_connect_moves_the_session_pool_to_dask_and_back(dask_cluster, tmp_path):
    check_pool_connect(dask_cluster.address, "Dask", tmp_path)
