"""Transformer building blocks shared by the encoder, the bridging classifier and the decoder.

VideoMAE's attention has a learned q bias and v bias but no k bias; the bridging classifier's has a bias on
all three. Blocks are timm-style pre-norm residual pairs (``nn.Identity`` for a disabled drop path, so
``forward`` stays two lines); the attention itself goes through :func:`marvit.kernels.attention`, which
picks xformers or PyTorch SDPA by the tensor's device.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from timm.layers import Mlp
from torch import nn

from marvit.kernels import attention
from marvit.kernels.attention import packed_attention
from marvit.model.packed import Ragged

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed 1-D sinusoid position table ``(num_positions, dim)``: sin on even, cos on odd dims."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


class Attention(nn.Module):
    """Multi-head self-attention. ``bias="qv"``: VideoMAE's q and v biases (no k bias); ``"qkv"``: all three."""

    def __init__(self, dim: int, num_heads: int, bias: str = "qv") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=bias == "qkv")
        if bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, seq: Ragged | None = None) -> torch.Tensor:  # x: (B, N, D) or (M, D)
        if self.q_bias is not None:
            qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
            qkv = F.linear(x, self.qkv.weight, qkv_bias)
        else:
            qkv = self.qkv(x)
        if seq is not None:  # packed (M, D): attention within each clip only
            q, k, v = rearrange(qkv, "m (three h d) -> three m h d", three=3, h=self.num_heads).unbind(0)
            return self.proj(packed_attention(q, k, v, seq.lengths).flatten(1))  # (M, D)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b n h d", three=3, h=self.num_heads).unbind(0)
        x = attention(q, k, v)  # (B, N, H, Dh)
        return self.proj(rearrange(x, "b n h d -> b n (h d)"))


class DropPath(nn.Module):
    """Stochastic depth per sample, as timm's ``DropPath`` (scale by the keep probability), with the rate
    held as a tensor buffer: blocks on a linear drop-path schedule then share one compiled graph
    (``train.compile``) instead of specializing on each block's Python float."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(rate)), persistent=False)

    def forward(self, x: torch.Tensor, seq: Ragged | None = None) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.rate.to(x.dtype)
        if seq is not None:  # packed (M, D): one draw per clip, spread over its rows
            return x * (x.new_empty(seq.batch).bernoulli_(keep)[seq.clip_ids] / keep)[:, None]
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, bias: str = "qv"
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, bias=bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, seq: Ragged | None = None) -> torch.Tensor:
        """x: (B, N, D), or packed (M, D) with its layout ``seq`` (LayerNorm and MLP run on it as it is)."""
        if seq is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        dp = self.drop_path if isinstance(self.drop_path, DropPath) else lambda h, _: h
        x = x + dp(self.attn(self.norm1(x), seq), seq)
        return x + dp(self.mlp(self.norm2(x)), seq)


def run_blocks(
    blocks: nn.ModuleList, x: torch.Tensor, checkpoint: bool = False, seq: Ragged | None = None
) -> torch.Tensor:
    """Run ``blocks`` in order; with ``checkpoint`` (and grad enabled) keep only each block's input and
    recompute its activations in backward: memory for compute, for the training-only heads. ``seq``: the
    layout of a packed (M, D) ``x``."""
    args = () if seq is None else (seq,)  # padded calls stay exactly as before
    for blk in blocks:
        if checkpoint and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(blk, x, *args, use_reentrant=False)
        else:
            x = blk(x, *args)
    return x


def init_weights(module: nn.Module) -> None:
    """VideoMAE/timm initialization: truncated normal (std 0.02) linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv3d):
        # as a linear layer over the flattened tubelet (VideoMAE: xavier on the flattened view)
        w = module.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def drop_path_schedule(rate: float, depth: int) -> list[float]:
    """Linear stochastic-depth schedule from 0 to ``rate`` over ``depth`` blocks."""
    return [rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.0] * depth
