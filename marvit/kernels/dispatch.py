"""The one place that decides which implementation an op runs, per call, from the tensor it gets.

Masked patch embedding:
  - "triton": a CUDA tensor, Triton importable, dtype fp16/bf16/fp32 (bf16 needs sm_80+);
  - "triton-interpreter": a CPU tensor, only when asked for (`backend="triton"`) and only if the kernels
    were built for the interpreter (TRITON_INTERPRET=1 set before marvit.kernels was imported), dtype
    fp32/fp16/fp64 (the interpreter gets bf16 wrong, so bf16 is refused there);
  - "torch": everything else (the gather-then-matmul reference).
`backend="auto"` on a CPU is always "torch": the interpreter runs each program in numpy, there to check
the kernels' numerics, and is orders of magnitude slower than the reference.
Attention:
  - "xformers": a CUDA tensor with xformers importable; "sdpa" otherwise; "math" only when asked.

`backend="auto"` picks as above; naming a backend forces it and raises BackendUnavailable where it
cannot run, so tests and benchmarks know exactly what they measured. Triton's `@triton.jit` reads
TRITON_INTERPRET when a kernel is defined, so whether the interpreter is on is a fact of the imported
kernels (`patch_embed.INTERPRETED`, recorded here by `record_kernels`), not of the environment at call time.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

PATCH_EMBED_BACKENDS = ("auto", "triton", "torch")
ATTENTION_BACKENDS = ("auto", "xformers", "sdpa", "math")
INTERPRETER_DTYPES = (torch.float32, torch.float16, torch.float64)
CUDA_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run for this tensor (device, dtype, or a missing package)."""


@functools.cache
def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # xformers can fail on import for reasons other than ImportError
        return None
    return str(getattr(mod, "__version__", "unknown"))


def triton_version() -> str | None:
    """Triton's version, or None when it cannot be imported."""
    return _version("triton")


def xformers_version() -> str | None:
    """xformers' version, or None when xformers.ops cannot be imported."""
    return _version("xformers") if _version("xformers.ops") is not None else None


# How the Triton kernels were built, as the kernel module reports it (it imports this module; this module
# imports no kernel module). Registered when marvit.kernels is imported, as importing this module does.
_kernels_interpreted: Callable[[], bool] | None = None


def record_kernels(interpreted: Callable[[], bool]) -> None:
    """Called by the kernel module at import: a reader of whether its kernels were built for the interpreter
    (read at call time, so the module's own record stays the one place it is stated)."""
    global _kernels_interpreted
    _kernels_interpreted = interpreted


def interpreter_enabled() -> bool:
    """True when the Triton kernels were built for the interpreter (TRITON_INTERPRET=1 at their import)."""
    if _kernels_interpreted is None:  # cannot happen: importing this module imports marvit.kernels first
        raise RuntimeError("marvit.kernels.patch_embed has not recorded how its kernels were built")
    return _kernels_interpreted()


def interpreter_requested() -> bool:
    """True when TRITON_INTERPRET is set to a true value in the environment right now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def _cuda_triton_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    if triton_version() is None:
        return "triton is not installed"
    if dtype not in CUDA_TRITON_DTYPES:
        return f"dtype {dtype} is not one of fp16/bf16/fp32"
    if dtype == torch.bfloat16 and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"bf16 needs compute capability 8.0+, the device has {major}.x"
    return None


def _cpu_triton_problem(dtype: torch.dtype) -> str | None:
    if triton_version() is None:
        return "triton is not installed"
    if not interpreter_enabled():
        late = (
            " (it is set now, but was not when marvit.kernels was imported)"
            if interpreter_requested()
            else ""
        )
        return (
            f"a CPU tensor needs the Triton interpreter: set TRITON_INTERPRET=1 before importing marvit{late}"
        )
    if dtype not in INTERPRETER_DTYPES:
        return f"the Triton interpreter handles fp32/fp16/fp64, not {dtype}"
    return None


def patch_embed_path(device: torch.device | str, dtype: torch.dtype, backend: str = "auto") -> str:
    """Which masked-patch-embed path a tensor on `device` of `dtype` takes under `backend`.

    Returns "triton", "triton-interpreter" or "torch".
    """
    if backend not in PATCH_EMBED_BACKENDS:
        raise ValueError(f"backend: expected one of {PATCH_EMBED_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    device = _as_device(device)
    if device.type == "cuda":
        problem, path = _cuda_triton_problem(device, dtype), "triton"
    elif device.type == "cpu":
        if backend == "auto":
            return "torch"  # the interpreter is for numerics, never the fast path
        problem, path = _cpu_triton_problem(dtype), "triton-interpreter"
    else:
        problem, path = f"no Triton path for device type {device.type!r}", "triton"
    if problem is None:
        return path
    if backend == "triton":
        raise BackendUnavailable(f"backend='triton' cannot run on {device} with {dtype}: {problem}")
    return "torch"


def attention_path(device: torch.device | str, dtype: torch.dtype, backend: str = "auto") -> str:
    """Which attention path a tensor on `device` of `dtype` takes: "xformers", "sdpa" or "math"."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"backend: expected one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend in ("sdpa", "math"):
        return backend
    device = _as_device(device)
    xformers_ok = device.type == "cuda" and xformers_version() is not None
    if backend == "xformers" and not xformers_ok:
        why = (
            "xformers is not importable (pip install 'marvit[gpu]')"
            if device.type == "cuda"
            else (f"xformers has no kernels for device {device}")
        )
        raise BackendUnavailable(f"backend='xformers' cannot run: {why}")
    return "xformers" if xformers_ok else "sdpa"


def _forced(device: str, dtype: torch.dtype) -> str:
    try:
        return patch_embed_path(device, dtype, "triton")
    except BackendUnavailable as e:
        return f"unavailable: {e}"


def describe() -> dict[str, Any]:
    """What `marvit info` reports: versions, interpreter state, and the path each device would get."""
    return {
        "triton": triton_version(),
        "xformers": xformers_version(),
        "triton_interpret": interpreter_enabled(),
        "cuda_available": torch.cuda.is_available(),
        "patch_embed": {
            "cpu_fp32": patch_embed_path("cpu", torch.float32),
            "cpu_fp32_forced_triton": _forced("cpu", torch.float32),
            "cuda_bf16": patch_embed_path("cuda", torch.bfloat16),
            "cuda_fp32": patch_embed_path("cuda", torch.float32),
        },
        "attention": {
            "cpu": attention_path("cpu", torch.float32),
            "cuda": attention_path("cuda", torch.bfloat16),
        },
    }
