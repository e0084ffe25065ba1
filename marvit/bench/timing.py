"""The one timer of the benchmarks: wall-clock milliseconds with explicit device syncs, and the spread.

A CUDA kernel launch returns before the kernel ends, so every timed region syncs the device before it
starts and after it ends (gpt-fast style); on a CPU the syncs are no-ops.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock milliseconds of ``fn()`` with device syncs before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def spread(ms: list[float]) -> dict[str, float]:
    """Median, min, max and quartiles of a list of times."""
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "q1": q[0], "q3": q[2],
            "n": len(ms)}  # fmt: skip
