"""IPython magics: ``%load_ext nbpool``, ``%%pmap TARGET in EXPR`` and ``%pool``.

``%%pmap`` turns the cell body into a function of TARGET defined in the notebook's namespace, so
the notebook names it reads are shipped by value (the usual ``__main__`` rule, see
``_worker.serialize``) and the names it assigns stay local to each item; the value of the body's
last
expression is the item's result. It runs on the session pool (``%pool``), started on first use
and reused across cells.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex

from .._progress import await_final_render

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any

# The session pool, and where new ones run (``%pool connect``): Pool keyword arguments.
_SESSION: dict[str, Any] = {"pool": None, "where": {}}

PMAP_USAGE = (
    "usage: %%pmap [-n N] [-o NAME] [--chunksize K] [--unordered] [--reduce FUNC] "
    "[--progress | --no-progress] "
    "TARGET in EXPR   "
    "(e.g. %%pmap x in range(10))"
)
POOL_USAGE = (
    "usage: %pool [show | status | start [-n N] | stop | restart [-n N] | "
    "connect ADDRESS | connect --local]"
)


def _usage_error(message: str) -> Exception:
    from IPython.core.error import UsageError

    return UsageError(message)


def session_pool(processes: int | None = None) -> Any:
    """The session's pool, started on first use (sized to the machine unless ``processes``).

    Asked for another size than the running pool has, it restarts the pool with that size and
    says so (the size is never ignored).
    """
    import nbpool

    if processes is not None and processes < 1:
        raise _usage_error(f"-n must be at least 1 worker, not {processes}")
    pool = _SESSION["pool"]
    if pool is not None and pool._state == "RUN":
        if processes is None or processes == pool._processes:
            return pool
        print(
            f"nbpool: restarting the session pool with {processes} "
            f"worker{'s' if processes != 1 else ''} (it had {pool._processes})"
        )
        _stop_session_pool()
    pool = _SESSION["pool"] = nbpool.Pool(processes, **_SESSION["where"])
    return pool


def _where(address: str) -> dict[str, Any]:
    """``%pool connect`` ARG as Pool keyword arguments."""
    from .._backends import engine_of

    if address == "--local":
        return {"backend": "local"}
    if engine_of(address) == "dask":
        return {"address": address}
    return {"ray_address": address}


def _stop_session_pool() -> bool:
    pool, _SESSION["pool"] = _SESSION["pool"], None
    if pool is None:
        return False
    pool.terminate()
    return True


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print and exit the kernel
        raise _usage_error(f"{message}\n{PMAP_USAGE}")


def _pmap_parser() -> _Parser:
    p = _Parser(prog="%%pmap", add_help=False)
    p.add_argument("-n", type=int, dest="processes")
    p.add_argument("-o", dest="output")
    p.add_argument("--chunksize", type=int)
    p.add_argument("--unordered", action="store_true")
    p.add_argument("--reduce", dest="reduce")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    return p


_TAKES_VALUE = {"-n", "-o", "--chunksize", "--reduce"}
_WORD = re.compile(r"\s*(\S+)")


def _split_options(line: str) -> tuple[list[str], str]:
    """Options first, then ``TARGET in EXPR`` exactly as typed: shlex would strip the quotes
    out of ``x in ["a", "b"]``, so only the leading option words are split off."""
    words: list[str] = []
    pos = 0
    while True:
        m = _WORD.match(line, pos)
        if m is None or not m.group(1).startswith("-"):
            break
        word = m.group(1)
        words.append(word)
        pos = m.end()
        if word in _TAKES_VALUE:
            v = _WORD.match(line, pos)
            if v is None:
                break  # argparse says what is missing
            words.append(v.group(1))
            pos = v.end()
    return words, line[pos:].strip()


def _split_target(text: str) -> tuple[str, str]:
    """``"a, b in pairs"`` -> ``("a, b", "pairs")``: the first `` in `` that parses as a target."""
    parts = text.split(" in ")
    for i in range(1, len(parts)):
        target, expr = " in ".join(parts[:i]).strip(), " in ".join(parts[i:]).strip()
        try:
            node = ast.parse(f"for {target} in _: pass").body[0]
        except SyntaxError:
            continue
        if isinstance(node, ast.For) and expr:
            return target, expr
    raise _usage_error(f"%%pmap needs `TARGET in EXPR`, got {text!r}\n{PMAP_USAGE}")


def _cell_file(shell: Any, line: str, body: str) -> str | None:
    """A file name for the body, shown as IPython shows the running cell (``Cell In[N]``).

    IPython's own entry for the cell holds its transformed code (one
    ``get_ipython().run_cell_magic(...)`` line), so the cell as typed is put in linecache
    under a name of its own, mapped to the running cell's number (the newest compiled cell).
    """
    import linecache

    try:
        names = shell.compile._filename_map
        count = names[next(reversed(names))]
    except Exception:
        return None
    filename = f"<%%pmap cell {count}-{len(linecache.cache)}>"
    lines = [f"%%pmap {line}\n", *body.splitlines(True)]
    linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    names[filename] = count
    return filename


def _cell_function(
    target: str, body: str, ns: dict[str, Any], shell: Any = None, line: str = ""
) -> Any:
    """Compile the body into ``def f(item): TARGET = item; ...; return <last expression>``.

    The body is transformed as IPython transforms a cell (``!cmd``, ``%time``: see
    ``_worker.ipyshim``), and compiled with the cell's line numbers under a file name IPython shows
    as
    the cell's, so a traceback from a worker shows ``Cell In[N], line K`` and the line as typed.
    """
    source = body
    if shell is not None:
        try:
            source = shell.transform_cell(body)
        except Exception:
            source = body
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        lines = body.splitlines()
        text = lines[exc.lineno - 1].strip() if exc.lineno and exc.lineno <= len(lines) else ""
        where = f"line {(exc.lineno or 0) + 1} of the cell" + (f" ({text!r})" if text else "")
        raise _usage_error(f"%%pmap cell body, {where}: {exc.msg}") from None
    stmts = tree.body or [ast.Pass()]
    if isinstance(stmts[-1], ast.Expr):
        stmts[-1] = ast.Return(stmts[-1].value)
    uses_ipython = any(isinstance(n, ast.Name) and n.id == "get_ipython" for n in ast.walk(tree))
    unpack = ast.parse(f"{target} = __nbpool_item").body
    # A parsed stub, not an ast.FunctionDef built by hand: its fields differ across Pythons.
    # `get_ipython` becomes a parameter with the worker-side shim as its default, so the body
    # never reads the kernel's shell (which cannot be pickled).
    extra = ", get_ipython=__nbpool_get_ipython" if uses_ipython else ""
    module = ast.parse(f"def pmap_cell(__nbpool_item{extra}):\n    pass\n")
    fn = module.body[0]
    assert isinstance(fn, ast.FunctionDef)
    fn.body = [*unpack, *stmts]
    ast.fix_missing_locations(module)
    filename = _cell_file(shell, line, body) if shell is not None else None
    if filename is not None:
        ast.increment_lineno(module, 1)  # the body starts on the cell's second line
    else:
        filename = "<%%pmap cell>"
    scope: dict[str, Any] = {}
    if uses_ipython:
        from .._worker.ipyshim import get_ipython

        scope["__nbpool_get_ipython"] = get_ipython
    # Defined over the notebook namespace: a __main__ function, shipped by value with the
    # notebook globals it reads; its own assignments are locals, one set per item.
    exec(compile(module, filename, "exec"), ns, scope)
    return scope["pmap_cell"]


_LOCAL_SCOPE_HINT = (
    "In a %%pmap body every name you assign is local to the item, as in a function: `{name}` "
    "is assigned in the body, so there it no longer reads the notebook's `{name}`. Give the "
    "result another name (e.g. `y = {name} + x`)."
)


def _explain_unbound(exc: BaseException, ns: dict[str, Any]) -> None:
    """Add the %%pmap scoping rule to an UnboundLocalError about a notebook global."""
    if not isinstance(exc, UnboundLocalError):
        return
    m = re.search(r"variable '(\w+)'", str(exc))
    if m is None or m.group(1) not in ns:
        return
    note = _LOCAL_SCOPE_HINT.format(name=m.group(1))
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]


def pmap(line: str, cell: str, ns: dict[str, Any], shell: Any = None) -> Any:
    __tracebackhide__ = True  # IPython shows the item's error, not the magic's frames
    options, rest = _split_options(line)
    args = _pmap_parser().parse_args(options)
    target, expr = _split_target(rest)
    try:
        items = list(eval(expr, ns))
    except Exception as exc:
        msg = f"%%pmap: evaluating {expr!r} failed: {type(exc).__name__}: {exc}"
        raise _usage_error(msg) from None
    fn = _cell_function(target, cell, ns, shell, line)
    pool = session_pool(args.processes)
    if args.reduce is not None:
        return _pmap_reduce(pool, fn, items, args, ns)
    imap = pool.imap_unordered if args.unordered else pool.imap
    it = imap(fn, items, args.chunksize, progress=args.progress)
    # imap, not map: one failing item must not lose the others' results. Failed items hold their
    # exception in the results; the first failure is raised after all items are done.
    results: list[Any] = []
    first_error: BaseException | None = None
    while True:
        try:
            results.append(next(it))
        except StopIteration:
            break
        except Exception as exc:
            results.append(exc)
            first_error = first_error or exc
    await_final_render(it._progress)  # the final dashboard belongs in this cell's output
    name = args.output or "_pmap"
    ns[name] = results
    if first_error is not None:
        failed = sum(isinstance(r, BaseException) for r in results)
        print(
            f"%%pmap: {failed} of {len(results)} items failed; all results, with the exception "
            f"in place of each failed item, are in `{name}`"
        )
        _explain_unbound(first_error, ns)
        raise first_error
    return None if args.output else results


def _pmap_reduce(pool: Any, fn: Any, items: list[Any], args: Any, ns: dict[str, Any]) -> Any:
    """``%%pmap --reduce FUNC``: the cell's values folded with FUNC (a name or dotted name in
    the notebook, e.g. ``operator.add``, ``max``, or a function of yours), by ``map_reduce``."""
    __tracebackhide__ = True
    try:
        reducer = eval(args.reduce, ns)
    except Exception as exc:
        msg = f"%%pmap --reduce: evaluating {args.reduce!r} failed: {type(exc).__name__}: {exc}"
        raise _usage_error(msg) from None
    if not callable(reducer):
        raise _usage_error(f"%%pmap --reduce {args.reduce}: not a function of two values")
    value = pool.map_reduce(fn, items, reducer, chunksize=args.chunksize, progress=args.progress)
    if args.output:
        ns[args.output] = value
        return None
    ns["_pmap"] = value
    return value


def pool_magic(line: str) -> Any:
    words = shlex.split(line)
    cmd = words[0] if words else "show"
    n = None
    if len(words) == 3 and words[1] == "-n" and cmd in ("start", "restart"):
        try:
            n = int(words[2])
        except ValueError:
            msg = f"-n takes a number of workers, not {words[2]!r}\n{POOL_USAGE}"
            raise _usage_error(msg) from None
        if n < 1:
            raise _usage_error(f"-n must be at least 1 worker, not {n}\n{POOL_USAGE}")
    elif cmd == "connect":
        if len(words) != 2:
            raise _usage_error(f"%pool connect takes one address, or --local\n{POOL_USAGE}")
        target = _where(words[1])
        _stop_session_pool()
        _SESSION["where"] = target
        try:
            session_pool()
        except BaseException:
            _SESSION["where"] = {}  # a failed connect leaves the session on this machine
            raise
        return pool_magic("status")
    elif len(words) > 1:
        raise _usage_error(POOL_USAGE)
    if cmd == "show":
        from .._driver.output import notebook_target

        if notebook_target() is None:  # a terminal IPython: the status line instead
            return pool_magic("status")
        session_pool().dashboard()
        return None
    if cmd == "status":
        pool = _SESSION["pool"]
        if pool is None or pool._state != "RUN":
            return "nbpool session pool: not started (it starts on first %%pmap, or %pool start)"
        name = {"ray": "Ray", "dask": "Dask"}.get(pool.backend, pool.backend)
        on = (
            "this machine" if pool.backend == "local" else f"{name} ({pool.address or 'connected'})"
        )
        return (
            f"nbpool session pool: {pool._processes} workers on {on}, "
            f"pids {' '.join(map(str, pool._engine.worker_pids()))}"
        )
    if cmd == "start":
        session_pool(n)
        return pool_magic("status")
    if cmd == "stop":
        return "stopped" if _stop_session_pool() else "no session pool was running"
    if cmd == "restart":
        _stop_session_pool()
        session_pool(n)
        return pool_magic("status")
    raise _usage_error(POOL_USAGE)


def load_ipython_extension(ip: Any) -> None:
    def _pmap(line: str, cell: str) -> Any:
        __tracebackhide__ = True
        return pmap(line, cell, ip.user_ns, ip)

    def _pool(line: str) -> Any:
        out = pool_magic(line)
        if out is not None:
            print(out)

    ip.register_magic_function(_pmap, magic_kind="cell", magic_name="pmap")
    ip.register_magic_function(_pool, magic_kind="line", magic_name="pool")
