"""Multi-head attention over (B, N, H, Dh) tensors, with the fast path chosen by dispatch.py.

softmax(Q K^T / sqrt(Dh)) V per head. On CUDA with xformers installed this is
`xformers.ops.memory_efficient_attention`, which takes the (B, N, H, Dh) layout as is; otherwise it is
PyTorch's scaled_dot_product_attention on the (B, H, N, Dh) transpose (flash / memory-efficient /
math kernels chosen by PyTorch). `attention_reference` is the plain-math twin the tests hold both to.

`packed_attention` is the block-diagonal variant for packed variable-length batches (M, H, Dh), clip i
owning rows cu_seqlens[i]:cu_seqlens[i + 1]: xformers' `BlockDiagonalMask` on CUDA; on a CPU, SDPA once
per clip (measured 3-6x faster than SDPA on jagged nested tensors here, see docs/static.md);
`packed_attention_reference` runs the plain-math attention clip by clip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from marvit.kernels import dispatch


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name}: expected a (B, N, H, Dh) tensor, got {getattr(t, 'shape', type(t))}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k, v: (B, N, H) must match, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q: (B, H, Dh) must match k's, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k, v: dtype/device differ: {q.dtype}/{k.dtype}/{v.dtype}, {q.device}/{k.device}/{v.device}"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected a probability in [0, 1), got {dropout_p}")


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """Plain softmax(Q K^T / sqrt(Dh)) V. q (B, Nq, H, Dh), k/v (B, Nk, H, Dh) -> (B, Nq, H, Dh)."""
    _check_qkv(q, k, v, dropout_p)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])  # (B, H, Nq, Nk)
    probs = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)  # (B, Nq, H, Dh)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto", dropout_p: float = 0.0
) -> torch.Tensor:
    """Attention on (B, N, H, Dh) -> (B, N, H, Dh). The caller passes dropout_p=0 in eval mode.

    backend: "auto" (xformers on CUDA when installed, else SDPA), "xformers", "sdpa" or "math" (the
    reference). The result may be a non-contiguous view; reshape it to (B, N, H * Dh).
    """
    path = dispatch.attention_path(q.device, q.dtype, backend)
    if path == "math":
        return attention_reference(q, k, v, dropout_p)
    _check_qkv(q, k, v, dropout_p)
    if path == "xformers":
        import xformers.ops as xops

        return xops.memory_efficient_attention(q, k, v, p=dropout_p)  # (B, N, H, Dh)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p
    )
    return out.transpose(1, 2)  # (B, H, N, Dh) -> (B, N, H, Dh)


def _split(x: torch.Tensor, lengths: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    return torch.split(x, list(lengths), dim=0)


def _check_packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...]) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(
                f"{name}: expected a packed (M, H, Dh) tensor, got {getattr(t, 'shape', type(t))}"
            )
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v: shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if sum(lengths) != q.shape[0]:
        raise ValueError(f"lengths: sum {sum(lengths)} != M={q.shape[0]} packed rows")


def packed_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...], dropout_p: float = 0.0
) -> torch.Tensor:
    """Plain-math attention within each clip: q, k, v (M, H, Dh) packed -> (M, H, Dh)."""
    _check_packed(q, k, v, lengths)
    parts = [
        attention_reference(qi[None], ki[None], vi[None], dropout_p)[0]
        for qi, ki, vi in zip(_split(q, lengths), _split(k, lengths), _split(v, lengths))
    ]
    return torch.cat(parts) if parts else q.clone()


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: tuple[int, ...],
    backend: str = "auto",
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Block-diagonal attention over a packed batch: q, k, v (M, H, Dh), ``lengths`` the rows of each clip
    (host ints, in order) -> (M, H, Dh). No token attends across clips.

    backend as for :func:`attention`: "auto" (xformers' BlockDiagonalMask on CUDA when installed, else SDPA
    per clip), "xformers", "sdpa" or "math" (the reference).
    """
    path = dispatch.attention_path(q.device, q.dtype, backend)
    if path == "math":
        return packed_attention_reference(q, k, v, lengths, dropout_p)
    _check_packed(q, k, v, lengths)
    if path == "xformers":
        import xformers.ops as xops
        from xformers.ops.fmha.attn_bias import BlockDiagonalMask

        bias = BlockDiagonalMask.from_seqlens(list(lengths))  # one (1, M) sequence, block-diagonal
        return xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias, p=dropout_p)[0]
    parts = [  # SDPA once per clip on the (H, N_i, Dh) transpose; an empty clip has no rows to attend
        F.scaled_dot_product_attention(
            qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1), dropout_p=dropout_p
        ).transpose(0, 1)
        for qi, ki, vi in zip(_split(q, lengths), _split(k, lengths), _split(v, lengths))
        if qi.shape[0] > 0
    ]
    return torch.cat(parts) if parts else q.clone()
