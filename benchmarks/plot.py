"""Draw the peer / nbpool ratios of a ``run.py`` result as grouped bars (PNG).

Run from the repository root (``make bench`` does it after ``run.py``, which draws it too)::

    .venv/bin/python benchmarks/plot.py                        # results/latest.json -> ratios.png
    .venv/bin/python benchmarks/plot.py /tmp/quick.json --output /tmp/quick.png

The bars are the ``ratios`` of the JSON, which ``run.py`` computed with the same function as the
ratio columns of its markdown table (peer median / nbpool median): one group per row, one bar
per peer drawn from 1.0 to its ratio, log-scale y, a line at 1.0. Above 1, nbpool is faster
(row 7: uses less memory). A missing bar is a cell that failed or does not apply (its reason is
in the markdown's notes). The serial baseline is left out: it is not a pool.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LEFT_OUT = {"nbpool", "serial"}


def plot_path(results: Path) -> Path:
    """``ratios.png`` beside the default ``latest.md``/``.json``; ``NAME.png`` beside others."""
    if results.stem == "latest":
        return results.with_name("ratios.png")
    return results.with_suffix(".png")


def peers_of(data: dict[str, Any]) -> list[str]:
    """Peers with at least one ratio, in the table's column order."""
    rows = data["rows"].values()
    return [
        lib
        for lib in data["libs"]
        if lib not in LEFT_OUT and any(row["ratios"].get(lib) for row in rows)
    ]


def draw(json_path: Path, png: Path) -> None:
    """Raises ImportError without matplotlib (imported here: run.py needs plot_path anyway)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    rows = list(data["rows"].values())
    peers = peers_of(data)
    width = 0.8 / max(1, len(peers))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(rows) + 2), 6.5))
    cmap = plt.get_cmap("tab10")
    for k, peer in enumerate(peers):
        xs, ys = [], []
        for i, row in enumerate(rows):
            r = row["ratios"].get(peer)
            if r:  # None: failed, not run, or not applicable
                xs.append(i + (k - (len(peers) - 1) / 2) * width)
                ys.append(r)
        label = data["lib_labels"].get(peer, peer)
        # Each bar runs from 1.0 to its ratio: up where nbpool is faster, down where it is not.
        heights = [y - 1.0 for y in ys]
        bars = ax.bar(xs, heights, bottom=1.0, width=width, label=label, color=cmap(k % 10))
        ax.bar_label(bars, labels=[short(y) for y in ys], fontsize=6, rotation=90, padding=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.axhline(1.0, color="black", linewidth=1)
    lo, hi = y_limits(rows, peers)
    ax.set_ylim(lo, hi)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([textwrap.fill(row["label"], 16) for row in rows], fontsize=8, rotation=0)
    ax.set_ylabel("peer / nbpool (median)  —  above 1: nbpool faster (row 7: leaner)")
    meta = data["meta"]
    ax.set_title(
        textwrap.fill(
            f"nbpool vs peers, {meta['cpus']} CPUs, Python {meta['python']}, "
            f"repeat {meta['repeat']}{', --quick' if meta['quick'] else ''}, {meta['date']}",
            100,
        ),
        fontsize=10,
    )
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(ncol=min(len(peers), 6), fontsize=8, loc="upper left")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def short(ratio: float) -> str:
    """Two significant digits, never in exponent form (640, not 6.4e+02)."""
    return f"{ratio:.0f}" if ratio >= 100 else f"{ratio:.2g}"


def y_limits(rows: list[dict[str, Any]], peers: list[str]) -> tuple[float, float]:
    """Whole decades around every ratio and 1.0, with room above for the legend."""
    values = [r for row in rows for p in peers if (r := row["ratios"].get(p))] or [1.0]
    lo = 10 ** math.floor(math.log10(min(min(values), 1.0) * 0.8))
    hi = 10 ** math.ceil(math.log10(max(max(values), 1.0) * 3))
    return lo, hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="?", type=Path, default=HERE / "results" / "latest.json")
    ap.add_argument("--output", type=Path, default=None, help="default: see plot_path")
    args = ap.parse_args()
    out = args.output or plot_path(args.json)
    draw(args.json, out)
    print(f"Plot written to {out}")


if __name__ == "__main__":
    main()
