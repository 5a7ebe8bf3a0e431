"""A real Jupyter kernel for tests (jupyter_client), isolated from the user's config."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from conftest import ROOT, clean_env, jupyter_dirs


def isolated_env(tmp: str) -> dict[str, str]:
    return clean_env(**jupyter_dirs(tmp))


@contextlib.contextmanager
def kernel(tmp: str) -> Iterator[Any]:
    from jupyter_client.manager import start_new_kernel

    env = isolated_env(tmp)
    # The runtime dir must exist for the connection file, in this process too.
    os.environ.setdefault("JUPYTER_RUNTIME_DIR", env["JUPYTER_RUNTIME_DIR"])
    km, kc = start_new_kernel(kernel_name="python3", cwd=tmp, env=env, startup_timeout=60)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        km.cleanup_resources()


def run_cell(kc: Any, code: str, timeout: float = 60) -> tuple[str, list[dict[str, Any]]]:
    """Execute one cell; return its stdout text and every iopub message it produced."""
    msgs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=msgs.append)
    out = "".join(
        m["content"]["text"]
        for m in msgs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )
    if reply["content"]["status"] != "ok":
        errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
        raise AssertionError(f"cell failed: {reply['content'].get('ename')}: {errors}\n{code}")
    return out, msgs


__all__ = ["ROOT", "isolated_env", "kernel", "run_cell"]
