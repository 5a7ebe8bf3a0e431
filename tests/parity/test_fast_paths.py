"""Results are exactly what the function returned, on every engine: types (bools, int
subclasses, ints past 64 bits) and values (``nan``, ``-0.0``, ``inf``), whatever the chunking.
A guard for any fast path of the results (typed arrays were tried for all-int and all-float
chunks, and dropped: no gain here, see docs/performance.md)."""

from __future__ import annotations

import enum
import math

import pytest

import nbpool


class Level(enum.IntEnum):
    LOW = 1


def _exact(got: list, want: list) -> None:
    """Same values and the same types, item by item (``-0.0`` and ``nan`` included)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert type(g) is type(w), (g, w)
        if isinstance(w, float) and math.isnan(w):
            assert math.isnan(g)
        else:
            assert g == w and (
                not isinstance(w, float) or math.copysign(1, g) == math.copysign(1, w)
            )


CASES = {
    "ints": lambda i: i * i - 500_000,
    "int64 limits": lambda i: (2**63 - 1, -(2**63))[i % 2],
    "floats": lambda i: (i / 7, -0.0, math.inf, -math.inf, math.nan)[i % 5],
    "bools stay bools": lambda i: i % 3 == 0,
    "ints and floats": lambda i: i if i % 2 else float(i),
    "an int past 64 bits": lambda i: 2**64 if i == 700 else i,
    "int subclasses": lambda i: Level.LOW if i == 5 else i,
    "None among ints": lambda i: None if i == 999 else i,
}


@pytest.mark.parametrize("case", list(CASES))
def test_results_are_exactly_what_the_function_returned(engine, case):
    fn = CASES[case]
    with nbpool.Pool(2, **engine) as pool:
        for n, chunksize in ((2_000, None), (3_000, 1_500), (100, 10)):
            _exact(pool.map(fn, range(n), chunksize), [fn(i) for i in range(n)])
        _exact(list(pool.imap(fn, range(1_200), 600)), [fn(i) for i in range(1_200)])


def test_a_failed_item_leaves_the_others_exact(engine):
    def half(i):
        if i == 777:
            raise ValueError("777")
        return i / 2

    with nbpool.Pool(2, **engine) as pool:
        it = pool.imap(half, range(2_000), 1_000)
        got = []
        for _ in range(2_000):
            try:
                got.append(next(it))
            except ValueError:
                got.append("failed")
    _exact(got, [i / 2 if i != 777 else "failed" for i in range(2_000)])
