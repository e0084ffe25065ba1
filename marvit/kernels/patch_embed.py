"""Masked patch embedding: read only the visible tubelets of a clip, project them, add their positions.

The standard scheme runs Conv3d(kernel=stride=(t, p, p)) over the whole clip, flattens the token grid
(t-major, then h, then w) and only then drops the masked tokens. With a cell running mask half or more
of that work and traffic is thrown away. Here the patch embedding is written as a GEMM over the visible
tokens only:

    out[b, m, :] = W @ vec(video[b, :, tubelet(idx[b, m])]) + bias + pos[idx[b, m]]      # (D,)

where W is the Conv3d weight viewed as (D, K), K = C * t * p * p, flattened (c, dt, dy, dx) exactly as
Conv3d lays it out. The Triton forward kernel gives each program a (BLOCK_M tokens x BLOCK_N channels)
tile: it turns each token index into its tubelet's base address, walks K in BLOCK_K steps, decoding
every k into a (c, dt, dy, dx) pixel offset so the A tile is a strided load straight from the video
(no patch tensor is ever materialized), accumulates in fp32 with tl.dot and adds bias and positional
embedding before the single store. The backward has two kernels of the same shape: grad W is a GEMM
whose reduction runs over all B * N_vis visible tokens (reading pixels the same way), grad video is
grad_out @ W scattered back to the visible tubelets (indices are unique per clip, so plain stores).

Kernels are plain Python functions wrapped on first use: as `triton.jit` (+ autotune) for CUDA tensors
and as the Triton interpreter for CPU tensors. Wrapping at call time, not at import time, means the
interpreter is chosen by `TRITON_INTERPRET=1` when the op runs (see dispatch.py) regardless of who
imported this module (or triton) first. For the same reason the kernels use only `tl` builtins, never
the @jit helpers of triton.language.standard (tl.zeros, tl.cdiv, ...): those are wrapped when triton
is imported and cannot run in the interpreter if TRITON_INTERPRET was unset then.

`masked_patch_embed_reference` (gather visible tubelets, then one matmul) is the PyTorch twin and the
CPU path; `standard_patch_embed` (Conv3d over the whole clip, then gather) is the standard scheme.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from marvit.kernels import dispatch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a Linux dependency
    triton = None
    tl = None


# ---------------------------------------------------------------------------------------------------
# Argument checks (host-side; value checks only where they cost no device sync)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    B: int
    C: int
    D: int
    tt: int  # tubelet length (frames)
    ph: int  # patch height
    pw: int  # patch width
    Tn: int  # token grid (Tn, Hn, Wn)
    Hn: int
    Wn: int
    N: int  # all tokens, Tn * Hn * Wn
    N_vis: int  # visible tokens per clip
    K: int  # C * tt * ph * pw


def _check_args(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
    check_indices: bool | None,
) -> tuple[_Geometry, torch.Tensor | None]:
    """Validate shapes/dtypes (and index values where cheap); return the geometry and pos as (N, D)."""
    if not isinstance(video, torch.Tensor) or video.dim() != 5:
        raise ValueError(f"video: expected a (B, C, T, H, W) tensor, got {_shape(video)}")
    if not video.is_floating_point():
        raise ValueError(f"video: expected a floating dtype, got {video.dtype}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5:
        raise ValueError(f"weight: expected a Conv3d weight (D, C, t, p, p), got {_shape(weight)}")
    if weight.dtype != video.dtype:
        raise ValueError(f"weight: dtype {weight.dtype} does not match video dtype {video.dtype}")
    B, C, T, H, W = video.shape
    D, Cw, tt, ph, pw = weight.shape
    if Cw != C:
        raise ValueError(
            f"weight: has {Cw} input channels but video has C={C} (video shape {tuple(video.shape)})"
        )
    if T % tt or H % ph or W % pw:
        raise ValueError(
            f"video: clip size (T, H, W)=({T}, {H}, {W}) is not divisible by the tubelet "
            f"(t, p, p)=({tt}, {ph}, {pw})"
        )
    Tn, Hn, Wn = T // tt, H // ph, W // pw
    N = Tn * Hn * Wn
    for name, t in (
        ("weight", weight),
        ("bias", bias),
        ("pos_embed", pos_embed),
        ("visible_idx", visible_idx),
    ):
        if t is not None and t.device != video.device:
            raise ValueError(f"{name}: on device {t.device} but video is on {video.device}")
    if bias is not None and (bias.shape != (D,) or not bias.is_floating_point()):
        raise ValueError(f"bias: expected a floating ({D},) tensor, got {_shape(bias)} {bias.dtype}")
    if pos_embed is not None:
        if pos_embed.dim() == 3 and pos_embed.shape[0] == 1:
            pos_embed = pos_embed[0]  # accept the VideoMAE-style (1, N, D) buffer
        if pos_embed.shape != (N, D) or not pos_embed.is_floating_point():
            raise ValueError(
                f"pos_embed: expected a floating (N, D)=({N}, {D}) tensor, got {_shape(pos_embed)}"
            )
    if visible_idx is None:
        N_vis = N
    else:
        if visible_idx.dim() != 2 or visible_idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"visible_idx: expected a (B, N_vis) int64/int32 tensor, "
                f"got {_shape(visible_idx)} {visible_idx.dtype}"
            )
        if visible_idx.shape[0] != B:
            raise ValueError(f"visible_idx: batch {visible_idx.shape[0]} does not match video batch B={B}")
        N_vis = visible_idx.shape[1]
        if N_vis > N:
            raise ValueError(f"visible_idx: {N_vis} indices per clip but the clip has only N={N} tokens")
        if check_indices is None:
            check_indices = visible_idx.device.type == "cpu"  # on CUDA a value check would sync the host
        if check_indices and N_vis > 0:
            lo, hi = int(visible_idx.min()), int(visible_idx.max())
            if lo < 0 or hi >= N:
                raise ValueError(f"visible_idx: values must lie in [0, {N}), got min {lo} and max {hi}")
            if N_vis > 1 and not bool((visible_idx[:, 1:] > visible_idx[:, :-1]).all()):
                raise ValueError("visible_idx: each row must be strictly increasing (sorted, no repeats)")
    geom = _Geometry(B, C, D, tt, ph, pw, Tn, Hn, Wn, N, N_vis, C * tt * ph * pw)
    return geom, pos_embed


def _shape(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"


# ---------------------------------------------------------------------------------------------------
# PyTorch paths: the reference (gather, then matmul) and the standard scheme (Conv3d, then gather)
# ---------------------------------------------------------------------------------------------------


def masked_patch_embed_reference(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
    check_indices: bool | None = None,
) -> torch.Tensor:
    """Gather the visible tubelets, then one matmul. The plain twin of the Triton kernel; the CPU path.

    video (B, C, T, H, W), visible_idx (B, N_vis) sorted or None (all tokens), weight (D, C, t, p, p),
    bias (D,) or None, pos_embed (N, D) or None. Returns (B, N_vis, D) in video's dtype.
    """
    g, pos = _check_args(video, visible_idx, weight, bias, pos_embed, check_indices)
    return _reference(video, visible_idx, weight, bias, pos, g)


def _reference(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor | None,
    g: _Geometry,
) -> torch.Tensor:
    # A view: (B, Tn, Hn, Wn, C, t, ph, pw); nothing is copied until the gather below.
    x = rearrange(video, "b c (tn t) (hn h) (wn w) -> b tn hn wn c t h w", t=g.tt, h=g.ph, w=g.pw)
    if visible_idx is None:
        patches = x.reshape(g.B, g.N, g.K)  # (B, N, K)
    else:
        idx = visible_idx.long()
        ti, hw = idx.div(g.Hn * g.Wn, rounding_mode="floor"), idx.remainder(g.Hn * g.Wn)
        hi, wi = hw.div(g.Wn, rounding_mode="floor"), hw.remainder(g.Wn)
        bi = torch.arange(g.B, device=video.device)[:, None]
        patches = x[bi, ti, hi, wi].reshape(g.B, g.N_vis, g.K)  # (B, N_vis, K): visible tubelets only
    out = F.linear(patches, weight.reshape(g.D, g.K), None if bias is None else bias.to(weight.dtype))
    if pos is not None:
        out = out + (pos if visible_idx is None else pos[visible_idx.long()]).to(out.dtype)  # (B, N_vis, D)
    return out


def standard_patch_embed(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
) -> torch.Tensor:
    """The standard scheme: Conv3d over the whole clip, flatten (t, h, w), then gather the visible rows."""
    g, pos = _check_args(video, visible_idx, weight, bias, pos_embed, None)
    x = F.conv3d(video, weight, None if bias is None else bias.to(weight.dtype), stride=(g.tt, g.ph, g.pw))
    x = x.flatten(2).transpose(1, 2)  # (B, N, D)
    if pos is not None:
        x = x + pos.to(x.dtype)
    if visible_idx is not None:
        x = torch.gather(x, 1, visible_idx.long()[..., None].expand(-1, -1, g.D))  # (B, N_vis, D)
    return x


# ---------------------------------------------------------------------------------------------------
# Triton kernels (plain functions; wrapped as jit or interpreter on first use, see _kernel below)
# ---------------------------------------------------------------------------------------------------


def _fwd_kernel(
    video_ptr, idx_ptr, w_ptr, bias_ptr, pos_ptr, out_ptr,
    N_VIS, D, K, HN, WN,
    s_vb, s_vc, s_vt, s_vh, s_vw, s_ib, s_in,
    TT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_IDX: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) token rows of this clip
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output channels
    mask_m = offs_m < N_VIS
    mask_n = offs_n < D
    if HAS_IDX:
        tok = tl.load(idx_ptr + b * s_ib + offs_m * s_in, mask=mask_m, other=0).to(tl.int64)
    else:
        tok = offs_m.to(tl.int64)
    # token index -> tubelet origin (t-major, then h, then w)
    ti = tok // (HN * WN)
    hw = tok % (HN * WN)
    row_off = b * s_vb + ti * (TT * s_vt) + (hw // WN) * (PH * s_vh) + (hw % WN) * (PW * s_vw)  # (BLOCK_M,)

    if ACC_FP64:  # fp64 only runs in the interpreter (gradcheck); GPUs accumulate fp16/bf16/fp32 in fp32
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float64)
    else:
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,) flattened (c, dt, dy, dx) as in the Conv3d weight
        mask_k = offs_k < K
        c = offs_k // (TT * PH * PW)
        r = offs_k % (TT * PH * PW)
        dy = (r % (PH * PW)) // PW
        col_off = c * s_vc + (r // (PH * PW)) * s_vt + dy * s_vh + (r % PW) * s_vw  # (BLOCK_K,)
        a = tl.load(
            video_ptr + row_off[:, None] + col_off[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0
        )  # (BLOCK_M, BLOCK_K) pixels of the visible tubelets
        w = tl.load(
            w_ptr + offs_n[None, :] * K + offs_k[:, None], mask=mask_k[:, None] & mask_n[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_N) = W^T tile
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(acc.dtype)[None, :]
    mask_mn = mask_m[:, None] & mask_n[None, :]
    if HAS_POS:
        acc += tl.load(pos_ptr + tok[:, None] * D + offs_n[None, :], mask=mask_mn, other=0.0).to(acc.dtype)
    out_rows = b * N_VIS + offs_m  # (BLOCK_M,) rows of the contiguous (B * N_vis, D) output
    tl.store(
        out_ptr + out_rows[:, None] * D + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask_mn
    )


def _grad_weight_kernel(
    video_ptr, idx_ptr, gout_ptr, gw_ptr,
    M_TOTAL, N_VIS, D, K, HN, WN,
    s_vb, s_vc, s_vt, s_vh, s_vw, s_ib, s_in,
    TT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_IDX: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # grad W^T[k, d] = sum over all visible tokens r of pixels[r, k] * grad_out[r, d]; each program owns a
    # (BLOCK_K x BLOCK_N) tile of grad W and reduces over the B * N_vis tokens in BLOCK_M steps.
    pid_k = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_k = offs_k < K
    mask_n = offs_n < D
    c = offs_k // (TT * PH * PW)
    r = offs_k % (TT * PH * PW)
    dy = (r % (PH * PW)) // PW
    col_off = c * s_vc + (r // (PH * PW)) * s_vt + dy * s_vh + (r % PW) * s_vw  # (BLOCK_K,)

    if ACC_FP64:  # fp64 only runs in the interpreter (gradcheck); GPUs accumulate fp16/bf16/fp32 in fp32
        acc = tl.full((BLOCK_K, BLOCK_N), 0.0, tl.float64)
    else:
        acc = tl.full((BLOCK_K, BLOCK_N), 0.0, tl.float32)
    for r0 in range(0, M_TOTAL, BLOCK_M):
        offs_r = r0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) rows of the flattened (B * N_vis) tokens
        mask_r = offs_r < M_TOTAL
        b = (offs_r // N_VIS).to(tl.int64)
        m = offs_r % N_VIS
        if HAS_IDX:
            tok = tl.load(idx_ptr + b * s_ib + m * s_in, mask=mask_r, other=0).to(tl.int64)
        else:
            tok = m.to(tl.int64)
        ti = tok // (HN * WN)
        hw = tok % (HN * WN)
        row_off = b * s_vb + ti * (TT * s_vt) + (hw // WN) * (PH * s_vh) + (hw % WN) * (PW * s_vw)
        a_t = tl.load(
            video_ptr + col_off[:, None] + row_off[None, :], mask=mask_k[:, None] & mask_r[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_M) pixels, transposed
        g = tl.load(
            gout_ptr + offs_r.to(tl.int64)[:, None] * D + offs_n[None, :],
            mask=mask_r[:, None] & mask_n[None, :],
            other=0.0,
        )  # (BLOCK_M, BLOCK_N)
        acc = tl.dot(a_t, g, acc, input_precision=DOT_PRECISION)
    # grad W is stored (D, K) in fp32 (fp64 for fp64 inputs)
    tl.store(gw_ptr + offs_n[None, :] * K + offs_k[:, None], acc, mask=mask_k[:, None] & mask_n[None, :])


def _grad_video_kernel(
    gout_ptr, idx_ptr, w_ptr, gvid_ptr,
    N_VIS, D, K, HN, WN,
    s_gb, s_gc, s_gt, s_gh, s_gw, s_ib, s_in,
    TT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_IDX: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # grad pixels[r, k] = sum_d grad_out[r, d] * W[d, k], stored straight into the visible tubelets of a
    # zero-filled grad video. Indices are unique within a clip, so no two programs write one pixel.
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = offs_m < N_VIS
    mask_k = offs_k < K
    if HAS_IDX:
        tok = tl.load(idx_ptr + b * s_ib + offs_m * s_in, mask=mask_m, other=0).to(tl.int64)
    else:
        tok = offs_m.to(tl.int64)
    ti = tok // (HN * WN)
    hw = tok % (HN * WN)
    row_off = b * s_gb + ti * (TT * s_gt) + (hw // WN) * (PH * s_gh) + (hw % WN) * (PW * s_gw)
    c = offs_k // (TT * PH * PW)
    r = offs_k % (TT * PH * PW)
    dy = (r % (PH * PW)) // PW
    col_off = c * s_gc + (r // (PH * PW)) * s_gt + dy * s_gh + (r % PW) * s_gw

    out_rows = b * N_VIS + offs_m
    if ACC_FP64:  # fp64 only runs in the interpreter (gradcheck); GPUs accumulate fp16/bf16/fp32 in fp32
        acc = tl.full((BLOCK_M, BLOCK_K), 0.0, tl.float64)
    else:
        acc = tl.full((BLOCK_M, BLOCK_K), 0.0, tl.float32)
    for d0 in range(0, D, BLOCK_N):
        offs_d = d0 + tl.arange(0, BLOCK_N)
        mask_d = offs_d < D
        g = tl.load(
            gout_ptr + out_rows[:, None] * D + offs_d[None, :],
            mask=mask_m[:, None] & mask_d[None, :],
            other=0.0,
        )  # (BLOCK_M, BLOCK_N)
        w = tl.load(
            w_ptr + offs_d[:, None] * K + offs_k[None, :], mask=mask_d[:, None] & mask_k[None, :], other=0.0
        )  # (BLOCK_N, BLOCK_K)
        acc = tl.dot(g, w, acc, input_precision=DOT_PRECISION)
    tl.store(
        gvid_ptr + row_off[:, None] + col_off[None, :],
        acc.to(gvid_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_k[None, :],
    )


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Every entry is compiled for sm_80 and sm_90 in
# the tests; BLOCK_K = 64 keeps a 16-wide patch row (dx) contiguous within a load.
CONFIGS: dict[str, list[tuple[int, int, int, int, int]]] = {
    "fwd": [(64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 64, 32, 4, 4)],
    "grad_weight": [(64, 128, 64, 8, 3), (64, 64, 64, 4, 3)],
    "grad_video": [(64, 64, 128, 4, 3), (128, 64, 64, 8, 3)],
}
# Small blocks for the interpreter: it runs every program in numpy, so fewer wasted lanes is faster.
INTERPRET_CONFIG: tuple[int, int, int, int, int] = (16, 32, 64, 4, 1)
_AUTOTUNE_KEYS = {
    "fwd": ["N_VIS", "D", "K"],
    "grad_weight": ["M_TOTAL", "D", "K"],
    "grad_video": ["N_VIS", "D", "K"],
}
_KERNEL_FNS = {"fwd": _fwd_kernel, "grad_weight": _grad_weight_kernel, "grad_video": _grad_video_kernel}


@functools.cache
def jit_kernel(name: str) -> Any:
    """The `triton.jit` kernel `name` (one of CONFIGS' keys), compiled for a GPU on launch."""
    from triton.runtime.jit import JITFunction

    return JITFunction(_KERNEL_FNS[name])


@functools.cache
def _kernel(name: str, interpret: bool, tuned: bool) -> Any:
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_KERNEL_FNS[name])
    if not tuned:
        return jit_kernel(name)
    configs = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
        for m, n, k, w, s in CONFIGS[name]
    ]
    return triton.autotune(configs=configs, key=_AUTOTUNE_KEYS[name])(jit_kernel(name))


