"""The "after" examples of docs/migration.md's guides from concurrent.futures, joblib and Dask
run as written.

Each guide has a ``# after: nbpool`` code block. It runs here in a fresh interpreter, as a
script's ``__main__`` (so the functions it uses are shipped by value, as from a notebook), after
a prelude that defines the names the block takes as given (``score``, ``xs``, ``data``...) and
before checks of what it computed. The Dask block runs on an in-process ``LocalCluster``, through
``Pool(address=client)``, which the block's comment names; it is skipped without ``distributed``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIGRATION = ROOT / "docs" / "migration.md"

COMMON = """
import numpy as np

xs = list(range(8))
ys = list(range(10, 18))
data = np.arange(800_000, dtype=float).reshape(100_000, 8)   # 6.4 MB: over joblib's 1 MB


def score(x):
    return 2 * x


def add(x, y):
    return x + y


def column_mean(a, j):
    return float(a[:, j].mean())
"""

CHECKS = """
assert scores == [2 * x for x in xs], scores
assert sums == [x + y for x, y in zip(xs, ys)], sums
print("OK")
"""

PRELUDES = {
    "From `concurrent.futures`": COMMON
    + """
MODEL = None


def load_model(path):
    global MODEL
    MODEL = path


def score(x):
    assert MODEL == "model.bin", MODEL   # the initializer ran in this worker
    return 2 * x
""",
    "From joblib": COMMON,
    "From Dask's `client.map`": COMMON
    + """
from distributed import Client, LocalCluster

cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None)
client = Client(cluster)
""",
}

EXTRA_CHECKS = {
    "From joblib": """
assert means == [float(data[:, j].mean()) for j in range(8)], means
""",
    "From Dask's `client.map`": """
client.close()
cluster.close()
""",
}


def after_block(section: str) -> str:
    """The ``# after: nbpool`` block of the section headed ``## <section>``."""
    text = MIGRATION.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    blocks = re.findall(r"```python\n(# after: nbpool\n.*?)```", body, re.DOTALL)
    assert len(blocks) == 1, f"{section}: {len(blocks)} '# after: nbpool' blocks"
    return blocks[0]


@pytest.mark.parametrize("section", list(PRELUDES))
def test_migration_example_runs(section, tmp_path):
    code = after_block(section)
    if section.startswith("From Dask"):
        pytest.importorskip("distributed")
        # The guide's scheduler address stands for a real cluster: here, the in-process one.
        assert 'Pool(address="tcp://10.0.0.5:8786")' in code
        code = code.replace('Pool(address="tcp://10.0.0.5:8786")', "Pool(address=client)")
    script = tmp_path / "example.py"
    script.write_text(
        textwrap.dedent(PRELUDES[section])
        + "\n"
        + code
        + "\n"
        + EXTRA_CHECKS.get(section, "")
        + CHECKS
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("OK"), done.stdout + done.stderr
