"""Notebook code that nbpool must run from ``__main__``: a list of cells and what they print.

Used twice: joined into one ``python -c`` script (tests/integration/test_main_code.py) and run
cell by cell in a real Jupyter kernel (tests/ipython/test_kernel_code.py). ``SERIALIZER`` is
substituted before running.
"""

CELLS: list[tuple[str, str]] = [
    (
        "import functools, collections, os, signal\n"
        "import nbpool\n"
        "pool = nbpool.Pool(2, serializer=SERIALIZER)\n"
        "print('started', pool._processes)",
        "started 2",
    ),
    # a plain function defined after the pool was created
    ("def square(x):\n    return x * x\nprint(pool.map(square, range(5)))", "[0, 1, 4, 9, 16]"),
    ("print(pool.map(lambda x: x + 1, [1, 2, 3]))", "[2, 3, 4]"),
    # a closure and a partial of it
    (
        "def make_scaler(k):\n    def scale(x):\n        return k * x\n    return scale\n"
        "print(pool.map(make_scaler(3), [1, 2]), "
        "pool.map(functools.partial(lambda a, b: a - b, 10), [1, 2]))",
        "[3, 6] [9, 8]",
    ),
    # a function redefined in a later cell: the new body runs, no restart
    ("def square(x):\n    return -x\nprint(pool.map(square, range(3)))", "[0, -1, -2]"),
    # a global that changes between calls reaches the workers
    ("K = 1\ndef plus_k(x):\n    return x + K\nprint(pool.map(plus_k, [0, 0]))", "[1, 1]"),
    ("K = 2\nprint(pool.map(plus_k, [0, 0]))", "[2, 2]"),
    # a notebook helper used by a notebook function
    (
        "def helper(x):\n    return x * 100\ndef uses_helper(x):\n    return helper(x) + K\n"
        "print(pool.map(uses_helper, [1]))",
        "[102]",
    ),
    # classes and namedtuples as arguments and as results
    (
        "class Point:\n"
        "    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
        "    def norm1(self):\n        return abs(self.x) + abs(self.y)\n"
        "Pair = collections.namedtuple('Pair', 'a b')\n"
        "def flip(p):\n    return Point(p.y, p.x)\n"
        "out = pool.map(flip, [Point(1, 2), Point(3, 4)])\n"
        "print(all(isinstance(o, Point) for o in out), [(o.x, o.y) for o in out])\n"
        "pairs = pool.map(lambda i: Pair(i, -i), [1, 2])\n"
        "print(all(isinstance(p, Pair) for p in pairs), pairs, pool.map(Point.norm1, out))",
        "True [(2, 1), (4, 3)]\nTrue [Pair(a=1, b=-1), Pair(a=2, b=-2)] [3, 7]",
    ),
    # exception classes defined in the notebook are caught by their own type
    (
        "class NotebookError(Exception):\n    pass\n"
        "def bad(x):\n    if x == 2:\n        raise NotebookError(f'no {x}')\n    return x\n"
        "try:\n    pool.map(bad, range(4))\nexcept NotebookError as e:\n"
        "    print('caught', type(e).__name__, e, 'Worker' in str(e.__cause__))",
        "caught NotebookError no 2 True",
    ),
    # generators as input (map and imap)
    (
        "print(pool.map(square, (i for i in range(4))), list(pool.imap(square, iter([5, 6]))))",
        "[0, -1, -2, -3] [-5, -6]",
    ),
    # the load-a-model-once pattern: the initializer sets a notebook global
    (
        "MODEL = None\n"
        "class Model:\n    def __init__(self, w):\n        self.w = w\n"
        "    def predict(self, x):\n        return self.w * x\n"
        "def load_model(w):\n    global MODEL\n    MODEL = Model(w)\n"
        "def predict(x):\n    return MODEL.predict(x)\n"
        "with nbpool.Pool(2, initializer=load_model, initargs=(5,), serializer=SERIALIZER) as p2:\n"
        "    print(p2.map(predict, [1, 2, 3]), p2.map(predict, [4]))",
        "[5, 10, 15] [20]",
    ),
    # an unpicklable global is named in the error, in the caller, before any worker sees it
    (
        "STREAM = (i for i in range(3))\n"
        "def reads_stream(x):\n    return next(STREAM) + x\n"
        "try:\n    pool.map(reads_stream, [1])\nexcept nbpool.SerializationError as e:\n"
        "    print('refused:', '`STREAM`' in str(e), 'initializer' in str(e))\n"
        "else:\n    print('not refused')",
        "refused: True True",
    ),
    # a worker that dies fails its item, names itself, and the pool stays usable
    (
        "def die(x):\n    if x == 1:\n        os.kill(os.getpid(), signal.SIGKILL)\n    return x\n"
        "it = pool.imap(die, range(3), 1)\nres = [next(it)]\n"
        "try:\n    next(it)\nexcept nbpool.WorkerLostError as e:\n"
        "    print('lost', 'SIGKILL' in str(e), e.exitcode, e.index)\n"
        "res.append(next(it))\nprint(res, pool.map(square, [3]))",
        "lost True -9 1\n[0, 2] [-3]",
    ),
    # lru_cache / cache wrappers of notebook functions (recursive too)
    (
        "@functools.lru_cache(maxsize=64)\ndef cached(x):\n    return x * 2\n"
        "@functools.cache\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "print(pool.map(cached, [1, 2]), pool.map(fib, [10, 20]))",
        "[2, 4] [55, 6765]",
    ),
    # a global deleted in the kernel is gone in the workers too
    (
        "K2 = 7\ndef plus_k2(x):\n    return x + K2\nprint(pool.map(plus_k2, [0, 0], 1))\n"
        "del K2\ntry:\n    pool.map(plus_k2, [0, 0], 1)\nexcept NameError as e:\n"
        "    print('gone:', e)",
        "[7, 7]\ngone: name 'K2' is not defined",
    ),
    # a large array global: out of band, and a change made in place is picked up
    (
        "import numpy as np\nBIG = np.zeros(200_000)\n"
        "def big_at(i):\n    return float(BIG[i])\nprint(pool.map(big_at, [1, 2], 1))\n"
        "BIG[1] = 5.0\nprint(pool.map(big_at, [1, 2], 1))\n"
        "S = 'x' * 100_000\ndef s_len(_):\n    return len(S)\nfirst = pool.map(s_len, [0])\n"
        "S = 'y' * 3\nprint(first, pool.map(s_len, [0]))",
        "[0.0, 0.0]\n[5.0, 0.0]\n[100000] [3]",
    ),
    # sys.exit() in a task does not end the caller
    (
        "def quit_task(x):\n    raise SystemExit(3)\n"
        "try:\n    pool.map(quit_task, [1])\nexcept nbpool.TaskExitError as e:\n"
        "    print('exit wrapped:', type(e.exception).__name__, e.exception.code)",
        "exit wrapped: SystemExit 3",
    ),
    # an exception with an attribute that cannot be pickled keeps its type and says what it lost
    (
        "import threading\n"
        "class LockedError(Exception):\n    pass\n"
        "def locked(x):\n    e = LockedError('with a lock')\n    e.lock = threading.Lock()\n"
        "    e.code = 7\n    raise e\n"
        "try:\n    pool.map(locked, [1])\nexcept LockedError as e:\n"
        "    notes = ' '.join(getattr(e, '__notes__', []))\n"
        "    print('kept:', e, e.code, hasattr(e, 'lock'), 'lock could not be pickled' in notes)",
        "kept: with a lock 7 False True",
    ),
    # an open file as an argument is refused with what to do, not sent as its contents
    (
        "fh = open(os.devnull)\n"
        "try:\n    pool.map(len, [fh])\nexcept Exception as e:\n"
        "    print('file refused:', type(e).__name__, 'pass its path' in str(e))\nfh.close()",
        "file refused: PicklingError True",
    ),
    ("pool.terminate()\nprint('bye')", "bye"),
]
