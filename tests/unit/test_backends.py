"""Which engine a Pool runs on: arguments first, then NBPOOL_ADDRESS, RAY_ADDRESS and
DASK_SCHEDULER_ADDRESS."""

from __future__ import annotations

import pytest
from proc_util import run_python

import nbpool
from nbpool._backends import choose


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("NBPOOL_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "backend,ray_address,variables,expected",
    [
        (None, None, {}, ("local", None)),
        (None, "10.0.0.1:6379", {}, ("ray", "10.0.0.1:6379")),
        (None, "ray://h:10001", {"NBPOOL_ADDRESS": "local"}, ("ray", "ray://h:10001")),
        (None, None, {"RAY_ADDRESS": "auto"}, ("ray", "auto")),
        (None, None, {"NBPOOL_ADDRESS": "h:1", "RAY_ADDRESS": "auto"}, ("ray", "h:1")),
        (None, None, {"NBPOOL_ADDRESS": "local", "RAY_ADDRESS": "auto"}, ("local", None)),
        ("ray", None, {}, ("ray", None)),
        ("ray", None, {"RAY_ADDRESS": "h:2"}, ("ray", "h:2")),
        ("local", None, {"RAY_ADDRESS": "h:2"}, ("local", None)),
        (None, None, {"DASK_SCHEDULER_ADDRESS": "tcp://d:1"}, ("dask", "tcp://d:1")),
        (None, None, {"NBPOOL_ADDRESS": "tls://d:1"}, ("dask", "tls://d:1")),
        (None, None, {"RAY_ADDRESS": "h:2", "DASK_SCHEDULER_ADDRESS": "tcp://d:1"}, ("ray", "h:2")),
        ("dask", None, {"RAY_ADDRESS": "h:2", "DASK_SCHEDULER_ADDRESS": "tcp://d:1"},
         ("dask", "tcp://d:1")),
        ("ray", None, {"DASK_SCHEDULER_ADDRESS": "tcp://d:1"}, ("ray", None)),
        ("dask", None, {}, ("dask", None)),
        ("dask", None, {"NBPOOL_ADDRESS": "local"}, ("dask", None)),
    ],
)  # fmt: skip
def test_resolution_order(env, backend, ray_address, variables, expected):
    for name, value in variables.items():
        env.setenv(name, value)
    assert choose(backend, ray_address) == expected


def test_address_takes_a_dask_scheduler_or_ray_client(env):
    assert choose(None, None, "tcp://d:8786") == ("dask", "tcp://d:8786")
    assert choose(None, None, "ray://h:10001") == ("ray", "ray://h:10001")
    env.setenv("RAY_ADDRESS", "h:2")  # an argument wins over the environment
    assert choose(None, None, "tls://d:8786") == ("dask", "tls://d:8786")
    with pytest.raises(ValueError, match="for a Ray head use ray_address="):
        choose(None, None, "10.0.0.1:6379")
    with pytest.raises(ValueError, match="is a Dask scheduler's address: use address="):
        choose(None, "tcp://d:8786")
    with pytest.raises(TypeError, match="not both"):
        choose(None, "h:1", "tcp://d:1")
    with pytest.raises(ValueError, match="contradict"):
        choose("ray", None, "tcp://d:1")


def test_bad_choices_say_what_to_do(env):
    with pytest.raises(ValueError, match="backend must be one of"):
        nbpool.Pool(backend="spark")
    with pytest.raises(ValueError, match="contradict"):
        nbpool.Pool(backend="local", ray_address="h:1")
    with pytest.raises(TypeError, match="ray_address must be"):
        nbpool.Pool(ray_address=6379)  # type: ignore[arg-type]
    env.setenv("RAY_ADDRESS", "tcp://127.0.0.1:8786")
    with pytest.raises(ValueError, match="DASK_SCHEDULER_ADDRESS"):
        nbpool.Pool()
    env.delenv("RAY_ADDRESS")
    with pytest.raises(ValueError, match="not a Dask scheduler's address"):
        nbpool.Pool(address="tcp://no-port")


def test_without_ray_installed_the_error_names_the_extra():
    code = (
        "import sys; sys.modules['ray'] = None\n"  # what an environment without Ray gives
        "import nbpool\n"
        "try:\n"
        "    nbpool.Pool(ray_address='127.0.0.1:1')\n"
        "except nbpool.BackendUnavailableError as e:\n"
        "    print(e)\n"
    )
    assert "pip install 'nbpool[ray]'" in run_python(code)


def test_without_distributed_installed_the_error_names_the_extra():
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "import nbpool\n"
        "try:\n"
        "    nbpool.Pool(address='tcp://127.0.0.1:1')\n"
        "except nbpool.BackendUnavailableError as e:\n"
        "    print(e)\n"
    )
    assert "pip install 'nbpool[dask]'" in run_python(code)
