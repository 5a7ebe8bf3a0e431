"""The comparison behind the clusters' version checks (``_engines.versions``), on its own: what
a loopback cluster cannot show (another Python). The checks themselves run against real
clusters whose nodes lack nbpool or have another one (tests/dask, tests/ray)."""

from __future__ import annotations

import pickle

import cloudpickle

import nbpool
from nbpool._engines.versions import probe, version_problems, versions_message


def test_each_difference_is_named():
    missing = ModuleNotFoundError("No module named 'nbpool'", name="nbpool")
    got = {
        "tcp://a:1": ((3, 11, 9), "1.0"),  # same minor Python, same nbpool: fine
        "tcp://b:1": ((3, 12, 1), "1.0"),
        "tcp://c:1": ((3, 11, 2), missing),
        "tcp://d:1": ((3, 10, 0), "0.9"),
        "tcp://e:1": ((3, 11, 0), ImportError("numpy is broken")),
        "tcp://f:1": OSError("the worker left"),  # running the probe failed
    }
    wrong = version_problems(got, (3, 11, 7), "1.0")
    assert wrong == {
        "tcp://b:1": "Python 3.12.1",
        "tcp://c:1": "no nbpool",
        "tcp://d:1": "Python 3.10.0 and nbpool 0.9",
        "tcp://e:1": "an nbpool that fails to import (ImportError('numpy is broken'))",
        "tcp://f:1": "a Python that could not be asked its versions (OSError('the worker left'))",
    }
    message = versions_message("the Dask cluster at tcp://s:8786", "Dask worker", wrong, "1.0")
    assert message.startswith(
        "the Dask cluster at tcp://s:8786 cannot run this kernel's nbpool workers: tcp://b:1 "
        "has Python 3.12.1; tcp://c:1 has no nbpool; tcp://d:1 has Python 3.10.0 and nbpool "
        "0.9; 2 more Dask workers differ too. This kernel has Python "
    )
    assert "`pip install nbpool==1.0` in the Dask workers' environment" in message


def test_the_probe_travels_by_value_and_answers_here():
    """It must unpickle where nbpool is missing: its pickle names no module of nbpool."""
    data = cloudpickle.dumps(probe())
    assert b"nbpool._engines" not in data
    python, version = pickle.loads(data)()
    assert python == tuple(__import__("sys").version_info[:3]) and version == nbpool.__version__
