"""A real Jupyter kernel for tests (jupyter_client), isolated from the user's config."""

from __future__ import annotations

import contextlib
import os
import time
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
        status = reply["content"]["status"]  # "aborted": ipykernel dropped it unrun
        raise AssertionError(
            f"cell failed ({status}): {reply['content'].get('ename')}: {errors}\n{code}"
        )
    return out, msgs


def collect_until_idle(kc: Any, msg_ids: set[str], timeout: float = 30) -> list[dict[str, Any]]:
    """Every iopub message until each of ``msg_ids`` (cells sent with ``kc.execute``) has gone
    idle, whichever cell each message names."""
    msgs: list[dict[str, Any]] = []
    idle: set[str] = set()
    deadline = time.monotonic() + timeout
    while idle != msg_ids:
        assert time.monotonic() < deadline, "cells did not finish"
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        msgs.append(msg)
        parent = msg["parent_header"].get("msg_id")
        state = msg["content"].get("execution_state")
        if msg["msg_type"] == "status" and state == "idle" and parent in msg_ids:
            idle.add(parent)
    return msgs


def drain_iopub(kc: Any, quiet: float = 0.5) -> list[dict[str, Any]]:
    """Every iopub message until none has come for ``quiet`` seconds."""
    import queue

    msgs: list[dict[str, Any]] = []
    while True:
        try:
            msgs.append(kc.get_iopub_msg(timeout=quiet))
        except queue.Empty:
            return msgs


def streams(msgs: list[dict[str, Any]], name: str | None = None) -> list[tuple[str, str]]:
    """(cell msg_id, text) of each stream message (of stream ``name``, if given)."""
    return [
        (m["parent_header"].get("msg_id"), m["content"]["text"])
        for m in msgs
        if m["msg_type"] == "stream" and (name is None or m["content"]["name"] == name)
    ]


__all__ = [
    "ROOT",
    "collect_until_idle",
    "drain_iopub",
    "isolated_env",
    "kernel",
    "run_cell",
    "streams",
]
