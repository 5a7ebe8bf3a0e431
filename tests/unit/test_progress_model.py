"""Pieces of the progress model and its plain renderings (no processes)."""

from __future__ import annotations

import pathlib
import time

import pytest

from nbpool._notebook.widget import asset, fmt_bytes, fmt_seconds, render_html, render_text
from nbpool._progress import check_progress, describe_call, format_arg, wants_view


def snapshot(**over):
    snap = {
        "v": 1,
        "title": "map(work) · 200 items",
        "state": "running",
        "total": 200,
        "done": 150,
        "failed": 2,
        "elapsed": 3.21,
        "rate": 46.7,
        "eta": 1.07,
        "note": "",
        "workers": [
            {
                "id": 0,
                "pid": 4711,
                "host": "",
                "state": "busy",
                "item": 17,
                "arg": "'<b>', 3",
                "item_s": 0.5,
                "done": 80,
                "cpu": 99.0,
                "rss": 12_300_000,
                "note": "",
            },
            {
                "id": 1,
                "pid": None,
                "host": "",
                "state": "restarting",
                "item": None,
                "arg": "",
                "item_s": None,
                "done": 70,
                "cpu": None,
                "rss": None,
                "note": "replaced: killed by SIGKILL",
            },
        ],
    }
    snap.update(over)
    return snap


@pytest.mark.smoke
@pytest.mark.parametrize("value", ["auto", True, False])
def test_progress_values_accepted(value):
    assert check_progress(value) is value


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "True"])
def test_progress_values_rejected_with_the_choices(value):
    with pytest.raises(ValueError, match="'auto', True or False"):
        check_progress(value)


def test_which_view():
    assert wants_view("auto", in_notebook=True) == "widget"
    assert wants_view("auto", in_notebook=False) is None  # drop-in code prints nothing new
    assert wants_view(True, in_notebook=False) == "text"
    assert wants_view(True, in_notebook=True) == "widget"
    assert wants_view(False, in_notebook=True) is None


def test_titles():
    assert describe_call("map", "work", 1000) == "map(work) · 1,000 items"
    assert describe_call("star", "add", 3) == "starmap(add) · 3 items"
    assert describe_call("map", "work", None) == "map(work) · streamed items"
    assert describe_call("apply", "work", 1) == "apply(work)"


def test_argument_reprs_are_short_and_cheap():
    assert format_arg("map", 17) == "17"
    assert format_arg("star", (1, "a")) == "1, 'a'"
    assert format_arg("apply", ((1, 2), {"k": "v"})) == "1, 2, k='v'"
    big = list(range(2_000_000))
    t0 = time.perf_counter()
    text = format_arg("map", big)
    assert time.perf_counter() - t0 < 0.05  # reprlib stops early; repr(big) takes far longer
    assert len(text) <= 60

    class Broken:
        def __repr__(self):
            raise RuntimeError("no repr")

    assert "Broken" in format_arg("map", Broken())  # a broken __repr__ never raises here


def test_durations_and_sizes():
    assert fmt_seconds(0.53) == "0.5 s"
    assert fmt_seconds(12) == "12 s"
    assert fmt_seconds(185) == "3 min 05 s"
    assert fmt_seconds(3720) == "1 h 02 min"
    assert fmt_seconds(None) == "-"
    assert fmt_bytes(12_300_000) == "12.3 MB"
    assert fmt_bytes(None) == "-"


def test_text_fallback_says_how_far_and_who_does_what():
    text = render_text(snapshot())
    assert "map(work) · 200 items · running" in text
    assert "150 / 200 items" in text and "ETA 1.1 s" in text and "2 failed" in text
    assert "w0   pid 4711" in text and "#17 '<b>', 3" in text
    assert "restarting" in text
    final = render_text(snapshot(state="finished", done=200, eta=0.0))
    assert "finished" in final and "ETA" not in final


def test_html_fallback_escapes_and_shows_state():
    html = render_html(snapshot(state="interrupted", note="stopped <now>"))
    assert "&#x27;&lt;b&gt;&#x27;" in html and "<b>'" not in html  # arguments are escaped
    assert "stopped &lt;now&gt;" in html
    assert "interrupted" in html and "75.0%" in html  # 150 of 200 on the bar


@pytest.mark.smoke
def test_dashboard_assets_ship_with_the_package():
    js = pathlib.Path(asset("dashboard.js")).read_text(encoding="utf-8")
    css = pathlib.Path(asset("dashboard.css")).read_text(encoding="utf-8")
    assert "export default" in js and "nbpool-worker" in js
    assert ".nbpool-dash" in css


def test_the_wheel_contains_the_dashboard_front_end(tmp_path):
    """Installed from a wheel (not this checkout), nbpool finds js/ as nbpool/js/."""
    import zipfile

    from hatchling.builders.wheel import WheelBuilder

    root = pathlib.Path(__file__).resolve().parents[2]
    (wheel,) = WheelBuilder(str(root)).build(directory=str(tmp_path), versions=["standard"])
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "nbpool/js/dashboard.js",
        "nbpool/js/dashboard.css",
        "nbpool/_notebook/widget.py",
    } <= names
