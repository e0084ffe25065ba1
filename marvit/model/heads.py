"""Classification heads: MAR's bridging classifier and the standard linear head.

The bridging classifier closes the semantic gap between the reconstruction-shaped encoder features and the
class: a linear projection to a narrower width, a few transformer blocks over the visible tokens (no
positional embeddings and no mask tokens: both hurt accuracy in the paper), mean over tokens, LayerNorm,
dropout and the class projection. The linear head is VideoMAE's fine-tuning head (``use_mean_pooling``):
mean over the tokens of an encoder without a final norm, LayerNorm (VideoMAE's ``fc_norm``), dropout, Linear.

``INIT_SCALE`` multiplies the class projection's weight and bias after initialization: VideoMAE's fine-tuning
uses ``init_scale=0.001``; MAR's bridging head leaves it unscaled (its ``TransformerBridgingClsHead`` scales
only when ``VIDEO.HEAD.INIT_SCALE`` is set, and no MAR config sets it).
"""

from __future__ import annotations

import torch
from torch import nn

from marvit.model.layers import Block, LayerNorm, run_blocks
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
        mlp_ratio: float = 4.0, dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.proj = nn.Linear(dim, width, bias=False)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, bias="qkv") for _ in range(depth))
        self.norm = LayerNorm(width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, num_classes)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, seq: Ragged | None = None) -> torch.Tensor:
        """(B, N_vis, D), or packed (M, D) with layout ``seq`` -> (B, classes)."""
        x = self.proj(x)  # (B, N_vis, width), or packed (M, width)
        x = run_blocks(self.blocks, x, self.grad_checkpointing, seq)
        return self.fc(self.dropout(self.norm(pool(x, seq))))
