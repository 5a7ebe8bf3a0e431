"""Smoke tests of the browser-test set-up: a real Jupyter server (JupyterLab 4 and Notebook 7), its
kernel and a headless Chromium. Each test runs once per UI (the `jupyter_server` fixture)."""

from __future__ import annotations

from .conftest import (
    KERNEL_PYTHON,
    cell_outputs,
    interrupt,
    open_notebook,
    prompts,
    run_all,
    screenshot,
    wait_all_executed,
    wait_kernel_idle,
    write_notebook,
)


def test_run_all_shows_outputs(jupyter_server, page):
    cells = ['print("hello from cell 1")', "import os; os.getpid()"]
    write_notebook(jupyter_server, "smoke.ipynb", cells)
    open_notebook(page, jupyter_server, "smoke.ipynb")
    run_all(page)
    wait_all_executed(page, len(cells), timeout=60)

    assert "hello from cell 1" in page.locator(".jp-Notebook").inner_text()
    outputs = cell_outputs(page)
    assert outputs[0].strip() == "hello from cell 1"
    # The second output is the kernel's pid: the one kernel this server started, running .venv's
    # python (the kernelspec written into the isolated JUPYTER_DATA_DIR).
    [kernel] = jupyter_server.kernel_processes()
    assert outputs[1].strip() == str(kernel.pid)
    assert kernel.cmdline()[0] == KERNEL_PYTHON
    assert "PYTEST_CURRENT_TEST" not in kernel.environ()
    screenshot(page, f"smoke-{jupyter_server.kind}")


def test_interrupt_button_stops_a_running_cell(jupyter_server, page):
    cells = ['import time\nprint("sleeping", flush=True)\ntime.sleep(300)', 'print("not run")']
    write_notebook(jupyter_server, "interrupt.ipynb", cells)
    open_notebook(page, jupyter_server, "interrupt.ipynb")
    run_all(page)
    # Only interrupt once the cell is really running: a SIGINT that reaches an idle kernel is
    # ignored, and the cell would then sleep on.
    page.locator(".jp-OutputArea-output", has_text="sleeping").wait_for(timeout=30_000)
    interrupt(page)
    page.locator(".jp-OutputArea-output", has_text="KeyboardInterrupt").wait_for(timeout=30_000)
    wait_kernel_idle(page, timeout=30)

    p = prompts(page)
    assert p[0] != "[*]:" and p[0] != "[ ]:", p  # the interrupted cell got its number
    assert p[1] == "[ ]:", p  # Run All stops at the error: the next cell never ran
    outputs = cell_outputs(page)
    assert "KeyboardInterrupt" in outputs[0]
    assert outputs[1] == "", outputs
    screenshot(page, f"interrupt-{jupyter_server.kind}")
