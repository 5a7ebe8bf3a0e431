"""The public API's docstrings: every public name and every public method of the pool and its
result classes has one, with an example, and every ``>>>`` example in them runs.

The docstrings are read from the source (``ast``), as the documentation site reads them
(mkdocstrings, for docs/reference.md): that also covers the names whose docstring is a string
under an assignment (``AsyncResult``, ``RemoteTraceback``, ``__version__``), which have none at
run time. The examples run as doctests against real pools, in a fresh ``__main__`` module with
``nbpool`` imported: as in a notebook, whose cells run in the kernel's ``__main__``, a function
an example defines is shipped to the workers by value, with the globals it reads.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import io
import re
import sys
import types
from pathlib import Path

import pytest

import nbpool
from nbpool._pool import Pool
from nbpool._results import ApplyResult, IMapIterator, IMapUnorderedIterator, MapResult

# The modules whose examples run here: every module that defines a public name.
DOCTEST_MODULES = [
    "nbpool",
    "nbpool._pool",
    "nbpool._results",
    "nbpool._errors",
    "nbpool._mp_errors",
    "nbpool._worker.current",
    "nbpool._worker.refs",
]

CLASSES_WITH_METHODS = [Pool, ApplyResult, MapResult, IMapIterator, IMapUnorderedIterator]

# Public names that need no example, and why.
NO_EXAMPLE = {
    "__version__": "a string",
}

_EXAMPLE_HEADING = re.compile(r"^\s*Examples?:{1,2}\s*$", re.MULTILINE)


def _docstrings(module_name: str) -> dict[str, tuple[str, int]]:
    """``{qualified name: (docstring, line)}`` for a module: the module itself, its classes,
    functions and methods, and its attribute docstrings (a string right under an assignment)."""
    module = importlib.import_module(module_name)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    found: dict[str, tuple[str, int]] = {}
    doc = ast.get_docstring(tree)
    if doc:
        found[module_name] = (doc, 1)

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for i, node in enumerate(body):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    found[f"{prefix}.{node.name}"] = (doc, node.body[0].lineno)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}.{node.name}")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and i + 1 < len(body):
                after = body[i + 1]
                if not (
                    isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                ):
                    continue
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        text = ast.get_docstring(ast.Module(body=[after], type_ignores=[]))
                        found[f"{prefix}.{target.id}"] = (text or "", after.lineno)

    visit(tree.body, module_name)
    return found


def _where(name: str) -> str:
    """The module that defines the public name ``name`` (see nbpool/__init__.py)."""
    return "nbpool" + nbpool._WHERE.get(name, "")


def _public() -> list[str]:
    """Qualified source names of every public name and every public method (or property)
    that the pool and its result classes define."""
    names = [f"{_where(name)}.{name}" for name in nbpool.__all__]
    for cls in CLASSES_WITH_METHODS:
        for attr, member in vars(cls).items():
            if attr.startswith("_") or not (callable(member) or isinstance(member, property)):
                continue
            names.append(f"{cls.__module__}.{cls.__qualname__}.{attr}")
    return names


def _all_docstrings() -> dict[str, tuple[str, int]]:
    modules = {_where(name) for name in nbpool.__all__}
    modules |= {cls.__module__ for cls in CLASSES_WITH_METHODS}
    docs: dict[str, tuple[str, int]] = {}
    for module in sorted(modules):
        docs.update(_docstrings(module))
    return docs


def test_every_public_name_and_method_has_a_docstring():
    docs = _all_docstrings()
    missing = [name for name in _public() if not docs.get(name, ("", 0))[0].strip()]
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_name_and_method_has_an_example():
    docs = _all_docstrings()
    lacking = [
        name
        for name in _public()
        if name.rsplit(".", 1)[-1] not in NO_EXAMPLE
        and not _EXAMPLE_HEADING.search(docs.get(name, ("", 0))[0])
    ]
    assert not lacking, f"public docstrings without an Examples section: {lacking}"


class _PublicNames(doctest.OutputChecker):
    """nbpool's exceptions are defined in private modules and public as ``nbpool.<Name>``: a
    traceback's last line names them the way the examples (and users) do."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        got = re.sub(r"\bnbpool\._(?:errors|mp_errors)\.", "nbpool.", got)
        return super().check_output(want, got, optionflags)


def _examples() -> list[tuple[str, str, str, int]]:
    """``(qualified name, module, docstring, line)`` of each docstring with a ``>>>`` example."""
    cases = []
    for module in DOCTEST_MODULES:
        for name, (doc, line) in sorted(_docstrings(module).items()):
            if ">>>" in doc:
                cases.append((name, module, doc, line))
    return cases


_EXAMPLES = _examples()


def test_the_examples_are_collected():
    # Pool's own, each of its methods', the results' and the errors': not a handful.
    assert len(_EXAMPLES) >= 30, [case[0] for case in _EXAMPLES]


@pytest.mark.parametrize(
    ("name", "module", "doc", "line"), _EXAMPLES, ids=[case[0] for case in _EXAMPLES]
)
def test_example_runs(name: str, module: str, doc: str, line: int, monkeypatch):
    path = importlib.import_module(module).__file__
    main = types.ModuleType("__main__")
    main.nbpool = nbpool  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "__main__", main)
    test = doctest.DocTestParser().get_doctest(doc, {}, name, path, line)
    test.globs = vars(main)  # itself, not the copy DocTest makes: the examples run in __main__
    runner = doctest.DocTestRunner(
        checker=_PublicNames(),
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    out = io.StringIO()
    try:
        result = runner.run(test, out=out.write, clear_globs=False)
    finally:
        # an example that failed half-way may leave its pool running: stop it here
        for value in test.globs.values():
            if isinstance(value, Pool):
                value.terminate()
        test.globs.clear()
    assert result.failed == 0, out.getvalue()
