"""Cold start of one library, in a fresh interpreter: ``python benchmarks/_cold.py LIB [second]``.

Times importing the library, creating a 2-worker pool and mapping ``sq`` over 2 items, up to the
first result; prints the elapsed seconds (one float). Interpreter start-up itself is not counted
(it is the same for every library); shutting the pool down afterwards is not counted either.

With ``second``: first create a pool, map ``sq`` over 2 items and shut it down (untimed), then
time creating a SECOND pool in the same process up to its first result: the library is imported
and whatever outlives a pool (Ray's local runtime, a forkserver, caches) is already there. With
``later``: the same, with 1 s between the two pools (untimed), as between two cells.
"""

from __future__ import annotations  # (compile time only: nothing runs before T0)

import time

T0 = time.perf_counter()

import sys  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported for real in main(), inside the timing
    import _libs


def first_result(runner: _libs.Adapter) -> float:
    """Start the pool and map sq over 2 items; seconds from ``T0`` to the result (checked)."""
    from _tasks import sq

    runner.start()
    result = runner.map(sq, [2, 3], None)
    elapsed = time.perf_counter() - T0
    if list(result) != [4, 9]:
        raise SystemExit(f"wrong result: {result!r}")
    runner.stop()
    return elapsed


def main() -> None:
    global T0
    import _libs

    lib, mode = sys.argv[1], sys.argv[2:3]
    second = mode in (["second"], ["later"])
    runner = _libs.make(lib, cold=True)
    try:
        if second:
            first_result(runner)
            if mode == ["later"]:
                time.sleep(1.0)  # (as between two cells)
            T0 = time.perf_counter()  # the same adapter: start() makes a new pool each time
        elapsed = first_result(runner)
    finally:
        runner.close()  # a local Ray or Dask's folder: after the timing, never counted
    print(repr(elapsed), flush=True)


if __name__ == "__main__":
    main()
