"""Masked patch embedding: read only the visible tubelets of a clip, project them, add their positions.

The standard scheme runs Conv3d(kernel=stride=(t, p, p)) over the whole clip, flattens the token grid
(t-major, then h, then w) and only then drops the masked tokens. With a cell running mask half or more
of that work and traffic is thrown away. Here the patch embedding is written as a GEMM over the visible
tokens only:

    out[b, m, :] = W @ vec(video[b, :, tubelet(idx[b, m])]) + bias + pos[idx[b, m]]      # (D,)

where W is the Conv3d weight viewed as (D, K), K = C * t * p * p, flattened (c, dt, dy, dx) exactly as
Conv3d lays it out. The forward kernel gives each program a (BLOCK_M tokens x BLOCK_N channels) tile:
it turns each token index into its tubelet's base address (`_tubelet_origin`), walks K in BLOCK_K
steps, turning every k into a (c, dt, dy, dx) pixel offset (`_pixel_offset`) so the A tile is a strided
load straight from the video (no patch tensor is ever materialized), accumulates with tl.dot (fp32 for
fp16/bf16/fp32, fp64 for fp64) and adds bias and positional embedding before the single store. The
backward has two kernels of the same shape: grad W is a GEMM whose reduction runs over all B * N_vis
visible tokens (reading pixels the same way), grad video is grad_out @ W scattered back to the visible
tubelets (indices are unique per clip, so plain stores). The bias and position gradients are sums of
grad_out rows, left to PyTorch.

The kernels are `@triton.jit` functions defined at import, so `TRITON_INTERPRET=1` must be set before
this module is imported for them to run in the Triton interpreter (on CPU tensors; the tests set it in
tests/conftest.py). `INTERPRETED` records which way they were built and dispatch.py reads it.

Layout of this file: argument checks, the PyTorch paths (`masked_patch_embed_reference`, the twin the
tests hold the kernels to and the CPU path; `standard_patch_embed`, the standard scheme), the Triton
helpers and kernels, their launchers (check, allocate, launch), the autograd Function and its
`masked_patch_embed_triton = MaskedPatchEmbedFunction.apply`, and the public dispatching op.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from marvit.kernels import dispatch

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover - triton is a Linux dependency; dispatch then never picks it
    triton = None
    tl = None

_jit = triton.jit if triton is not None else (lambda fn: fn)


# ---------------------------------------------------------------------------------------------------
# Argument checks (host-side; value checks only where they cost no device sync)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Sizes of one masked patch embedding, all derived from the shapes of video, weight and indices."""

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

    @classmethod
    def of(
        cls, video_shape: torch.Size, weight_shape: torch.Size, visible_idx: torch.Tensor | None
    ) -> Geometry:
        B, C, T, H, W = video_shape
        D, _, tt, ph, pw = weight_shape
        Tn, Hn, Wn = T // tt, H // ph, W // pw
        N = Tn * Hn * Wn
        N_vis = N if visible_idx is None else visible_idx.shape[1]
        return cls(B, C, D, tt, ph, pw, Tn, Hn, Wn, N, N_vis, C * tt * ph * pw)