def _launch(
    name: str, grid: Any, args: tuple, constexprs: dict[str, Any], interpret: bool, config: tuple | None
) -> None:
    """Launch `name`: autotuned on CUDA unless `config` pins one; INTERPRET_CONFIG in the interpreter."""
    if interpret and config is None:
        config = INTERPRET_CONFIG
    device = args[0].device
    # Triton launches on the current CUDA device; make it the tensors' device.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        if config is None:
            _kernel(name, False, True)[grid](*args, **constexprs)
            return
        m, n, k, w, s = config
        meta = {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}
        _kernel(name, interpret, False)[grid(meta)](*args, **constexprs, **meta, num_warps=w, num_stages=s)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's matmul precision setting, as F.linear does on the reference path.
    return "tf32" if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest" else "ieee"


def _common_constexprs(g: _Geometry, visible_idx: torch.Tensor | None, dtype: torch.dtype) -> dict[str, Any]:
    precision = _dot_precision(dtype)
    fp64 = dtype == torch.float64
    return dict(
        TT=g.tt, PH=g.ph, PW=g.pw, HAS_IDX=visible_idx is not None, DOT_PRECISION=precision, ACC_FP64=fp64
    )


def _idx_args(visible_idx: torch.Tensor | None, video: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    if visible_idx is None:
        return video, 0, 0  # any pointer; never read when HAS_IDX is False
    return visible_idx, visible_idx.stride(0), visible_idx.stride(1)


def _forward_triton(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor | None,
    g: _Geometry,
    interpret: bool,
    config: tuple | None = None,
) -> torch.Tensor:
    w2 = weight.reshape(g.D, g.K).contiguous()  # (D, K), a view for the usual contiguous Conv3d weight
    out = torch.empty(g.B, g.N_vis, g.D, dtype=video.dtype, device=video.device)  # (B, N_vis, D)
    if out.numel() == 0:
        return out
    pos_c = pos.contiguous() if pos is not None else None
    idx, s_ib, s_in = _idx_args(visible_idx, video)
    args = (video, idx, w2, bias if bias is not None else w2, pos_c if pos_c is not None else w2, out,
            g.N_vis, g.D, g.K, g.Hn, g.Wn, *video.stride(), s_ib, s_in)  # fmt: skip
    constexprs = _common_constexprs(g, visible_idx, video.dtype)
    constexprs.update(HAS_BIAS=bias is not None, HAS_POS=pos is not None)
    grid = lambda meta: (triton.cdiv(g.N_vis, meta["BLOCK_M"]), triton.cdiv(g.D, meta["BLOCK_N"]), g.B)
    _launch("fwd", grid, args, constexprs, interpret, config)
    return out


def _grad_weight_triton(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    gout: torch.Tensor,
    g: _Geometry,
    interpret: bool,
    config: tuple | None = None,
) -> torch.Tensor:
    """grad W (D, K) in fp32 (fp64 for fp64) from the video and a contiguous grad_out (B, N_vis, D)."""
    acc_dtype = torch.float64 if video.dtype == torch.float64 else torch.float32
    gw = torch.empty(g.D, g.K, dtype=acc_dtype, device=video.device)
    if g.B * g.N_vis == 0:
        return gw.zero_()
    idx, s_ib, s_in = _idx_args(visible_idx, video)
    args = (video, idx, gout, gw, g.B * g.N_vis, g.N_vis, g.D, g.K, g.Hn, g.Wn, *video.stride(), s_ib, s_in)
    constexprs = _common_constexprs(g, visible_idx, video.dtype)
    grid = lambda meta: (triton.cdiv(g.K, meta["BLOCK_K"]), triton.cdiv(g.D, meta["BLOCK_N"]))
    _launch("grad_weight", grid, args, constexprs, interpret, config)
    return gw


def _grad_video_triton(
    gout: torch.Tensor,
    visible_idx: torch.Tensor | None,
    w2: torch.Tensor,
    video_shape: torch.Size,
    g: _Geometry,
    interpret: bool,
    config: tuple | None = None,
) -> torch.Tensor:
    """grad video (B, C, T, H, W): zero except at the visible tubelets."""
    gvid = torch.zeros(video_shape, dtype=gout.dtype, device=gout.device)
    if g.B * g.N_vis == 0:
        return gvid
    idx, s_ib, s_in = _idx_args(visible_idx, gvid)
    args = (gout, idx, w2, gvid, g.N_vis, g.D, g.K, g.Hn, g.Wn, *gvid.stride(), s_ib, s_in)
    constexprs = _common_constexprs(g, visible_idx, gout.dtype)
    grid = lambda meta: (triton.cdiv(g.N_vis, meta["BLOCK_M"]), triton.cdiv(g.K, meta["BLOCK_K"]), g.B)
    _launch("grad_video", grid, args, constexprs, interpret, config)
    return gvid


class MaskedPatchEmbedFunction(torch.autograd.Function):
    """Triton forward and backward of the masked patch embedding (arguments already checked)."""

    @staticmethod
    def forward(
        ctx: Any,
        video: torch.Tensor,
        visible_idx: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        pos: torch.Tensor | None,
        geom: _Geometry,
        interpret: bool,
    ) -> torch.Tensor:
        ctx.geom, ctx.interpret = geom, interpret
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.pos_meta = (pos.shape, pos.dtype) if pos is not None else None
        ctx.save_for_backward(video, visible_idx, weight)
        return _forward_triton(video, visible_idx, weight, bias, pos, geom, interpret)  # (B, N_vis, D)

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        video, visible_idx, weight = ctx.saved_tensors
        g: _Geometry = ctx.geom
        gout = gout.contiguous().to(video.dtype)  # (B, N_vis, D)
        need_video, _, need_w, need_b, need_pos, _, _ = ctx.needs_input_grad
        grad_video = grad_w = grad_b = grad_pos = None
        if need_video:
            w2 = weight.reshape(g.D, g.K).contiguous()
            grad_video = _grad_video_triton(gout, visible_idx, w2, video.shape, g, ctx.interpret)
        if need_w:
            grad_w = _grad_weight_triton(video, visible_idx, gout, g, ctx.interpret)
            grad_w = grad_w.to(weight.dtype).view(weight.shape)
        if need_b:
            grad_b = gout.sum(dim=(0, 1), dtype=torch.float32).to(ctx.bias_dtype)
        if need_pos:  # the sinusoid table is a fixed buffer; a learned one still gets its gradient
            shape, dtype = ctx.pos_meta
            rows = gout.reshape(-1, g.D).float()
            grad_pos = torch.zeros(g.N, g.D, dtype=torch.float32, device=gout.device)
            if visible_idx is None:
                grad_pos += rows.view(g.B, g.N, g.D).sum(0)
            else:
                grad_pos.index_add_(0, visible_idx.reshape(-1).long(), rows)
            grad_pos = grad_pos.to(dtype).view(shape)
        return grad_video, None, grad_w, grad_b, grad_pos, None, None


_masked_patch_embed_triton = MaskedPatchEmbedFunction.apply


def masked_patch_embed(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
    backend: str = "auto",
    check_indices: bool | None = None,
) -> torch.Tensor:
    """Patch-embed only the visible tubelets: (B, C, T, H, W) -> (B, N_vis, D) in video's dtype.

    Equal to `standard_patch_embed`: Conv3d(kernel=stride=(t, p, p)) over the clip, tokens flattened
    t-major then h then w, rows `visible_idx` gathered, plus `pos_embed[visible_idx]`.

    video: (B, C, T, H, W), any strides. visible_idx: (B, N_vis) int64/int32, strictly increasing per row,
    or None for all N tokens. weight: (D, C, t, p, p) as nn.Conv3d stores it, same dtype as video.
    bias: (D,) or None. pos_embed: (N, D) (or (1, N, D)) or None; gets a gradient if it requires one.
    backend: "auto" (see dispatch.patch_embed_path), "triton" or "torch" (the reference).
    check_indices: check index values (range, sorted, unique). Default: on for CPU tensors, off for CUDA
    tensors because reading values would sync the host with the device on every call. Shapes, dtypes
    and devices are always checked on the host. Unsorted indices are refused because the encoder relies
    on ascending token order; repeated ones because two programs would write one tubelet of grad video.
    Unchecked bad values on CUDA read out of bounds, so make indices with the masking module.

    Under autocast the inputs are cast to the autocast dtype first, as Conv3d would be.
    """
    if video.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        video, weight = video.to(dtype), weight.to(dtype)
    g, pos = _check_args(video, visible_idx, weight, bias, pos_embed, check_indices)
    path = dispatch.patch_embed_path(video.device, video.dtype, backend)
    if path == "torch":
        return _reference(video, visible_idx, weight, bias, pos, g)
    with torch.autocast(video.device.type, enabled=False):
        return _masked_patch_embed_triton(
            video, visible_idx, weight, bias, pos, g, path == "triton-interpreter"
        )


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time compilation for GPU targets (used by the tests on CPU-only machines)
# ---------------------------------------------------------------------------------------------------

_PTR_ARGS = {
    "fwd": {"video_ptr": "v", "idx_ptr": "i", "w_ptr": "v", "bias_ptr": "v", "pos_ptr": "v", "out_ptr": "v"},
    "grad_weight": {"video_ptr": "v", "idx_ptr": "i", "gout_ptr": "v", "gw_ptr": "f32"},
    "grad_video": {"gout_ptr": "v", "idx_ptr": "i", "w_ptr": "v", "gvid_ptr": "v"},
}


def compile_for_gpu(name: str, config: tuple, dtype: str, arch: int) -> int:
    """Compile kernel `name` with one config for `dtype` ("fp16"/"bf16"/"fp32"/"tf32") on CUDA sm_`arch`.

    Runs on a machine without a GPU (the interpreter must be off). Returns the shared memory the
    kernel needs in bytes, so callers can check it against the architecture's limit.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = jit_kernel(name)
    m, n, k, w, s = config
    sig: dict[str, str] = {}
    constexprs: dict[str, Any] = {"TT": 2, "PH": 16, "PW": 16, "HAS_IDX": True, "DOT_PRECISION": "ieee",
                                  "ACC_FP64": False, "BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}  # fmt: skip
    if name == "fwd":
        constexprs.update(HAS_BIAS=True, HAS_POS=True)
    if dtype == "tf32":  # fp32 data, tf32 tensor-core dot (torch.set_float32_matmul_precision("high"))
        dtype, constexprs["DOT_PRECISION"] = "fp32", "tf32"
    for arg in fn.arg_names:
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg in _PTR_ARGS[name]:
            kind = _PTR_ARGS[name][arg]
            sig[arg] = "*" + {"v": dtype, "i": "i64", "f32": "fp32"}[kind]
        else:
            sig[arg] = "i32"
    src = ASTSource(
        fn=fn, signature=sig, constexprs={(fn.arg_names.index(a),): v for a, v in constexprs.items()}
    )
    compiled = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": w, "num_stages": s}
    )
    return int(compiled.metadata.shared)
