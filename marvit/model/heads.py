"""Classification heads: MAR's bridging classifier and the standard linear head.

The bridging classifier closes the semantic gap between the reconstruction-shaped encoder features and the
class: a linear projection to a narrower width, a few transformer blocks over the visible tokens (no
positional embeddings and no mask tokens: both hurt accuracy in the paper), mean over tokens, LayerNorm,
dropout and the class projection. The linear head is VideoMAE's fine-tuning head (``use_mean_pooling``):
mean over the tokens of an encoder without a final norm, LayerNorm (VideoMAE's ``fc_norm``), dropout, Linear.

Two of the paper's ablations (Table VII) are options of the bridging classifier: ``pos_embed`` adds the fixed
sinusoid table (at the bridging width) to the visible tokens' projections, and ``mask_tokens`` runs the
blocks over every position, a learned mask token (plus its table row) at each masked one. The MLP head
(Table VI) replaces the transformer blocks by mean, LayerNorm, Linear-GELU, dropout, Linear.

``INIT_SCALE`` multiplies the class projection's weight and bias after initialization: VideoMAE's fine-tuning
uses ``init_scale=0.001``; MAR's bridging head leaves it unscaled (its ``TransformerBridgingClsHead`` scales
only when ``VIDEO.HEAD.INIT_SCALE`` is set, and no MAR config sets it).
"""

from __future__ import annotations

import torch
from torch import nn

from marvit.model.layers import Block, LayerNorm, run_blocks, sinusoid_table
from marvit.model.packed import Ragged, segment_mean


def pool(x: torch.Tensor, seq: Ragged | None) -> torch.Tensor:
    """Mean over each clip's tokens: (B, N, D) -> (B, D), or packed (M, D) with layout ``seq`` -> (B, D)."""
    return x.mean(dim=1) if seq is None else segment_mean(x, seq)


class LinearHead(nn.Module):
    INIT_SCALE = 1e-3  # VideoMAE run_class_finetuning.py --init_scale default

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)  # VideoMAE's fc_norm
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, seq: Ragged | None = None) -> torch.Tensor:
        """(B, N, D), or packed (M, D) with layout ``seq`` -> (B, classes)."""
        return self.fc(self.dropout(self.norm(pool(x, seq))))


class BridgingClassifier(nn.Module):
    INIT_SCALE = 1.0  # MAR's official configs set no VIDEO.HEAD.INIT_SCALE

    def __init__(
        self, dim: int, num_classes: int, width: int = 512, depth: int = 2, heads: int = 4,
        mlp_ratio: float = 4.0, dropout: float = 0.1, num_tokens: int = 0, pos_embed: bool = False,
        mask_tokens: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.proj = nn.Linear(dim, width, bias=False)
        self.use_pos = pos_embed or mask_tokens  # a mask token without a position would say nothing
        if self.use_pos:
            if num_tokens <= 0:
                raise ValueError("the bridging classifier's position table needs num_tokens > 0")
            self.register_buffer("pos_embed", sinusoid_table(num_tokens, width), persistent=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if mask_tokens else None
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, bias="qkv") for _ in range(depth))
        self.norm = LayerNorm(width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, num_classes)
        self.grad_checkpointing = False

    def forward(
        self, x: torch.Tensor, visible_idx: torch.Tensor | None = None, seq: Ragged | None = None
    ) -> torch.Tensor:
        """x: (B, N_vis, D) visible tokens at ``visible_idx`` (B, N_vis) (None: every token) -> (B, classes);
        or packed (M, D) with its layout ``seq`` and token ids ``visible_idx`` (M,)."""
        x = self.proj(x)  # (B, N_vis, width), or packed (M, width)
        if self.use_pos:
            if seq is not None:
                if self.mask_token is not None:
                    raise ValueError("model.bridge_mask_tokens needs every position: not with a packed batch")
                x = x + self.pos_embed.to(x.dtype)[visible_idx]  # (M, width)
            else:
                b, n = x.shape[:2]
                if visible_idx is None:
                    visible_idx = torch.arange(n, device=x.device).expand(b, n)
                pos = self.pos_embed.to(x.dtype)  # (N, width)
                x = x + pos[visible_idx]
                if self.mask_token is not None and n < pos.shape[0]:
                    # every position: the mask token (plus its table row) where the encoder saw nothing
                    full = (self.mask_token.to(x.dtype) + pos).expand(b, -1, -1).clone()  # (B, N, width)
                    full.scatter_(1, visible_idx[..., None].expand(-1, -1, x.shape[2]), x)
                    x = full
        x = run_blocks(self.blocks, x, self.grad_checkpointing, seq)
        return self.fc(self.dropout(self.norm(pool(x, seq))))


class MLPHead(nn.Module):
    """Table VI's MLP classifier on the final-normed visible tokens: mean, LayerNorm, Linear-GELU, dropout,
    Linear."""

    INIT_SCALE = 1.0

    def __init__(self, dim: int, num_classes: int, width: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)
        self.hidden = nn.Sequential(nn.Linear(dim, width), nn.GELU())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, seq: Ragged | None = None) -> torch.Tensor:
        """(B, N, D), or packed (M, D) with layout ``seq`` -> (B, classes)."""
        return self.fc(self.dropout(self.hidden(self.norm(pool(x, seq)))))
