"""How %%pmap reads its line: options first, then TARGET in EXPR exactly as typed."""

from __future__ import annotations

import pytest

from nbpool._notebook.magic import _split_options, _split_target


@pytest.mark.parametrize(
    ("line", "options", "rest"),
    [
        ('x in ["a", "b"]', [], 'x in ["a", "b"]'),  # quotes survive (shlex would strip them)
        ("-n 2 -o res x in range(3)", ["-n", "2", "-o", "res"], "x in range(3)"),
        (
            "--chunksize 3 --unordered --no-progress a, b in zip('ab', [1, 2])",
            ["--chunksize", "3", "--unordered", "--no-progress"],
            "a, b in zip('ab', [1, 2])",
        ),
        ("--progress s in {'k': 'v'}", ["--progress"], "s in {'k': 'v'}"),
    ],
)
def test_options_then_the_raw_expression(line, options, rest):
    assert _split_options(line) == (options, rest)


def test_target_and_expression():
    assert _split_target('word in ["in", "out"]') == ("word", '["in", "out"]')
    assert _split_target("a, b in pairs") == ("a, b", "pairs")
