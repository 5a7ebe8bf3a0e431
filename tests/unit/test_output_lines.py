"""How worker bytes become lines: newlines, partial lines and lines redrawn with "\r"."""

from __future__ import annotations

from nbpool._driver.output import LineBuffer


def _texts(events):
    return [(kind, text) for kind, text, _target in events]


def test_whole_lines_and_a_partial_one():
    buf = LineBuffer()
    assert _texts(buf.feed(b"a\nb\npart", None, 1)) == [("line", "a"), ("line", "b")]
    assert buf.partial == b"part" and buf.job_id == 1
    assert _texts(buf.feed(b"ial\n", None, 1)) == [("line", "partial")]
    assert buf.flush() is None


def test_a_redraw_that_ends_with_its_carriage_return_keeps_its_text():
    """`print("10%", end="\r")`, the usual way to draw progress: its text used to be dropped."""
    buf = LineBuffer()
    assert _texts(buf.feed(b"10%\r", None, 1)) == [("rewrite", "10%")]
    assert _texts(buf.feed(b"20%\r", None, 1)) == [("rewrite", "20%")]
    assert len(buf.partial) <= len(b"\r20%\r")  # only the latest redraw is kept
    assert buf.flush() == ("20%", None)


def test_a_redraw_that_starts_with_its_carriage_return():
    buf = LineBuffer()
    assert _texts(buf.feed(b"\r 1/3", None, 1)) == [("rewrite", " 1/3")]
    assert _texts(buf.feed(b"\r 2/3\r 3/3", None, 1)) == [("rewrite", " 3/3")]
    assert _texts(buf.feed(b"\n", None, 1)) == [("line", " 3/3")]
    assert buf.flush() is None


def test_a_long_redrawn_line_does_not_grow_the_buffer():
    buf = LineBuffer()
    for i in range(10_000):
        buf.feed(f"{i}%\r".encode(), None, 1)
    assert len(buf.partial) < 20
    assert buf.flush() == ("9999%", None)
