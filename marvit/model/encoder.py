"""The ViT encoder of VideoMAE, run over the visible tokens only.

The patch embedding is a Conv3d with kernel = stride = tubelet (``patch_embed.proj``, as checkpoints store
it), but it is applied through :func:`marvit.kernels.masked_patch_embed`, which reads only the visible
tubelets, projects them as a GEMM and adds their fixed sinusoid positions: ``(B, N_vis, D)`` without ever
building the full token tensor. The blocks then attend over the visible tokens alone.

The final per-token LayerNorm is part of MAR's encoder and of VideoMAE pretraining. VideoMAE's fine-tuning
layout (``use_mean_pooling``, every published fine-tuned checkpoint) has none: its tokens are mean-pooled
first and normalized once (``fc_norm``, in :class:`~marvit.model.heads.LinearHead`), so ``final_norm=False``
leaves ``norm`` an ``nn.Identity`` (no parameters, nothing to load).
"""

from __future__ import annotations

import torch
from torch import nn

from marvit.config import ModelConfig
from marvit.kernels import masked_patch_embed
from marvit.model.layers import Block, LayerNorm, drop_path_schedule, run_blocks, sinusoid_table


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, tubelet: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(
            in_chans, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch)
        )


class VisionTransformer(nn.Module):
    """VideoMAE's ViT: patch embedding, fixed sinusoid positions, pre-norm blocks, final LayerNorm (unless
    ``final_norm=False``: the fine-tuning layout, whose head normalizes the pooled tokens instead)."""

    def __init__(self, cfg: ModelConfig, final_norm: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.tubelet_size, cfg.patch_size)
        # fixed, not learned and not stored in checkpoints
        self.register_buffer("pos_embed", sinusoid_table(cfg.num_tokens, cfg.embed_dim), persistent=False)
        dpr = drop_path_schedule(cfg.drop_path, cfg.depth)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, drop_path=dpr[i], bias="qv")
            for i in range(cfg.depth)
        )
        self.norm = LayerNorm(cfg.embed_dim) if final_norm else nn.Identity()

    def forward(self, video: torch.Tensor, visible_idx: torch.Tensor | None = None) -> torch.Tensor:
        """video: (B, C, T, H, W); visible_idx: (B, N_vis) sorted, or None for every token -> (B, N_vis, D)."""
        w = self.patch_embed.proj
        with torch.profiler.record_function("patch_embed"):  # a label for `marvit profile`; ~free otherwise
            x = masked_patch_embed(video, visible_idx, w.weight, w.bias, self.pos_embed.to(video.dtype))
        return self.norm(run_blocks(self.blocks, x))
