"""What the kernel tests share: where the kernels run in this process, and the one closeness check."""

from __future__ import annotations

import pytest
import torch

from marvit.kernels import dispatch

# Where the kernels run in this process: CPU tensors through the interpreter, else CUDA tensors compiled.
KERNEL_DEVICE = "cpu" if dispatch.interpreter_enabled() else "cuda" if torch.cuda.is_available() else None
needs_kernels = pytest.mark.skipif(
    KERNEL_DEVICE is None, reason="no CUDA device and the kernels were not built for the Triton interpreter"
)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """max |actual - expected| <= tol * max(1, max |expected|), computed in fp64."""
    a, e = actual.double(), expected.double()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
    err = (a - e).abs().max().item() if e.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol * scale:.3g}"
