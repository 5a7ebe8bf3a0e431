"""The dashboard in a real browser: JupyterLab 4 and Notebook 7, headless Debian Chromium.

The tour notebook runs with Run All; its dashboard must appear while the cell runs, change as
the work goes on, and end as a finished summary. Then the ■ button during a long ``%%pmap``:
the rows must go to "interrupted" and the workers that were on the cancelled items must be gone.
Screenshots go to tests/browser/screenshots/ (git-ignored); look at them after a change to js/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import psutil
from conftest import read_notebook  # tests/conftest.py

from .conftest import (
    interrupt,
    open_notebook,
    run_all,
    screenshot,
    wait_all_executed,
    wait_kernel_idle,
    write_notebook,
)

TOUR = Path(__file__).resolve().parents[2] / "notebooks" / "tour.py"
DASH = ".nbpool-dash"


def rows(page) -> list[dict[str, str]]:
    """The worker rows of the first dashboard on the page (the one under test), as text."""
    return (
        page.locator(DASH)
        .first.locator("tr.nbpool-worker")
        .evaluate_all(
            """trs => trs.map(tr => ({
            state: tr.dataset.state,
            pid: tr.querySelector('.w-pid').textContent.trim(),
            item: tr.querySelector('.w-item').textContent.trim(),
            done: tr.querySelector('.w-done').textContent.trim(),
        }))"""
        )
    )


# Notebook 7 raises this by itself at start-up in these isolated profiles (seen with a notebook
# that only prints, nbpool not loaded); it is not ours and does not affect the page.
NB7_OWN_ERROR = "Cannot read properties of undefined (reading 'schema')"


def js_errors(page) -> list[str]:
    return [e for e in page.js_errors if NB7_OWN_ERROR not in e]


def output_text(page) -> str:
    """All output text of the notebook. textContent, not innerText: Notebook 7 does not lay out
    cells scrolled out of view, and innerText of an element not laid out is empty."""
    return "\n".join(page.locator(".jp-OutputArea-output").all_text_contents())


def test_tour_dashboard_live_then_final(jupyter_server, page):
    tour = read_notebook(TOUR)  # the text notebook, as JupyterLab opens it with jupytext
    nbformat.write(tour, jupyter_server.root_dir / "tour.ipynb")
    n_code = sum(c.cell_type == "code" for c in tour.cells)
    open_notebook(page, jupyter_server, "tour.ipynb")
    run_all(page)

    # Live: the dashboard shows up while its cell runs, and its numbers move.
    dash = page.locator(f"{DASH}[data-state='running']").first
    dash.wait_for(timeout=60_000)
    dash.scroll_into_view_if_needed()
    count = page.locator(f"{DASH} .nbpool-count").first
    first_count, first_rows = count.text_content(), rows(page)
    assert len(first_rows) == 2 and all(r["pid"].isdigit() for r in first_rows), first_rows
    # Sampled until the count has moved and a worker is on an item: a single sample can fall
    # between two chunks, when every worker is idle for a moment (both finished a chunk of the
    # same size at once; seen once in CI).
    deadline = time.monotonic() + 10
    while True:
        later_count, later_rows = count.text_content(), rows(page)
        moved = later_count != first_count
        on_item = any(r["state"] == "busy" and r["item"].startswith("#") for r in later_rows)
        if (moved and on_item) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert moved, "the item count did not change while running"
    assert on_item, later_rows
    assert re.fullmatch(r"[\d,]+ / 60 items", later_count), later_count
    screenshot(page, f"dashboard-running-{jupyter_server.kind}")

    # Final: every cell ran; the dashboard stays as a finished summary.
    wait_all_executed(page, n_code, timeout=90)
    final = page.locator(DASH).first
    final.scroll_into_view_if_needed()
    page.locator(f"{DASH}[data-state='finished']").first.wait_for(timeout=10_000)
    assert page.locator(f"{DASH} .nbpool-badge").first.text_content().strip() == "finished"
    assert page.locator(f"{DASH} .nbpool-count").first.text_content().strip() == "60 / 60 items"
    done = rows(page)
    assert [r["state"] for r in done] == ["done", "done"], done
    assert sum(int(r["done"].replace(",", "")) for r in done) == 60
    # The quick calls of the tour show none (its second code cell: two maps of a few items).
    assert page.locator(".jp-Notebook .jp-CodeCell").nth(1).locator(DASH).count() == 0
    outputs = output_text(page)
    assert "sum: 70210" in outputs and "['ALPHA!', 'BETA!', 'GAMMA!']" in outputs
    final.screenshot(path=str(screenshot(page, f"dashboard-final-{jupyter_server.kind}")))
    assert not js_errors(page), page.js_errors


def test_interrupt_long_pmap_marks_rows_interrupted(jupyter_server, page):
    cells = [
        "%load_ext nbpool\nimport time",
        "%pool start -n 2",
        "%%pmap --progress x in range(40)\ntime.sleep(3)\nx",
        "print('not run')",
    ]
    write_notebook(jupyter_server, "interrupt.ipynb", cells)
    open_notebook(page, jupyter_server, "interrupt.ipynb")
    run_all(page)
    page.locator(f"{DASH}[data-state='running']").first.wait_for(timeout=60_000)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        busy = [r for r in rows(page) if r["state"] == "busy" and r["item"].startswith("#")]
        if len(busy) == 2:
            break
        time.sleep(0.1)
    assert len(busy) == 2, rows(page)
    pids = [int(r["pid"]) for r in busy]
    assert all(psutil.pid_exists(p) for p in pids)
    screenshot(page, f"pmap-running-{jupyter_server.kind}")

    interrupt(page)
    page.locator(f"{DASH}[data-state='interrupted']").first.wait_for(timeout=15_000)
    page.locator(".jp-OutputArea-output", has_text="KeyboardInterrupt").wait_for(timeout=15_000)
    wait_kernel_idle(page, timeout=30)
    stopped = rows(page)
    assert [r["state"] for r in stopped] == ["interrupted", "interrupted"], stopped
    assert all(r["item"].startswith("#") for r in stopped)  # each row says what was stopped
    # The workers that were on the cancelled items are killed (after a 0.2 s grace), not left
    # running their 3 s items in the background.
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if psutil.pid_exists(p)]
    assert "not run" not in output_text(page)
    page.locator(DASH).first.scroll_into_view_if_needed()
    screenshot(page, f"pmap-interrupted-{jupyter_server.kind}")
    assert not js_errors(page), page.js_errors


def test_async_call_updates_its_own_cell_after_it_ended(jupyter_server, page):
    """map_async returns at once; its dashboard and its workers' prints must land under the
    cell that submitted it, while a later cell runs, and the dashboard must reach "finished"."""
    cells = [
        "import time, nbpool\npool = nbpool.Pool(2)\n"
        "def work(x):\n    time.sleep(0.05)\n    if x == 30:\n        print('item 30 printed')\n"
        "    return x",
        "pending = pool.map_async(work, range(80))",
        "time.sleep(3)\nprint('later cell done')",
        "print(len(pending.get(30)))\npool.terminate()",
    ]
    write_notebook(jupyter_server, "async.ipynb", cells)
    open_notebook(page, jupyter_server, "async.ipynb")
    run_all(page)
    wait_all_executed(page, len(cells), timeout=60)
    code_cells = page.locator(".jp-Notebook .jp-CodeCell")
    submitting, later = code_cells.nth(1), code_cells.nth(2)
    submitting.locator(f"{DASH}[data-state='finished']").wait_for(timeout=15_000)
    count = submitting.locator(".nbpool-count").text_content()
    assert count is not None and count.strip() == "80 / 80 items"
    assert later.locator(DASH).count() == 0
    printed = "\n".join(submitting.locator(".jp-OutputArea-output").all_text_contents())
    assert re.search(r"\[w\d pid \d+\] item 30 printed", printed), printed
    later_text = "\n".join(later.locator(".jp-OutputArea-output").all_text_contents())
    assert "item 30 printed" not in later_text and "later cell done" in later_text
    submitting.scroll_into_view_if_needed()
    screenshot(page, f"async-{jupyter_server.kind}")
    assert not js_errors(page), page.js_errors


def test_a_loop_of_calls_shows_one_dashboard_with_earlier_calls_as_lines(jupyter_server, page):
    cells = [
        "import time, nbpool\npool = nbpool.Pool(2)\n"
        "def work(x):\n    time.sleep(0.01)\n    return x",
        "for n in (20, 30, 40):\n    pool.map(work, range(n), progress=True)",
        "pool.terminate()",
    ]
    write_notebook(jupyter_server, "loop.ipynb", cells)
    open_notebook(page, jupyter_server, "loop.ipynb")
    run_all(page)
    wait_all_executed(page, len(cells), timeout=60)
    loop = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
    loop.locator(f"{DASH}[data-state='finished']").wait_for(timeout=15_000)
    assert loop.locator(DASH).count() == 1
    assert loop.locator(".nbpool-count").text_content().strip() == "40 / 40 items"
    past = loop.locator(".nbpool-past").all_text_contents()
    assert len(past) == 2, past
    assert "map(work) · 20 items" in past[0] and "finished" in past[0]
    assert "map(work) · 30 items" in past[1] and "30 / 30 items" in past[1]
    loop.scroll_into_view_if_needed()
    loop.locator(DASH).screenshot(path=str(screenshot(page, f"loop-{jupyter_server.kind}")))
    assert not js_errors(page), page.js_errors
