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
    ("pool.terminate()\nprint('bye')", "bye"),
]
