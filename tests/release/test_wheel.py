"""The package a stranger installs: build the wheel, install it in a fresh virtual environment
(no editable install, no test extras, this checkout nowhere on the path) and run the tour
notebook from that install.

Slow by nature (~1 min: a venv, pip, a kernel and its workers), so it runs once, here.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest
from conftest import ROOT, jupyter_dirs

import nbpool

pytestmark = pytest.mark.kernel

# What running a notebook needs besides nbpool and its own dependencies: a kernel, a runner
# and jupytext for the text notebooks. Nothing from the test extras.
RUNNER = ["ipykernel", "nbclient", "jupytext"]
PIP_TIMEOUT_S = 420
RUN_TIMEOUT_S = 240


def _env_without_checkout(**extra: str) -> dict[str, str]:
    """This environment minus pytest's variables and PYTHONPATH (which could reach the
    checkout): a fresh process sees only what its own interpreter has installed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("wheel")
    build = ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), ROOT]
    _run(
        [sys.executable, "-m", "pip", *build],
        timeout=PIP_TIMEOUT_S,
        env=_env_without_checkout(),
    )
    (found,) = out.glob("nbpool-*.whl")
    return found


def test_the_wheel_holds_the_dashboard_assets_the_type_marker_and_the_license(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"nbpool-{nbpool.__version__}.dist-info"
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    assert f"{dist_info}/licenses/LICENSE" in names
    assert f"\nVersion: {nbpool.__version__}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: dill")]
    assert requires and all("extra ==" in line for line in requires)  # dill: an extra only
    js = sorted(n for n in names if n.startswith("nbpool/js/"))
    repo_js = sorted(
        f"nbpool/js/{p.relative_to(pathlib.Path(ROOT) / 'js').as_posix()}"
        for p in (pathlib.Path(ROOT) / "js").rglob("*")
        if p.is_file()
    )
    assert js == repo_js, "the wheel's nbpool/js/ must be the repository's js/"
    assert any(n.endswith(".css") for n in js) and any(n.endswith(".js") for n in js)
    assert "nbpool/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "docs/"))]


def test_the_tour_runs_from_the_installed_wheel(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    pip_env = _env_without_checkout(PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([py, "-m", "pip", "install", "-q", str(wheel), *RUNNER], PIP_TIMEOUT_S, env=pip_env)

    # The notebook and its runner, copied next to each other, far from the checkout.
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(pathlib.Path(ROOT) / "notebooks" / "tour.py", work)
    shutil.copy(pathlib.Path(ROOT) / "tools" / "run_notebook.py", work)
    env = _env_without_checkout(JUPYTER_PLATFORM_DIRS="1", **jupyter_dirs(tmp_path / "home"))

    where = _run([py, "-c", "import nbpool; print(nbpool.__file__)"], 60, cwd=work, env=env)
    site = str(env_dir / "lib")
    assert where.stdout.strip().startswith(site), where.stdout  # the wheel, not the checkout
    editable = _run([py, "-m", "pip", "list", "--editable"], 60, env=pip_env)
    assert "nbpool" not in editable.stdout

    tour = _run(
        [py, "run_notebook.py", "--quiet", "tour.py", "--output", "tour.executed.ipynb"],
        RUN_TIMEOUT_S,
        cwd=work,
        env=env,
    )
    assert "OK: " in tour.stdout, tour.stdout + tour.stderr
    executed = (work / "tour.executed.ipynb").read_text()
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in executed  # the tour's first map
    assert "isinstance: True" in executed  # a notebook class went to the workers and back
