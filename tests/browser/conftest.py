"""Browser tests: a real Jupyter server (JupyterLab 4 or Notebook 7), Playwright and Chromium.

Everything here is function-scoped on purpose. The repository's autouse `no_leftovers` fixture
(tests/conftest.py) snapshots this process's children before each test and fails the test if new
ones are still alive afterwards. A server or browser shared between tests would start new children
during every test anyway (a kernel per opened notebook, Chromium renderer processes per page), so
sharing would need per-test kernel and renderer bookkeeping to stay below that check. A fresh server
(≈ 2-4 s) and a fresh browser (≈ 1 s) per test is simpler, fully isolated, and is torn down before
`no_leftovers` looks (same scope, and autouse fixtures are set up first, so torn down last).

Usage:

    from .conftest import open_notebook, run_all, screenshot, wait_all_executed, write_notebook

    def test_x(jupyter_server, page):           # runs once in Lab, once in Notebook 7
        write_notebook(jupyter_server, "x.ipynb", ["print(1)"])
        open_notebook(page, jupyter_server, "x.ipynb")
        run_all(page, jupyter_server.kind)
        wait_all_executed(page, 1)
        screenshot(page, "x")

`lab_server` and `nb7_server` give one UI only. This folder is a package (see __init__.py), so
test modules import the helpers with `from .conftest import ...`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import clean_env, jupyter_dirs  # tests/conftest.py (this folder is a package)

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
SCREENSHOTS = HERE / "screenshots"  # git-ignored (.gitignore: tests/browser/screenshots/)

# The server and its kernels run from the project's virtual environment (where jupyterlab,
# notebook and ipykernel are installed), whichever interpreter runs pytest.
VENV_BIN = ROOT / ".venv" / "bin"
if not (VENV_BIN / "python").exists():
    VENV_BIN = Path(sys.executable).parent
KERNEL_PYTHON = str(VENV_BIN / "python")

KINDS = {"lab": "jupyter-lab", "notebook": "jupyter-notebook"}
SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 20.0
PROCS_EXIT_TIMEOUT = 10.0
DEFAULT_UI_TIMEOUT_MS = 30_000

CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # a small /dev/shm in containers crashes renderers
]

# User settings written before the server starts. Without them a news toast covers screenshots and
# a "Select Kernel" dialog can block Run All. windowingMode "none" keeps every cell in the DOM (the
# default virtualisation may detach cells scrolled out of view, which breaks DOM assertions).
USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "autoStartDefaultKernel": True,
        "windowingMode": "none",
    },
}


# ---------------------------------------------------------------------------------------------
# Processes


def _descendants(pid: int | None = None) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:160]}"
    except psutil.Error:
        return f"{p.pid} (gone)"


def _reap(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` for `procs` to exit, SIGKILL the survivors; return the survivors."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return alive


def _reap_or_fail(procs: list[psutil.Process], what: str) -> None:
    """Give `procs` PROCS_EXIT_TIMEOUT seconds to exit; kill the survivors and fail, naming them."""
    survivors = _reap(procs, timeout=PROCS_EXIT_TIMEOUT)
    if survivors:
        pytest.fail(
            f"{what} (killed): " + "; ".join(_describe(p) for p in survivors), pytrace=False
        )


# ---------------------------------------------------------------------------------------------
# The Jupyter server


@dataclass
class JupyterServer:
    kind: str  # "lab" (JupyterLab 4) or "notebook" (Notebook 7)
    url: str  # http://127.0.0.1:PORT
    token: str
    root_dir: Path  # notebooks go here; paths given to helpers are relative to it
    env: dict[str, str]  # the environment the server (and so every kernel) runs with
    log_path: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """Call the REST API (`path` like "/api/kernels"); return the decoded JSON, or None."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def kernels(self) -> list[dict[str, Any]]:
        return self.api("GET", "/api/kernels")

    def kernel_processes(self) -> list[psutil.Process]:
        """The kernel processes the server has started (ipykernel_launcher children)."""
        out = []
        for p in _descendants(self.proc.pid):
            with contextlib.suppress(psutil.Error):
                if "ipykernel_launcher" in p.cmdline():
                    out.append(p)
        return out

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(base: Path) -> dict[str, str]:
    """An environment whose every Jupyter/IPython/XDG/temp location lies under `base`.

    Drops PYTEST_* (a kernel inheriting PYTEST_CURRENT_TEST stops forwarding child-process output)
    and makes the repository importable in kernels (nbpool is also installed editable in .venv).
    """
    env = clean_env(**jupyter_dirs(base))
    env.pop("JUPYTER_PATH", None)  # no extra data dirs from the caller
    # In a venv jupyter_core searches the env's dirs (.venv/share/jupyter) before the user's; we
    # want the isolated user dirs first, so that our kernelspec (see _write_kernelspec) wins.
    env["JUPYTER_PREFER_ENV_PATH"] = "0"
    env.pop("JUPYTERLAB_SETTINGS_DIR", None)
    env.pop("JUPYTERLAB_WORKSPACES_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env["PYTHONPATH"]])  # tests/ is in it
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # ipykernel's debugger warning on frozen modules
    return env


def _write_kernelspec(data_dir: Path) -> None:
    """A `python3` kernelspec in the isolated JUPYTER_DATA_DIR that names .venv's python by path.

    (The spec shipped in .venv says just "python", which jupyter_client maps to the *server's*
    sys.executable; writing it out makes the kernel's interpreter explicit and independent of
    that rule.) With JUPYTER_PREFER_ENV_PATH=0 the user data dir comes first, so this one wins.
    """
    spec_dir = data_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [KERNEL_PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": True},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))


def _write_user_settings(settings_dir: Path) -> None:
    for rel, content in USER_SETTINGS.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2))


