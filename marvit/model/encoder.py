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
from marvit.kernels.patch_embed import packed_patch_embed
from marvit.model.layers import Block, LayerNorm, drop_path_schedule, run_blocks, sinusoid_table
from marvit.model.packed import Packed


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
        # RLT's learned run-length embedding (off by default): row r - 1 is added to a token standing for a
        # run of r tubelets at its place (itself and the static ones after it); zero at start, so switching it
        # on changes nothing until it learns
        self.run_length_embed: nn.Embedding | None = None
        if cfg.run_length_embed:
            self.run_length_embed = nn.Embedding(cfg.num_frames // cfg.tubelet_size, cfg.embed_dim)
            nn.init.zeros_(self.run_length_embed.weight)

    def forward(self, video: torch.Tensor, visible_idx: torch.Tensor | Packed | None = None) -> torch.Tensor:
        """video: (B, C, T, H, W); visible_idx: (B, N_vis) sorted, or None for every token -> (B, N_vis, D);
        or a :class:`Packed` batch (a different count per clip) -> packed (M, D)."""
        w = self.patch_embed.proj
        pos = self.pos_embed.to(video.dtype)
        packed = isinstance(visible_idx, Packed)
        with torch.profiler.record_function("patch_embed"):  # a label for `marvit profile`; ~free otherwise
            if packed:
                x = packed_patch_embed(
                    video, visible_idx.tokens, visible_idx.cu_seqlens, w.weight, w.bias, pos
                )
            else:
                x = masked_patch_embed(video, visible_idx, w.weight, w.bias, pos)
        if self.run_length_embed is not None:  # a token without run information stands for itself (r = 1)
            rl = visible_idx.run_length if packed else None
            x = x + (self.run_length_embed.weight[0] if rl is None else self.run_length_embed(rl - 1))
        return self.norm(run_blocks(self.blocks, x, seq=visible_idx.ragged() if packed else None))
