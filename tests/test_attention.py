"""Attention dispatch against plain softmax(QK^T / sqrt(Dh))V, and the reference against a per-head loop."""

from __future__ import annotations

import math

import pytest
import torch

from marvit.kernels import BackendUnavailable, attention, attention_reference, dispatch

SHAPES = [(2, 17, 3, 8, 17), (1, 5, 1, 64, 5), (3, 9, 4, 16, 13)]  # (B, Nq, H, Dh, Nk)


def _qkv(B: int, Nq: int, H: int, Dh: int, Nk: int, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    gen = torch.Generator().manual_seed(B * 1000 + Nq)
    make = lambda n: torch.randn(B, n, H, Dh, generator=gen, dtype=torch.float64).to(device, dtype)
    return make(Nq), make(Nk), make(Nk)


def _loop_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One (batch, head) at a time with explicit matmuls: independent of the einsum reference."""
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            s = q[b, :, h] @ k[b, :, h].T / math.sqrt(q.shape[-1])  # (Nq, Nk)
            p = torch.exp(s - s.max(dim=1, keepdim=True).values)
            out[b, :, h] = (p / p.sum(dim=1, keepdim=True)) @ v[b, :, h]
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_per_head_loop(shape: tuple) -> None:
    q, k, v = _qkv(*shape, dtype=torch.float64)
    torch.testing.assert_close(attention_reference(q, k, v), _loop_attention(q, k, v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "math"])
@pytest.mark.parametrize("shape", SHAPES)
def test_dispatch_matches_reference_output_and_grads(shape: tuple, backend: str) -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(*shape))
    out = attention(q, k, v, backend=backend)
    assert out.shape == q.shape
    q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = _loop_attention(q2, k2, v2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out.backward(gout.float())
    ref.backward(gout)
    for got, want in zip((q, k, v), (q2, k2, v2)):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-5)


def test_auto_picks_sdpa_on_cpu_and_xformers_is_refused_there() -> None:
    assert dispatch.attention_path("cpu", torch.float32) == "sdpa"
    q, k, v = _qkv(*SHAPES[0])
    with pytest.raises(BackendUnavailable, match="xformers"):
        attention(q, k, v, backend="xformers")


def test_dropout_is_applied_only_when_asked() -> None:
    q, k, v = _qkv(*SHAPES[2])
    base = attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v, dropout_p=0.0), base)
    for backend in ("sdpa", "math"):
        torch.manual_seed(0)
        dropped = attention(q, k, v, backend=backend, dropout_p=0.5)
        assert dropped.shape == base.shape and not torch.allclose(dropped, base), backend


@pytest.mark.parametrize(
    "q_shape, k_shape, kwargs, match",
    [
        ((2, 5, 3), (2, 5, 3, 8), {}, "q: expected"),
        ((2, 5, 3, 8), (2, 5, 4, 8), {}, "q: .B, H, Dh."),
        ((2, 5, 3, 8), (2, 5, 3, 8), {"backend": "flash"}, "backend"),
        ((2, 5, 3, 8), (2, 5, 3, 8), {"dropout_p": 1.0}, "dropout_p"),
        ((2, 5, 3, 8), (2, 5, 3, 8), {"dropout_p": -0.1}, "dropout_p"),
    ],
)
def test_bad_arguments(q_shape: tuple, k_shape: tuple, kwargs: dict, match: str) -> None:
    q, k = torch.randn(q_shape), torch.randn(k_shape)
    with pytest.raises(ValueError, match=match):
        attention(q, k, k.clone(), **kwargs)


def test_kv_mismatch_and_dtype_mismatch() -> None:
    q, k, v = _qkv(*SHAPES[0])
    with pytest.raises(ValueError, match="k, v"):
        attention(q, k, v[:, :-1])
    with pytest.raises(ValueError, match="dtype"):
        attention(q, k, v.double())


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("backend", ["auto", "sdpa", "xformers"])
def test_cuda_attention_matches_reference(dtype: torch.dtype, backend: str) -> None:
    if backend == "xformers" and dispatch.xformers_version() is None:
        pytest.skip("xformers is not installed")
    q, k, v = _qkv(2, 197, 12, 64, 197, dtype=dtype, device="cuda")
    out = attention(q, k, v, backend=backend)
    ref = _loop_attention(q.double(), k.double(), v.double())
    tol = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 2e-3}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
