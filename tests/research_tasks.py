"""Task functions for tests/test_research.py: cheap, and some that misbehave on purpose (they run
in worker processes, so they live in a module the workers can import)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def square(spec: dict, shared: dict) -> dict:
    """x^2 + the shared offset, with the thread counts the task ran under, and misbehaviour on
    request: ``die_once`` (a marker path: SIGKILL its own process the first time),
    ``always_die`` (SIGKILL every time), ``fail`` (raise)."""
    from threadpoolctl import threadpool_info

    from numpyconvnext import threads

    if spec.get("die_once") and not Path(spec["die_once"]).exists():
        Path(spec["die_once"]).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.get("always_die"):
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.get("fail"):
        raise ValueError(f"task {spec['x']} fails on purpose")
    blas = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
    return {"value": spec["x"] ** 2 + shared["offset"], "threads": threads.get_num_threads(),
            "blas_threads": max(blas) if blas else 1}
