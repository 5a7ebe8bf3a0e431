"""Progress outside notebooks: nothing new by default, a tqdm bar on stderr with progress=True."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import clean_env

import nbpool

SCRIPT = """
import sys, time, nbpool
def slow(x):
    time.sleep(0.01)
    return x
with nbpool.Pool(2{pool_args}) as pool:
    r = pool.map(slow, range(120){call_args})
    assert r == list(range(120))
    print("imap", sum(pool.imap(slow, (i for i in range(30)){call_args})))
print("done")
"""


def python_c(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env()
    )


def run(pool_args: str = "", call_args: str = "") -> subprocess.CompletedProcess[str]:
    return python_c(SCRIPT.format(pool_args=pool_args, call_args=call_args))


@pytest.mark.smoke
def test_default_prints_nothing_new_outside_notebooks():
    out = run()
    assert out.returncode == 0, out.stderr
    assert out.stdout == "imap 435\ndone\n"
    assert out.stderr == ""


def test_progress_true_gives_a_text_bar_per_call():
    out = run(pool_args=", progress=True")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "imap 435\ndone\n"  # the bar goes to stderr only
    frames = out.stderr.replace("\r", "\n")
    assert "map(slow): 100%" in frames and "120/120" in frames
    assert "30/30" in frames  # the generator's length became known when it ran out
    assert "item/s" in frames


def test_progress_per_call_overrides_the_pool():
    out = run(call_args=", progress=True")
    assert out.returncode == 0, out.stderr
    assert "120/120" in out.stderr
    out = run(pool_args=", progress=True", call_args=", progress=False")
    assert out.returncode == 0 and out.stderr == ""


def test_a_failed_call_says_so_on_its_bar():
    code = (
        "import nbpool\n"
        "def f(x):\n    if x == 3:\n        raise ValueError(x)\n    return x\n"
        "p = nbpool.Pool(2)\n"
        "try:\n    p.map(f, range(10), progress=True)\n"
        "except ValueError:\n    print('raised')\n"
        # map raises at the first failure; close + join lets the other items finish, and the
        # bar reaches its final state (a terminate would end it as 'stopped')
        "p.close()\np.join()\n"
    )
    out = python_c(code)
    assert out.stdout == "raised\n", out.stderr
    assert "[failed]" in out.stderr and "1 failed" in out.stderr


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_bad_progress_values_are_refused(bad):
    with pytest.raises(ValueError, match="progress must be 'auto', True or False"):
        nbpool.Pool(1, progress=bad)
    with nbpool.Pool(1) as pool:
        with pytest.raises(ValueError, match="progress must be"):
            pool.map(abs, [1], progress=bad if bad is not None else "no")
        assert pool.map(abs, [-1]) == [1]  # the refused call lost nothing


def test_dashboard_needs_a_notebook():
    with nbpool.Pool(1) as pool:
        with pytest.raises(RuntimeError, match="needs a Jupyter notebook"):
            pool.dashboard()