def _wait_ready(proc: subprocess.Popen[bytes], url: str, token: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.2)
    raise TimeoutError(f"server not ready after {timeout:.0f} s (last error: {last!r})")


def _stop(server: JupyterServer) -> None:
    """POST /api/shutdown (shuts down every kernel), wait for the server, then for the
    processes it had started (kernels and anything they started); kill whatever is left."""
    proc = server.proc
    tree = _descendants(proc.pid)  # before the server exits: orphans are no longer our children
    if proc.poll() is None:
        with contextlib.suppress(urllib.error.URLError, OSError):
            server.api("POST", "/api/shutdown", timeout=10)
        try:
            proc.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            tree = _descendants(proc.pid) or tree
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    _reap_or_fail(tree, "processes started by the Jupyter server outlived its shutdown")


@contextlib.contextmanager
def start_jupyter_server(kind: str, base: Path) -> Iterator[JupyterServer]:
    """Start `jupyter-lab` (kind "lab") or `jupyter-notebook` (kind "notebook", Notebook 7) from
    .venv on 127.0.0.1 with a free port and a random token, isolated under `base`; stop it on exit.
    """
    exe = VENV_BIN / KINDS[kind]
    env = isolated_env(base / "env")
    _write_kernelspec(Path(env["JUPYTER_DATA_DIR"]))
    settings_dir = base / "user-settings"
    workspaces_dir = base / "workspaces"
    workspaces_dir.mkdir(parents=True, exist_ok=True)
    _write_user_settings(settings_dir)
    root_dir = base / "root"
    root_dir.mkdir(parents=True, exist_ok=True)
    app = "LabApp" if kind == "lab" else "JupyterNotebookApp"
    token = os.urandom(16).hex()
    log_path = base / f"{kind}-server.log"

    server: JupyterServer | None = None
    for attempt in range(3):  # the port may be taken between _free_port() and the server's bind
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            str(exe),
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root_dir}",
            f"--{app}.user_settings_dir={settings_dir}",
            f"--{app}.workspaces_dir={workspaces_dir}",
            # window.jupyterapp: lets wait_kernel_idle() see the kernel connection itself (the
            # toolbar's indicator says "idle" before any kernel exists).
            f"--{app}.expose_app_in_browser=True",
        ]
        if kind == "lab":
            cmd += [
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            ]
        with open(log_path, "ab") as log:
            log.write(f"\n--- attempt {attempt}: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=root_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,  # a file, not a pipe: no reader thread, and it never fills up
                stderr=subprocess.STDOUT,
            )
        server = JupyterServer(kind, url, token, root_dir, env, log_path, proc)
        try:
            _wait_ready(proc, url, token, SERVER_START_TIMEOUT)
            break
        except Exception as e:
            exited = proc.poll() is not None
            _stop(server)
            if attempt == 2 or not exited:
                raise RuntimeError(f"{kind} server did not start: {e}\n{server.log()}") from e
    assert server is not None
    try:
        yield server
    finally:
        _stop(server)


def _server_fixture(kind: str, request: pytest.FixtureRequest, tmp_path: Path):
    with start_jupyter_server(kind, tmp_path / kind) as server:
        yield server
        if _test_failed(request):  # the server's log holds the kernels' stderr too
            print(f"--- {kind} server log ({server.log_path}), last lines:\n{server.log()}")


