"""Which engine a Pool runs on: arguments first, then NBPOOL_ADDRESS, then RAY_ADDRESS."""

from __future__ import annotations

import pytest
from proc_util import run_python

import nbpool
from nbpool._backends import choose


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("NBPOOL_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
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
    ],
)
def test_resolution_order(env, backend, ray_address, variables, expected):
    for name, value in variables.items():
        env.setenv(name, value)
    assert choose(backend, ray_address) == expected


def test_bad_choices_say_what_to_do(env):
    with pytest.raises(ValueError, match="backend must be one of"):
        nbpool.Pool(backend="spark")
    with pytest.raises(ValueError, match="contradict"):
        nbpool.Pool(backend="local", ray_address="h:1")
    with pytest.raises(TypeError, match="ray_address must be"):
        nbpool.Pool(ray_address=6379)  # type: ignore[arg-type]
    env.setenv("NBPOOL_ADDRESS", "tcp://127.0.0.1:8786")
    with pytest.raises(ValueError, match="Dask scheduler"):
        nbpool.Pool()


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
