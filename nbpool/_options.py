"""Checks of ``Pool`` arguments and options: the stdlib's exception types, messages that say
what to do. Pure functions, no state."""

from __future__ import annotations

TYPE_CHECKING = False  # no typing import at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any


def check_chunksize(chunksize: int | None) -> None:
    if chunksize is None:
        return
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be a positive int or None, not {chunksize!r}")
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")


def check_initargs_pickle(initargs: tuple[Any, ...]) -> None:
    """Pre-flight: every initarg must pickle, or the pool fails here, naming it."""
    from ._worker.serialize import dumps_data, short_repr

    for i, arg in enumerate(initargs):
        try:
            dumps_data(arg)
        except Exception as exc:
            from ._errors import SerializationError

            raise SerializationError(
                f"initargs[{i}] ({short_repr(arg)}, a {type(arg).__name__}) cannot be pickled: "
                f"{exc}. Create such objects inside the initializer instead."
            ) from exc


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return value


def check_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, not {value}")
    return float(value)


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
}


def parse_bytes(name: str, value: Any) -> int | None:
    """``None``, an int of bytes, or a string such as ``"2GB"`` or ``"512 MiB"``."""
    if value is None:
        return None
    if isinstance(value, str):
        import re

        m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"{name}: cannot read {value!r}; use bytes or e.g. '2GB', '512MiB'")
        value = int(float(m.group(1)) * _UNITS[unit])
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be bytes (int) or a string like '2GB', not {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, not {value}")
    return int(value)


def start_method(context: Any) -> str | None:
    if context is None:
        return None
    if isinstance(context, str):
        return context
    get = getattr(context, "get_start_method", None)
    return get() if callable(get) else None
