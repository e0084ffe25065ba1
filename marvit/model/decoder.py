"""VideoMAE's reconstruction decoder and its normalized-pixel target.

The decoder sees the projected visible tokens plus a learned mask token for every position to reconstruct,
each with the fixed sinusoid table at the decoder's width, and predicts the normalized pixels of the masked
tubelets only. Used in training only.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from marvit.kernels.patch_embed import gather_tubelets
from marvit.model.layers import Block, LayerNorm, run_blocks, sinusoid_table
from marvit.model.packed import Ragged

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Decoder(nn.Module):
    def __init__(
        self, num_tokens: int, dim: int, depth: int, heads: int, out_dim: int, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.register_buffer("pos_embed", sinusoid_table(num_tokens, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, bias="qv") for _ in range(depth))
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        self.grad_checkpointing = False

    def forward(
        self,
        x_vis: torch.Tensor,
        mask_token: torch.Tensor,
        visible_idx: torch.Tensor,
        target_idx: torch.Tensor,
    ) -> torch.Tensor:
        """x_vis: (B, N_vis, Dd) projected tokens; target_idx: (B, N_t) positions to predict -> (B, N_t, out)."""
        pos = self.pos_embed.to(x_vis.dtype)
        b, n_t = target_idx.shape
        x = torch.cat([x_vis + pos[visible_idx], mask_token.expand(b, n_t, -1) + pos[target_idx]], dim=1)
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.head(self.norm(x[:, x.shape[1] - n_t :]))  # only the positions to reconstruct

    def forward_packed(
        self,
        x_vis: torch.Tensor,
        mask_token: torch.Tensor,
        tokens: torch.Tensor,
        seq: Ragged,
        target_idx: torch.Tensor,
    ) -> torch.Tensor:
        """x_vis: (M, Dd) packed projected tokens with ids ``tokens`` (M,) and layout ``seq``; target_idx
        (B, N_t) -> (B, N_t, out). Each clip's sequence is its own visible tokens then its N_t mask tokens,
        as in :meth:`forward`, packed: clip i starts at cu_seqlens[i] + i * N_t."""
        pos = self.pos_embed.to(x_vis.dtype)
        b, n_t = target_idx.shape
        m, dim = x_vis.shape
        clips = torch.arange(b, device=x_vis.device)
        vis_rows = torch.arange(m, device=x_vis.device) + seq.clip_ids * n_t  # (M,)
        tgt_rows = (seq.cu_seqlens[1:] + clips * n_t)[:, None] + torch.arange(n_t, device=x_vis.device)
        x = x_vis.new_zeros(m + b * n_t, dim)
        x = x.index_put((vis_rows,), (x_vis + pos[tokens]).to(x.dtype))
        masked = mask_token.reshape(1, 1, dim) + pos[target_idx]  # (B, N_t, Dd); an fp32 token under autocast
        x = x.index_put((tgt_rows.flatten(),), masked.flatten(0, 1).to(x.dtype))
        x = run_blocks(self.blocks, x, self.grad_checkpointing, seq.shifted(n_t))  # (M + B * N_t, Dd)
        return self.head(self.norm(x[tgt_rows]))  # (B, N_t, out): only the positions to reconstruct


def tubelet_targets(
    video: torch.Tensor, tubelet: int, patch: int, index: torch.Tensor | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD, normalize: bool = True,
) -> torch.Tensor:  # fmt: skip
    """Normalized-pixel targets ``(B, N_t, t*p*p*C)`` for the tokens ``index`` (all tokens when None).

    Un-normalize the input, cut it into tubelets, normalize each tubelet per channel over its t*p*p pixels
    with the unbiased std (``(x - mean) / (std + 1e-6)``), flatten as (pixels, channel), as VideoMAE does.
    The per-tubelet, per-channel normalization cancels the un-normalization's affine map up to the 1e-6, so
    the default ImageNet ``mean``/``std`` serve whatever ``data.mean``/``data.std`` the input had.
    ``normalize=False`` (Table VIII's unnormalized target): the un-normalized pixels themselves, in [0, 1]
    for ImageNet-normalized input, in the same (pixels, channel) order.
    """
    with torch.no_grad():
        x = gather_tubelets(video, index, tubelet, patch).flatten(3)  # (B, N_t, C, t*p*p): selected only
        m = torch.as_tensor(mean, dtype=video.dtype, device=video.device).view(1, 1, -1, 1)
        s = torch.as_tensor(std, dtype=video.dtype, device=video.device).view(1, 1, -1, 1)
        x = x * s + m
        if not normalize:
            return rearrange(x, "b n c p -> b n (p c)")
        x = (x - x.mean(dim=-1, keepdim=True)) / (x.var(dim=-1, unbiased=True, keepdim=True).sqrt() + 1e-6)
        return rearrange(x, "b n c p -> b n (p c)")