def _test_failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)  # set by pytest_runtest_makereport below
    return rep is not None and rep.failed


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(params=sorted(KINDS))
def jupyter_server(request, tmp_path) -> Iterator[JupyterServer]:
    """A fresh server per test; a test using it runs once in JupyterLab ("lab") and once in
    Notebook 7 ("notebook")."""
    yield from _server_fixture(request.param, request, tmp_path)


@pytest.fixture
def lab_server(request, tmp_path) -> Iterator[JupyterServer]:
    """A fresh JupyterLab 4 server."""
    yield from _server_fixture("lab", request, tmp_path)


@pytest.fixture
def nb7_server(request, tmp_path) -> Iterator[JupyterServer]:
    """A fresh Notebook 7 server."""
    yield from _server_fixture("notebook", request, tmp_path)


# ---------------------------------------------------------------------------------------------
# The browser


def _chromium() -> str | None:
    return shutil.which("chromium")


def pytest_collection_modifyitems(config, items):
    """No Chromium and not root: skip every test here up front (before any server starts). As
    root a missing Chromium is an error instead (the `browser` fixture says so): `make test`
    installs it there (`make browser-deps`)."""
    if _chromium() is not None or os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="browser tests need Debian's `chromium` on PATH (apt-get install chromium)"
    )
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(skip)


