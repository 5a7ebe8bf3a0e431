"""Which engine a Pool runs on, from its arguments and the environment.

=================================  ==========================================================
``Pool(ray_address="host:port")``  Ray: join the cluster whose head is there (a driver)
``Pool(ray_address="ray://h:p")``  Ray Client (a laptop outside the cluster)
``Pool(ray_address="auto")``       Ray: the head running on this machine
``Pool(ray_address="local")``      Ray: a private Ray instance started for this process
``Pool(backend="ray")``            Ray: the connection ``ray.init(...)`` made, else as above
                                   with ``NBPOOL_ADDRESS`` / ``RAY_ADDRESS``, else "local"
``Pool(backend="local")``          this machine's processes, whatever the environment says
``NBPOOL_ADDRESS`` (read first)    "local", or any ``ray_address`` value above
``RAY_ADDRESS``                    as ``ray_address``
nothing                            this machine's processes
=================================  ==========================================================

Resolution stops at the first that applies, in the order of the table.
"""

from __future__ import annotations

import os

__all__ = ["BACKENDS", "choose"]

BACKENDS = ("local", "ray")


def choose(backend: str | None, ray_address: str | None) -> tuple[str, str | None]:
    """``(engine, address)``: ``("local", None)`` or ``("ray", address or None)``."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, not {backend!r}")
    if ray_address is not None:
        if not isinstance(ray_address, str) or not ray_address:
            raise TypeError(f"ray_address must be a non-empty str, not {ray_address!r}")
        if backend == "local":
            raise ValueError("backend='local' and ray_address= contradict each other")
        return "ray", ray_address
    if backend == "local":
        return "local", None
    env = os.environ.get("NBPOOL_ADDRESS", "").strip()
    source = "NBPOOL_ADDRESS"
    if not env:
        env, source = os.environ.get("RAY_ADDRESS", "").strip(), "RAY_ADDRESS"
    if env == "local" and source == "NBPOOL_ADDRESS":
        return ("ray", None) if backend == "ray" else ("local", None)
    if env:
        if env.startswith(("tcp://", "tls://")):
            raise ValueError(
                f"{source}={env!r} is a Dask scheduler's address; this version of nbpool "
                "runs on Ray or locally. Unset it, or set a Ray head's address"
            )
        return "ray", env
    if backend == "ray":
        return "ray", None
    return "local", None
