"""What a stranger installing nbpool gets: one version, extras that say when they are missing,
and the typing marker (the wheel itself: tests/release/test_wheel.py)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys

import pytest

import nbpool

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Extras for working on nbpool itself; every other extra is a runtime one and belongs in `all`.
DEV_EXTRAS = {"test", "bench", "docs"}

# Run in a fresh interpreter with the extra's package made unimportable (None in sys.modules),
# and every TCP connect refused and counted: the import check must come before any connection.
MISSING_EXTRA = """
import json, socket, sys
sys.modules[{module!r}] = None
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args))
    raise OSError("this test allows no network connection")
socket.create_connection = refuse
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
import nbpool
try:
    pool = nbpool.Pool({args})
except Exception as exc:
    print(json.dumps({{"type": type(exc).__name__, "message": str(exc),
                      "is_import_error": isinstance(exc, ImportError), "attempts": attempts}}))
else:
    pool.terminate()
    print(json.dumps({{"type": None, "attempts": attempts}}))
"""


def _pyproject() -> dict:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11+")
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


@pytest.mark.smoke
def test_the_installed_version_is_nbpool_version():
    assert importlib.metadata.version("nbpool") == nbpool.__version__


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("extra", "module", "args"),
    [
        ("ray", "ray", "ray_address='127.0.0.1:1'"),
        ("dask", "distributed", "address='tcp://127.0.0.1:1'"),
        ("dill", "dill", "1, serializer='dill'"),
    ],
)
def test_a_missing_extra_names_its_install_line(extra, module, args):
    code = MISSING_EXTRA.format(module=module, args=args)
    # no address from the environment (it would send Pool(1) to a cluster)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NBPOOL_ADDRESS", "RAY_ADDRESS", "DASK_SCHEDULER_ADDRESS")
        and not k.startswith("PYTEST")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["type"] == "BackendUnavailableError", result
    assert result["is_import_error"]
    assert f"pip install 'nbpool[{extra}]'" in result["message"]
    assert result["attempts"] == []  # refused before any connection was tried


def test_all_lists_every_runtime_extra():
    extras = _pyproject()["project"]["optional-dependencies"]
    runtime = set(extras) - DEV_EXTRAS - {"all"}
    assert runtime == {"ray", "dask", "dill"}
    listed: set[str] = set()
    for requirement in extras["all"]:
        name, _, rest = requirement.partition("[")
        assert name == "nbpool" and rest.endswith("]"), requirement
        listed |= {e.strip() for e in rest[:-1].split(",")}
    assert listed == runtime


def test_dill_is_an_extra_and_the_tests_get_it():
    project = _pyproject()["project"]
    assert not any(dep.startswith("dill") for dep in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(dep.startswith("dill") for dep in extras["dill"])
    assert any(dep.startswith("dill") for dep in extras["test"])  # serializer="dill" tests


def test_the_version_is_written_in_one_place():
    pyproject = _pyproject()
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "nbpool/__init__.py"


@pytest.mark.smoke
def test_the_package_is_marked_typed():
    marker = pathlib.Path(nbpool.__file__).parent / "py.typed"
    assert marker.is_file()
