"""Cold start of one library, in a fresh interpreter: ``python benchmarks/_cold.py LIB``.

Times importing the library, creating a 2-worker pool and mapping ``sq`` over 2 items, up to the
first result; prints the elapsed seconds (one float). Interpreter start-up itself is not counted
(it is the same for every library); shutting the pool down afterwards is not counted either.
"""

import time

T0 = time.perf_counter()

import sys  # noqa: E402


def main() -> None:
    import _libs
    from _tasks import sq

    runner = _libs.make(sys.argv[1], cold=True)
    runner.start()
    result = runner.map(sq, [2, 3], None)
    elapsed = time.perf_counter() - T0
    if list(result) != [4, 9]:
        raise SystemExit(f"wrong result: {result!r}")
    runner.stop()
    print(repr(elapsed), flush=True)


if __name__ == "__main__":
    main()
