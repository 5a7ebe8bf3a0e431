"""The errors that are ``multiprocessing.pool``'s own classes (or derive from them), so that
code written for the stdlib pool catches and checks them unchanged. Imported lazily through
``_errors`` (``multiprocessing.pool`` costs ~10 ms to import), when one is first needed."""

from __future__ import annotations

import multiprocessing.pool

from ._errors import SerializationError

# The stdlib's class itself: ``type(exc.__cause__) is multiprocessing.pool.RemoteTraceback``
# holds for an exception re-raised from a worker, as CPython's own Pool tests check. Its
# ``.tb`` is the formatted traceback and ``str()`` prints it.
# (typeshed lacks both; they are in the stdlib since Python 2.7 and 3.4)
RemoteTraceback: type[Exception] = multiprocessing.pool.RemoteTraceback  # type: ignore[attr-defined]
'''The stdlib's ``multiprocessing.pool.RemoteTraceback`` itself: the formatted traceback of an
exception raised in a worker, set as the ``__cause__`` of the exception the caller gets, so
Python prints the worker's traceback above the caller's. ``str()`` and ``.tb`` give the text,
which starts with a line naming the worker, its pid and the item.

Examples:
    >>> def fail(x):
    ...     raise ValueError(f"bad input: {x}")
    >>> with nbpool.Pool(2) as pool:
    ...     try:
    ...         pool.map(fail, [7])
    ...     except ValueError as exc:
    ...         print(type(exc.__cause__).__name__, exc.__cause__)
    RemoteTraceback
    Worker ... (pid ...) raised while running item 0:
    """
    Traceback (most recent call last):
    ...
    ValueError: bad input: 7
    """
'''
MaybeEncodingError: type[Exception] = multiprocessing.pool.MaybeEncodingError  # type: ignore[attr-defined]


class UnpicklableResultError(SerializationError, MaybeEncodingError):  # type: ignore[misc,valid-type]
    """A task's result could not be pickled in its worker. Only that item fails.

    Both a ``SerializationError`` and the stdlib's ``MaybeEncodingError``: ``.exc`` and
    ``.value`` are the reprs of the pickling error and of the result, as there; the message
    names the item and says what to return instead."""

    def __init__(self, message: str, exc: str = "", value: str = "") -> None:
        Exception.__init__(self, message)
        self.exc, self.value = exc, value

    def __str__(self) -> str:
        return str(self.args[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args[0]!r})"

    def __reduce__(self):
        return (type(self), (self.args[0], self.exc, self.value))
