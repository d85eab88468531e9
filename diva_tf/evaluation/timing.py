"""Wall-clock accounting of the evaluation steps (for logs and the scale benchmark)."""

from __future__ import annotations

import contextlib
import time


@contextlib.contextmanager
def timed(timings: dict | None, name: str):
    """Add the seconds spent in the block to timings[name] (no-op when timings is None)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