@pytest.fixture
def browser(tmp_path) -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright (sync API): a persistent context with a fresh
    profile, 1280x900. Uses the system `chromium` (never `playwright install`)."""
    exe = _chromium()
    if exe is None:
        if os.geteuid() != 0:
            pytest.skip("browser tests need Debian's `chromium` on PATH (apt-get install chromium)")
        pytest.fail(  # as root, `make browser-deps` would have installed it
            "`chromium` is not on PATH; `make browser-deps` (part of `make test`) installs it",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    before = {p.pid for p in psutil.Process().children()}
    pw = sync_playwright().start()  # starts Playwright's node driver, which starts Chromium
    drivers = [p for p in psutil.Process().children() if p.pid not in before]
    try:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=exe,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            timeout=60_000,
        )
        try:
            context.set_default_timeout(DEFAULT_UI_TIMEOUT_MS)
            yield context
        finally:
            # Snapshot the driver's process tree first: once the driver exits, Chromium's
            # processes are re-parented and no longer show up as our children.
            tree = drivers + [c for d in drivers for c in _descendants(d.pid)]
            context.close()
    finally:
        pw.stop()
    _reap_or_fail(tree, "Playwright's driver or Chromium outlived the browser's close")


@pytest.fixture
def page(browser, request) -> Iterator[Any]:
    """The browser's page. Collects console errors and page errors in `page.js_errors` (a list
    of strings) and saves `screenshots/FAILED-<test>.png` when the test fails."""
    pg = browser.pages[0] if browser.pages else browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    pg.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    pg.js_errors = errors
    yield pg
    if _test_failed(request):
        with contextlib.suppress(Exception):
            path = screenshot(pg, f"FAILED-{request.node.name}")
            print(f"screenshot of the failed test: {path}")
        if errors:
            print("browser errors:\n  " + "\n  ".join(errors[-20:]))


# ---------------------------------------------------------------------------------------------
# Helpers (they work the same in JupyterLab 4 and Notebook 7: both use the same notebook widget,
# toolbar, execution indicator and Lumino menus). One notebook per page is assumed.

EXECUTION_INDICATOR = ".jp-Notebook-ExecutionIndicator"
INTERRUPT_BUTTON = "jp-button[data-command='notebook:interrupt-kernel']"
RUN_ALL_MENU_ITEM = ".lm-Menu-item[data-command='runmenu:run-all']"  # Run ▸ Run All Cells
CODE_PROMPTS = ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt"


def write_notebook(server: JupyterServer, path: str, cells: list[Any]) -> Path:
    """Write a notebook under the server's root_dir: each cell a code cell's source, or an
    nbformat cell (e.g. nbformat.v4.new_markdown_cell(...)). It names the python3 kernelspec,
    so opening it starts that kernel with no "Select Kernel" dialog."""
    import nbformat

    nb = nbformat.v4.new_notebook(
        cells=[c if isinstance(c, dict) else nbformat.v4.new_code_cell(c) for c in cells]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    full = server.root_dir / path
    full.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, full)
    return full


def notebook_url(server: JupyterServer, path: str) -> str:
    if server.kind == "lab":  # ?reset: no workspace state, so only this notebook is open
        return f"{server.url}/lab/tree/{path}?reset&token={server.token}"
    return f"{server.url}/notebooks/{path}?token={server.token}"


def open_notebook(page: Any, server: JupyterServer, path: str, timeout: float = 60) -> None:
    """Open `path` (relative to the server's root_dir) and wait until its kernel is idle."""
    page.goto(notebook_url(server, path), timeout=timeout * 1000)
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible", timeout=timeout * 1000)
    wait_kernel_idle(page, timeout=timeout)


# True once the notebook's kernel exists, is connected and idle, and the toolbar's execution
# indicator agrees. The indicator alone is not enough: it says "idle" before the kernel starts
# (then "initializing", "connecting", "busy", "idle"). window.jupyterapp exists because the server
# runs with expose_app_in_browser; in Lab and Notebook 7 alike the notebook is the shell's current
# widget (or, failing that, the first main-area widget with a session).
_KERNEL_IDLE_JS = """() => {
    const app = window.jupyterapp;
    if (!app) return false;
    let w = app.shell.currentWidget;
    if (!w || !w.sessionContext) {
        w = Array.from(app.shell.widgets("main")).find(x => x.sessionContext);
    }
    const kernel = w && w.sessionContext.session && w.sessionContext.session.kernel;
    const ind = document.querySelector(".jp-Notebook-ExecutionIndicator");
    return !!kernel && kernel.connectionStatus === "connected" && kernel.status === "idle"
        && !!ind && ind.dataset.status === "idle";
}"""


def wait_kernel_idle(page: Any, timeout: float = 60) -> None:
    """Wait until the notebook's kernel is started, connected and idle."""
    try:
        page.wait_for_function(_KERNEL_IDLE_JS, timeout=timeout * 1000, polling=100)
    except Exception as e:
        state = page.evaluate(
            "() => [...document.querySelectorAll('.jp-Notebook-ExecutionIndicator')]"
            ".map(e => e.dataset.status)"
        )
        raise AssertionError(f"kernel not idle after {timeout} s (indicator: {state})") from e


def run_all(page: Any, kind: str | None = None) -> None:
    """Run ▸ Run All Cells from the menu bar (same menu and command in Lab and Notebook 7;
    `kind` is accepted for symmetry and not needed)."""
    page.locator(".lm-MenuBar-item").filter(has_text=re.compile(r"^\s*Run\s*$")).first.click()
    page.locator(RUN_ALL_MENU_ITEM).click()
    page.locator(".lm-Menu").first.wait_for(state="detached", timeout=5000)


def interrupt(page: Any) -> None:
    """Click the notebook toolbar's ■ (interrupt kernel) button, in Lab and Notebook 7 alike."""
    page.locator(INTERRUPT_BUTTON).first.click()


def prompts(page: Any) -> list[str]:
    """The input prompts of the code cells, e.g. ["[1]:", "[*]:", "[ ]:"]."""
    return [t.strip() for t in page.locator(CODE_PROMPTS).all_inner_texts()]


def wait_all_executed(page: Any, n_cells: int, timeout: float = 60) -> None:
    """Wait until there are `n_cells` code cells and every input prompt shows `[n]`."""
    try:
        page.wait_for_function(
            """([n, sel]) => {
                const ps = [...document.querySelectorAll(sel)].map(p => p.textContent.trim());
                return ps.length === n && ps.every(t => /^\\[\\d+\\]:?$/.test(t));
            }""",
            arg=[n_cells, CODE_PROMPTS],
            timeout=timeout * 1000,
            polling=100,
        )
    except Exception as e:
        raise AssertionError(
            f"not every cell executed after {timeout} s; prompts: {prompts(page)}"
        ) from e


def cell_outputs(page: Any) -> list[str]:
    """The visible output text of each code cell, in order."""
    return page.locator(".jp-Notebook .jp-CodeCell").evaluate_all(
        "cells => cells.map(c => [...c.querySelectorAll('.jp-OutputArea-output')]"
        ".map(o => o.innerText).join('\\n'))"
    )


def screenshot(page: Any, name: str) -> Path:
    """Save a screenshot as tests/browser/screenshots/<name>.png (git-ignored); return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "screenshot"
    path = SCREENSHOTS / f"{safe}.png"
    page.screenshot(path=str(path))
    return path