def _check_args(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
    check_indices: bool | None,
) -> tuple[Geometry, torch.Tensor | None]:
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
    N = (T // tt) * (H // ph) * (W // pw)
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
    if visible_idx is not None:
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
    return Geometry.of(video.shape, weight.shape, visible_idx), pos_embed


def _shape(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of the kernels and of the bias/position sums: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    g: Geometry,
) -> torch.Tensor:
    patches = gather_tubelets(video, visible_idx, g.tt, (g.ph, g.pw)).reshape(g.B, -1, g.K)  # (B, N_vis, K)
    out = F.linear(patches, weight.reshape(g.D, g.K), None if bias is None else bias.to(weight.dtype))
    if pos is not None:
        out = out + (pos if visible_idx is None else pos[visible_idx.long()]).to(out.dtype)  # (B, N_vis, D)
    return out


def gather_tubelets(
    video: torch.Tensor, index: torch.Tensor | None, tubelet: int, patch: int | tuple[int, int]
) -> torch.Tensor:
    """The tubelets ``index`` of ``video`` (all of them when None), copied from a strided view of the clip:
    (B, C, T, H, W), index (B, N_t) token ids in (t, h, w) raster order, patch a side or (height, width)
    -> (B, N_t, C, tubelet, patch height, patch width).

    Only the selected tubelets are copied (the patch embedding's CPU path and the reconstruction targets)."""
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    x = rearrange(video, "b c (tn t) (hn h) (wn w) -> b tn hn wn c t h w", t=tubelet, h=ph, w=pw)
    if index is None:
        return x.flatten(1, 3)
    hn, wn = x.shape[2], x.shape[3]
    idx = index.long()
    ti, hw = idx.div(hn * wn, rounding_mode="floor"), idx.remainder(hn * wn)
    hi, wi = hw.div(wn, rounding_mode="floor"), hw.remainder(wn)
    bi = torch.arange(x.shape[0], device=video.device)[:, None]
    return x[bi, ti, hi, wi]


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
# Triton helpers: the tubelet address arithmetic all three kernels share
# ---------------------------------------------------------------------------------------------------


@_jit
def _token_ids(idx_ptr, b, offs_m, mask_m, s_ib, s_in, HAS_IDX: tl.constexpr):
    """Token index (int64) of rows `offs_m` of clip(s) `b`: idx[b, m], or m itself for every token."""
    if HAS_IDX:
        tok = tl.load(idx_ptr + b * s_ib + offs_m * s_in, mask=mask_m, other=0).to(tl.int64)
    else:
        tok = offs_m.to(tl.int64)
    return tok


@_jit
def _clip_ids(clip_ptr, b, offs_m, mask_m, RAGGED: tl.constexpr):
    """The clip of rows `offs_m`: `b` itself, or (ragged: one packed (1, M) row of tokens from many clips)
    each row's own clip id clip[m], read from the (M,) int64 table the launcher expands from the offsets."""
    if RAGGED:
        clip = tl.load(clip_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
    else:
        clip = b + tl.zeros_like(offs_m).to(tl.int64)
    return clip


@_jit
def _tubelet_origin(
    b, tok, HN, WN,
    s_b, s_t, s_h, s_w,
    TT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
):  # fmt: skip
    """Offset of each token's tubelet origin in a (B, C, T, H, W) tensor; tokens are t-major, then h, w."""
    ti = tok // (HN * WN)
    hw = tok % (HN * WN)
    return b * s_b + ti * (TT * s_t) + (hw // WN) * (PH * s_h) + (hw % WN) * (PW * s_w)


@_jit
def _pixel_offset(
    offs_k, s_c, s_t, s_h, s_w, TT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr
):  # fmt: skip
    """Offset of flattened pixel k = (c, dt, dy, dx) within a tubelet, in the Conv3d weight's order."""
    c = offs_k // (TT * PH * PW)
    r = offs_k % (TT * PH * PW)
    return c * s_c + (r // (PH * PW)) * s_t + ((r % (PH * PW)) // PW) * s_h + (r % PW) * s_w


@_jit
def _load_2d(ptr, rows, cols, mask_r, mask_c):
    """The (len(rows), len(cols)) tile at ptr + rows[:, None] + cols[None, :]; zeros outside the masks."""
    return tl.load(ptr + rows[:, None] + cols[None, :], mask=mask_r[:, None] & mask_c[None, :], other=0.0)


@_jit
def _store_2d(ptr, rows, cols, mask_r, mask_c, tile):
    tl.store(
        ptr + rows[:, None] + cols[None, :],
        tile.to(ptr.dtype.element_ty),
        mask=mask_r[:, None] & mask_c[None, :],
    )


# ---------------------------------------------------------------------------------------------------
# Triton kernels: pointers, sizes, strides, then constexprs
# ---------------------------------------------------------------------------------------------------


@_jit
def _fwd_kernel(
    video_ptr, idx_ptr, w_ptr, bias_ptr, pos_ptr, out_ptr, clip_ptr,
    N_VIS, D, K, HN, WN,
    s_vb, s_vc, s_vt, s_vh, s_vw, s_ib, s_in,
    TT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_IDX: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr, RAGGED: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # out[b, m, n] = sum_k pixels[b, m, k] * W[n, k] (+ bias[n] + pos[tok, n]); grid (M tiles, N tiles, B)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) token rows of this clip
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output channels
    mask_m = offs_m < N_VIS
    mask_n = offs_n < D
    tok = _token_ids(idx_ptr, b, offs_m, mask_m, s_ib, s_in, HAS_IDX)
    clip = _clip_ids(clip_ptr, b, offs_m, mask_m, RAGGED)  # this clip, or each packed row's own clip
    row_off = _tubelet_origin(clip, tok, HN, WN, s_vb, s_vt, s_vh, s_vw, TT, PH, PW)  # (BLOCK_M,)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,) flattened (c, dt, dy, dx)
        mask_k = offs_k < K
        col_off = _pixel_offset(offs_k, s_vc, s_vt, s_vh, s_vw, TT, PH, PW)  # (BLOCK_K,)
        a = _load_2d(video_ptr, row_off, col_off, mask_m, mask_k)  # (BLOCK_M, BLOCK_K) visible pixels
        w = _load_2d(w_ptr, offs_k, offs_n * K, mask_k, mask_n)  # (BLOCK_K, BLOCK_N) = W^T tile
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(ACC_DTYPE)[None, :]
    if HAS_POS:
        acc += _load_2d(pos_ptr, tok * D, offs_n, mask_m, mask_n).to(ACC_DTYPE)
    out_rows = b * N_VIS + offs_m  # (BLOCK_M,) rows of the contiguous (B * N_vis, D) output
    _store_2d(out_ptr, out_rows * D, offs_n, mask_m, mask_n, acc)


@_jit
def _grad_weight_kernel(
    video_ptr, idx_ptr, gout_ptr, gw_ptr, clip_ptr,
    M_TOTAL, N_VIS, D, K, HN, WN,
    s_vb, s_vc, s_vt, s_vh, s_vw, s_ib, s_in,
    TT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_IDX: tl.constexpr, RAGGED: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
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
    col_off = _pixel_offset(offs_k, s_vc, s_vt, s_vh, s_vw, TT, PH, PW)  # (BLOCK_K,)

    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=ACC_DTYPE)
    for r0 in range(0, M_TOTAL, BLOCK_M):
        offs_r = r0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) rows of the flattened (B * N_vis) tokens
        mask_r = offs_r < M_TOTAL
        b = (offs_r // N_VIS).to(tl.int64)
        tok = _token_ids(idx_ptr, b, offs_r % N_VIS, mask_r, s_ib, s_in, HAS_IDX)
        clip = _clip_ids(clip_ptr, b, offs_r, mask_r, RAGGED)
        row_off = _tubelet_origin(clip, tok, HN, WN, s_vb, s_vt, s_vh, s_vw, TT, PH, PW)
        a_t = _load_2d(video_ptr, col_off, row_off, mask_k, mask_r)  # (BLOCK_K, BLOCK_M) pixels, transposed
        g = _load_2d(gout_ptr, offs_r.to(tl.int64) * D, offs_n, mask_r, mask_n)  # (BLOCK_M, BLOCK_N)
        acc = tl.dot(a_t, g, acc, input_precision=DOT_PRECISION)
    _store_2d(gw_ptr, offs_k, offs_n * K, mask_k, mask_n, acc)  # grad W stored (D, K) in ACC_DTYPE


@_jit
def _grad_video_kernel(
    gout_ptr, idx_ptr, w_ptr, gvid_ptr, clip_ptr,
    N_VIS, D, K, HN, WN,
    s_gb, s_gc, s_gt, s_gh, s_gw, s_ib, s_in,
    TT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_IDX: tl.constexpr, RAGGED: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
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
    tok = _token_ids(idx_ptr, b, offs_m, mask_m, s_ib, s_in, HAS_IDX)
    clip = _clip_ids(clip_ptr, b, offs_m, mask_m, RAGGED)
    row_off = _tubelet_origin(clip, tok, HN, WN, s_gb, s_gt, s_gh, s_gw, TT, PH, PW)
    col_off = _pixel_offset(offs_k, s_gc, s_gt, s_gh, s_gw, TT, PH, PW)

    out_rows = (b * N_VIS + offs_m) * D  # (BLOCK_M,) row offsets into the contiguous grad_out
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC_DTYPE)
    for d0 in range(0, D, BLOCK_N):
        offs_d = d0 + tl.arange(0, BLOCK_N)
        mask_d = offs_d < D
        g = _load_2d(gout_ptr, out_rows, offs_d, mask_m, mask_d)  # (BLOCK_M, BLOCK_N)
        w = _load_2d(w_ptr, offs_d * K, offs_k, mask_d, mask_k)  # (BLOCK_N, BLOCK_K)
        acc = tl.dot(g, w, acc, input_precision=DOT_PRECISION)
    _store_2d(gvid_ptr, row_off, col_off, mask_m, mask_k, acc)


KERNELS: dict[str, Any] = {
    "fwd": _fwd_kernel,
    "grad_weight": _grad_weight_kernel,
    "grad_video": _grad_video_kernel,
}
# Whether the kernels above were built for the Triton interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED: bool = triton is not None and isinstance(_fwd_kernel, InterpretedFunction)
dispatch.record_kernels(lambda: INTERPRETED)  # read at call time: tests may patch INTERPRETED

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Every entry is compiled for sm_80 and sm_90 in
# the tests; BLOCK_K = 64 keeps a 16-wide patch row (dx) contiguous within a load.
BlockConfig = tuple[int, int, int, int, int]
CONFIGS: dict[str, list[BlockConfig]] = {
    "fwd": [(64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 64, 32, 4, 4)],
    "grad_weight": [(64, 128, 64, 8, 3), (64, 64, 64, 4, 3)],
    "grad_video": [(64, 64, 128, 4, 3), (128, 64, 64, 8, 3)],
}
# Small blocks for the interpreter: it runs every program in numpy, so fewer wasted lanes is faster.
INTERPRET_CONFIG: BlockConfig = (16, 32, 64, 4, 1)
_AUTOTUNE_KEYS = {
    "fwd": ["N_VIS", "D", "K"],
    "grad_weight": ["M_TOTAL", "D", "K"],
    "grad_video": ["N_VIS", "D", "K"],
}


def _autotuned(name: str) -> Any:
    if triton is None or INTERPRETED:
        return None  # the interpreter always runs INTERPRET_CONFIG
    configs = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
        for m, n, k, w, s in CONFIGS[name]
    ]
    return triton.autotune(configs=configs, key=_AUTOTUNE_KEYS[name])(KERNELS[name])


_TUNED = {name: _autotuned(name) for name in KERNELS}


# ---------------------------------------------------------------------------------------------------
# Launchers: check, allocate, launch. `config` pins one block configuration (tests and benchmarks);
# by default CUDA autotunes over CONFIGS and the interpreter runs INTERPRET_CONFIG.
# ---------------------------------------------------------------------------------------------------


def _launch(name: str, grid: Any, args: tuple, meta: dict[str, Any], config: BlockConfig | None) -> None:
    if INTERPRETED and config is None:
        config = INTERPRET_CONFIG
    device = args[0].device
    # Triton launches on the current CUDA device; make it the tensors' device.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        if config is None:
            _TUNED[name][grid](*args, **meta)
            return
        m, n, k, w, s = config
        blocks = {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}
        KERNELS[name][grid(blocks)](*args, **meta, **blocks, num_warps=w, num_stages=s)


def _meta(
    g: Geometry, visible_idx: torch.Tensor | None, dtype: torch.dtype, clip_ids: torch.Tensor | None = None
) -> dict[str, Any]:
    """The constexprs every kernel takes."""
    # fp32 inputs follow torch's matmul precision setting, as F.linear does on the reference path.
    tf32 = dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    return dict(TT=g.tt, PH=g.ph, PW=g.pw, HAS_IDX=visible_idx is not None, RAGGED=clip_ids is not None,
                DOT_PRECISION="tf32" if tf32 else "ieee", ACC_DTYPE=acc)  # fmt: skip


def _require_rows(gout: torch.Tensor, g: Geometry) -> None:
    """The kernels read grad_out as contiguous (B * N_vis, D) rows."""
    if gout.shape != (g.B, g.N_vis, g.D) or not gout.is_contiguous():
        raise ValueError(
            f"grad_out: expected a contiguous ({g.B}, {g.N_vis}, {g.D}) tensor, got {_shape(gout)}"
        )


def _idx_args(visible_idx: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    if visible_idx is None:
        return like, 0, 0  # any pointer; never read when HAS_IDX is False
    return visible_idx, visible_idx.stride(0), visible_idx.stride(1)


def _geometry(
    video_shape: torch.Size, weight_shape: torch.Size, visible_idx: torch.Tensor | None,
    clip_ids: torch.Tensor | None,
) -> Geometry:  # fmt: skip
    """The launch geometry. Ragged (``clip_ids`` given): visible_idx is one packed (1, M) row of tokens of
    many clips, so the kernels run as one "clip" of M rows and read each row's clip from ``clip_ids``."""
    g = Geometry.of(video_shape, weight_shape, visible_idx)
    if clip_ids is None:
        return g
    if visible_idx is None or visible_idx.shape[0] != 1 or clip_ids.shape != (visible_idx.shape[1],):
        raise ValueError("ragged launch: expected visible_idx (1, M) and clip_ids (M,)")
    return dataclasses.replace(g, B=1)


def _forward_triton(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor | None,
    clip_ids: torch.Tensor | None = None,
    *,
    config: BlockConfig | None = None,
) -> torch.Tensor:
    """(B, N_vis, D) in video's dtype from checked arguments (pos as (N, D) or None); ragged: (1, M, D)."""
    g = _geometry(video.shape, weight.shape, visible_idx, clip_ids)
    w2 = weight.reshape(g.D, g.K).contiguous()  # (D, K), a view for the usual contiguous Conv3d weight
    out = torch.empty(g.B, g.N_vis, g.D, dtype=video.dtype, device=video.device)  # (B, N_vis, D)
    if out.numel() == 0:
        return out
    pos_c = pos.contiguous() if pos is not None else None
    idx, s_ib, s_in = _idx_args(visible_idx, video)
    args = (video, idx, w2, bias if bias is not None else w2, pos_c if pos_c is not None else w2, out,
            clip_ids if clip_ids is not None else idx, g.N_vis, g.D, g.K, g.Hn, g.Wn, *video.stride(), s_ib, s_in)  # fmt: skip
    meta = dict(
        _meta(g, visible_idx, video.dtype, clip_ids), HAS_BIAS=bias is not None, HAS_POS=pos is not None
    )
    grid = lambda blk: (triton.cdiv(g.N_vis, blk["BLOCK_M"]), triton.cdiv(g.D, blk["BLOCK_N"]), g.B)
    _launch("fwd", grid, args, meta, config)
    return out


def _grad_weight_triton(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    gout: torch.Tensor,
    weight_shape: torch.Size,
    clip_ids: torch.Tensor | None = None,
    *,
    config: BlockConfig | None = None,
) -> torch.Tensor:
    """grad W (D, K) in fp32 (fp64 for fp64) from the video and a contiguous grad_out (B, N_vis, D)."""
    g = _geometry(video.shape, weight_shape, visible_idx, clip_ids)
    _require_rows(gout, g)
    gw = torch.empty(g.D, g.K, dtype=_acc_dtype(video.dtype), device=video.device)
    if g.B * g.N_vis == 0:
        return gw.zero_()
    idx, s_ib, s_in = _idx_args(visible_idx, video)
    args = (
        video,
        idx,
        gout,
        gw,
        clip_ids if clip_ids is not None else idx,
        g.B * g.N_vis,
        g.N_vis,
        g.D,
        g.K,
        g.Hn,
        g.Wn,
        *video.stride(),
        s_ib,
        s_in,
    )
    grid = lambda blk: (triton.cdiv(g.K, blk["BLOCK_K"]), triton.cdiv(g.D, blk["BLOCK_N"]))
    _launch("grad_weight", grid, args, _meta(g, visible_idx, video.dtype, clip_ids), config)
    return gw


def _grad_video_triton(
    gout: torch.Tensor,
    visible_idx: torch.Tensor | None,
    weight: torch.Tensor,
    video_shape: torch.Size,
    clip_ids: torch.Tensor | None = None,
    *,
    config: BlockConfig | None = None,
) -> torch.Tensor:
    """grad video (B, C, T, H, W) from a contiguous grad_out (B, N_vis, D): zero but at visible tubelets."""
    gvid = torch.zeros(video_shape, dtype=gout.dtype, device=gout.device)
    g = _geometry(video_shape, weight.shape, visible_idx, clip_ids)
    _require_rows(gout, g)
    if g.B * g.N_vis == 0:
        return gvid
    w2 = weight.reshape(g.D, g.K).contiguous()
    idx, s_ib, s_in = _idx_args(visible_idx, gvid)
    args = (
        gout,
        idx,
        w2,
        gvid,
        clip_ids if clip_ids is not None else idx,
        g.N_vis,
        g.D,
        g.K,
        g.Hn,
        g.Wn,
        *gvid.stride(),
        s_ib,
        s_in,
    )
    grid = lambda blk: (triton.cdiv(g.N_vis, blk["BLOCK_M"]), triton.cdiv(g.K, blk["BLOCK_K"]), g.B)
    _launch("grad_video", grid, args, _meta(g, visible_idx, gout.dtype, clip_ids), config)
    return gvid


# ---------------------------------------------------------------------------------------------------
# Autograd and the public op
# ---------------------------------------------------------------------------------------------------


class MaskedPatchEmbedFunction(torch.autograd.Function):
    """Triton forward and backward of the masked patch embedding (arguments already checked).

    Inputs: video (B, C, T, H, W), visible_idx (B, N_vis) or None, weight (D, C, t, p, p) in video's
    dtype, bias (D,) or None, pos (N, D) or None; ragged: visible_idx one packed (1, M) row and clip_ids
    (M,) each row's clip (see `packed_patch_embed`). Every gradient comes back in its input's dtype; the
    bias and position sums accumulate in fp32 (fp64 for fp64 grad_out), as the kernels do.
    """

    @staticmethod
    def forward(
        ctx: Any,
        video: torch.Tensor,
        visible_idx: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        pos: torch.Tensor | None,
        clip_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.pos_meta = (pos.shape, pos.dtype) if pos is not None else None
        ctx.save_for_backward(video, visible_idx, weight, clip_ids)
        return _forward_triton(
            video, visible_idx, weight, bias, pos, clip_ids
        )  # (B, N_vis, D); ragged (1, M, D)

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        video, visible_idx, weight, clip_ids = ctx.saved_tensors
        gout = gout.contiguous().to(video.dtype)  # (B, N_vis, D)
        need_video, _, need_w, need_b, need_pos = ctx.needs_input_grad[:5]
        acc = _acc_dtype(gout.dtype)
        grad_video = grad_w = grad_b = grad_pos = None
        if need_video:
            grad_video = _grad_video_triton(gout, visible_idx, weight, video.shape, clip_ids)
        if need_w:
            grad_w = _grad_weight_triton(video, visible_idx, gout, weight.shape, clip_ids)
            grad_w = grad_w.to(weight.dtype).view(weight.shape)
        if need_b:
            grad_b = gout.sum(dim=(0, 1), dtype=acc).to(ctx.bias_dtype)  # (D,)
        if need_pos:  # the sinusoid table is a fixed buffer; a learned one still gets its gradient
            shape, dtype = ctx.pos_meta
            D = gout.shape[-1]
            rows = gout.reshape(-1, D).to(acc)  # (B * N_vis, D)
            if visible_idx is None:
                grad_pos = rows.view(gout.shape).sum(0)  # (N, D)
            else:
                grad_pos = torch.zeros(shape[0], D, dtype=acc, device=gout.device)
                grad_pos.index_add_(0, visible_idx.reshape(-1).long(), rows)
            grad_pos = grad_pos.to(dtype).view(shape)
        return grad_video, None, grad_w, grad_b, grad_pos, None


masked_patch_embed_triton = MaskedPatchEmbedFunction.apply


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
    if dispatch.patch_embed_path(video.device, video.dtype, backend) == "torch":
        return _reference(video, visible_idx, weight, bias, pos, g)
    with torch.autocast(video.device.type, enabled=False):
        return masked_patch_embed_triton(video, visible_idx, weight, bias, pos)


# ---------------------------------------------------------------------------------------------------
# Packed (ragged) batches: a different number of tokens per clip, all in one (M, D) sequence
# ---------------------------------------------------------------------------------------------------


def _check_packed(
    video: torch.Tensor, tokens: torch.Tensor, cu_seqlens: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor | None, pos_embed: torch.Tensor | None, check_indices: bool | None,
) -> tuple[Geometry, torch.Tensor | None]:  # fmt: skip
    """Check a packed batch's index tensors, then everything else as for one (1, M) row of a padded batch."""
    B = video.shape[0] if isinstance(video, torch.Tensor) and video.dim() == 5 else None
    if (
        not isinstance(tokens, torch.Tensor)
        or tokens.dim() != 1
        or tokens.dtype not in (torch.int64, torch.int32)
    ):
        raise ValueError(f"tokens: expected an (M,) int64/int32 tensor, got {_shape(tokens)}")
    if (
        not isinstance(cu_seqlens, torch.Tensor)
        or cu_seqlens.dim() != 1
        or cu_seqlens.shape[0] != (B or 0) + 1
    ):
        raise ValueError(
            f"cu_seqlens: expected a (B + 1,) = ({(B or 0) + 1},) tensor, got {_shape(cu_seqlens)}"
        )
    g, pos = _check_args(video[:1], None, weight, bias, pos_embed, False)  # shapes, dtypes, devices
    if tokens.device != video.device or cu_seqlens.device != video.device:
        raise ValueError(
            f"tokens/cu_seqlens: on {tokens.device}/{cu_seqlens.device} but video is on {video.device}"
        )
    if check_indices is None:
        check_indices = video.device.type == "cpu"  # on CUDA a value check would sync the host
    if check_indices:
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != tokens.shape[0] or any(a > b for a, b in zip(cu, cu[1:])):
            raise ValueError(
                f"cu_seqlens: expected non-decreasing offsets from 0 to M={tokens.shape[0]}, got {cu}"
            )
        if tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= g.N:
                raise ValueError(f"tokens: values must lie in [0, {g.N}), got min {lo} and max {hi}")
            step = tokens[1:] > tokens[:-1]  # strictly increasing within each clip (may drop at a clip start)
            starts = torch.zeros_like(step)
            inner = torch.as_tensor(cu[1:-1], dtype=torch.long, device=tokens.device) - 1
            starts[inner[(inner >= 0) & (inner < step.numel())]] = True
            if not bool((step | starts).all()):
                raise ValueError(
                    "tokens: each clip's tokens must be strictly increasing (sorted, no repeats)"
                )
    return dataclasses.replace(g, B=B), pos


def clip_ids_of(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(B + 1,) offsets -> (M,) int64 clip id of every packed row (no host sync: M is given)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    clips = torch.arange(lengths.shape[0], device=cu_seqlens.device)
    return torch.repeat_interleave(clips, lengths, output_size=total)


def packed_patch_embed_reference(
    video: torch.Tensor,
    tokens: torch.Tensor,
    cu_seqlens: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
    check_indices: bool | None = None,
) -> torch.Tensor:
    """The plain twin of the ragged kernel (and the CPU path): gather each packed row's tubelet from its own
    clip, one matmul, add positions. video (B, C, T, H, W), tokens (M,), cu_seqlens (B + 1,) -> (M, D)."""
    g, pos = _check_packed(video, tokens, cu_seqlens, weight, bias, pos_embed, check_indices)
    return _packed_reference(video, tokens, clip_ids_of(cu_seqlens, tokens.shape[0]), weight, bias, pos, g)


def _packed_reference(
    video: torch.Tensor, tokens: torch.Tensor, clip_ids: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor | None, pos: torch.Tensor | None, g: Geometry,
) -> torch.Tensor:  # fmt: skip
    x = rearrange(video, "b c (tn t) (hn h) (wn w) -> b tn hn wn c t h w", t=g.tt, h=g.ph, w=g.pw)
    tok = tokens.long()
    ti, hw = tok.div(g.Hn * g.Wn, rounding_mode="floor"), tok.remainder(g.Hn * g.Wn)
    patches = x[clip_ids, ti, hw.div(g.Wn, rounding_mode="floor"), hw.remainder(g.Wn)]  # (M, C, t, p, p)
    out = F.linear(
        patches.reshape(-1, g.K), weight.reshape(g.D, g.K), None if bias is None else bias.to(weight.dtype)
    )
    if pos is not None:
        out = out + pos[tok].to(out.dtype)  # (M, D)
    return out


def packed_patch_embed(
    video: torch.Tensor,
    tokens: torch.Tensor,
    cu_seqlens: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
    backend: str = "auto",
    check_indices: bool | None = None,
) -> torch.Tensor:
    """`masked_patch_embed` for a packed batch whose clips keep different numbers of tokens: (M, D).

    tokens (M,): every clip's kept token ids, ascending within a clip, clips one after another;
    cu_seqlens (B + 1,): clip i owns rows cu_seqlens[i]:cu_seqlens[i + 1]. Row r equals row j of
    `masked_patch_embed(video[i:i+1], tokens[cu[i]:cu[i+1]][None], ...)` for the clip i holding it. The Triton
    kernels run the packed rows as one (1, M) row and read each row's clip from an (M,) table (the
    ``RAGGED`` constexpr), so no padding and no per-clip launch.
    """
    if video.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        video, weight = video.to(dtype), weight.to(dtype)
    g, pos = _check_packed(video, tokens, cu_seqlens, weight, bias, pos_embed, check_indices)
    clip_ids = clip_ids_of(cu_seqlens, tokens.shape[0])
    if dispatch.patch_embed_path(video.device, video.dtype, backend) == "torch":
        return _packed_reference(video, tokens, clip_ids, weight, bias, pos, g)
    with torch.autocast(video.device.type, enabled=False):
        return masked_patch_embed_triton(video, tokens[None], weight, bias, pos, clip_ids)[0]  # (M, D)
