"""One dashboard area per cell: a loop of many calls keeps a bounded history."""

from __future__ import annotations

from types import SimpleNamespace

from nbpool._notebook.widget import HISTORY_LINES, CellArea
from nbpool._progress import JobProgress


class _Session:
    """Records the display messages the area sends (here there is no kernel to send to)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, socket, msg_type, content, parent=None, ident=None):
        self.sent.append(msg_type)


def _snap(i: int, state: str) -> dict:
    return {
        "v": 1,
        "title": f"map #{i}",
        "state": state,
        "total": 1,
        "done": 1,
        "failed": 0,
        "elapsed": 0.1,
        "rate": 10.0,
        "eta": None,
        "workers": [],
        "note": "",
    }


def test_a_cell_looping_over_many_calls_keeps_only_the_lines_it_shows():
    kernel = SimpleNamespace(session=_Session(), iopub_socket=None, get_parent=lambda: {})
    area = CellArea((kernel, {"header": {"msg_id": "cell"}}))
    calls = [JobProgress(True, "widget", None, f"map #{i}") for i in range(1000)]
    for i, p in enumerate(calls):
        area.show(p, _snap(i, "running"), final=False)
        area.show(p, _snap(i, "done"), final=True)
    assert len(area.snaps) == len(area.calls) == HISTORY_LINES + 1
    composed = area.widget.snapshot
    assert composed["title"] == "map #999"
    assert [h["title"] for h in composed["history"]] == [f"map #{i}" for i in range(989, 999)]
    assert composed["history_more"] == 1000 - 1 - HISTORY_LINES


def test_a_call_still_running_keeps_its_line():
    kernel = SimpleNamespace(session=_Session(), iopub_socket=None, get_parent=lambda: {})
    area = CellArea((kernel, {"header": {"msg_id": "cell"}}))
    slow = JobProgress(True, "widget", None, "map #slow")
    area.show(slow, _snap(0, "running"), final=False)
    for i in range(1, 50):
        p = JobProgress(True, "widget", None, f"map #{i}")
        area.show(p, _snap(i, "done"), final=True)
    assert slow in area.calls  # it will send more: not forgotten
    area.show(slow, _snap(0, "done"), final=True)
    assert len(area.calls) <= HISTORY_LINES + 1
