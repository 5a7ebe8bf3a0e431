"""Which engine a Pool runs on, from its arguments and the environment.

======================================  =====================================================
``Pool(address="tcp://host:port")``     Dask: the scheduler there (``tls://`` too)
``Pool(address=client)``                Dask: a ``distributed.Client`` you made
``Pool(address="ray://h:p")``           as ``ray_address="ray://h:p"``
``Pool(ray_address="host:port")``       Ray: join the cluster whose head is there (a driver)
``Pool(ray_address="ray://h:p")``       Ray Client (a laptop outside the cluster)
``Pool(ray_address="auto")``            Ray: the head running on this machine
``Pool(ray_address="local")``           Ray: a private Ray instance started for this process
``Pool(backend="local")``               this machine's processes, whatever the environment says
``NBPOOL_ADDRESS`` (read first)         "local", a Dask scheduler's or a Ray address
``RAY_ADDRESS``                         as ``ray_address``
``DASK_SCHEDULER_ADDRESS``              as ``address``
``Pool(backend="ray")``                 Ray: the connection ``ray.init(...)`` made, else a
                                        private instance
``Pool(backend="dask")``                Dask: the current ``distributed.Client``
nothing                                 this machine's processes
======================================  =====================================================

Resolution stops at the first that applies, in the order of the table; ``backend="ray"`` or
``"dask"`` only keeps the environment's addresses of that engine.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["BACKENDS", "choose", "engine_of"]

BACKENDS = ("local", "ray", "dask")
_DASK_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")
_ENV = ("NBPOOL_ADDRESS", "RAY_ADDRESS", "DASK_SCHEDULER_ADDRESS")


def engine_of(address: str) -> str:
    """ "dask" for a scheduler's address, "ray" for anything else (a head, ray://, auto)."""
    return "dask" if address.startswith(_DASK_SCHEMES) else "ray"


def choose(backend: str | None, ray_address: str | None, address: Any = None) -> tuple[str, Any]:
    """``(engine, address)``: ``("local", None)``, ``("ray", str | None)`` or
    ``("dask", str | Client | None)``."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, not {backend!r}")
    if address is not None and ray_address is not None:
        raise TypeError("give address= (a Dask scheduler) or ray_address= (a Ray head), not both")
    if address is not None:
        if isinstance(address, str):
            if not address:
                raise TypeError("address must be a non-empty str or a distributed.Client")
            engine = engine_of(address)
            if engine == "ray" and not address.startswith("ray://"):
                raise ValueError(
                    f"address={address!r} is not a Dask scheduler's address ('tcp://host:port' "
                    "or 'tls://host:port'); for a Ray head use ray_address="
                )
        else:
            engine = "dask"  # a Client (checked by the Dask engine)
        _agree(backend, engine, "address=")
        return engine, address
    if ray_address is not None:
        if not isinstance(ray_address, str) or not ray_address:
            raise TypeError(f"ray_address must be a non-empty str, not {ray_address!r}")
        if ray_address.startswith(_DASK_SCHEMES):
            raise ValueError(
                f"ray_address={ray_address!r} is a Dask scheduler's address: use address="
            )
        _agree(backend, "ray", "ray_address=")
        return "ray", ray_address
    if backend == "local":
        return "local", None
    for source in _ENV:
        env = os.environ.get(source, "").strip()
        if not env:
            continue
        if env == "local" and source == "NBPOOL_ADDRESS":
            return (backend, None) if backend in ("ray", "dask") else ("local", None)
        engine = {"RAY_ADDRESS": "ray", "DASK_SCHEDULER_ADDRESS": "dask"}.get(source, "")
        engine = engine or engine_of(env)
        if source == "RAY_ADDRESS" and engine_of(env) == "dask":
            raise ValueError(
                f"RAY_ADDRESS={env!r} is a Dask scheduler's address. Unset it, and set "
                "DASK_SCHEDULER_ADDRESS (or NBPOOL_ADDRESS) to it instead"
            )
        if backend in ("ray", "dask") and engine != backend:
            continue  # backend= names the engine: an address of the other one is not for it
        return engine, env
    if backend in ("ray", "dask"):
        return backend, None
    return "local", None


def _agree(backend: str | None, engine: str, given: str) -> None:
    if backend is not None and backend != engine:
        raise ValueError(f"backend={backend!r} and {given} (a {engine} address) contradict")
