"""Classification heads: MAR's bridging classifier and the standard linear head.

The bridging classifier closes the semantic gap between the reconstruction-shaped encoder features and the
class: a linear projection to a narrower width, a few transformer blocks over the visible tokens (no
positional embeddings and no mask tokens: both hurt accuracy in the paper), mean over tokens, LayerNorm,
dropout and the class projection. The linear head is VideoMAE's fine-tuning head: mean, LayerNorm, Linear.
"""

from __future__ import annotations

import torch
from torch import nn

from marvit.model.layers import Block, LayerNorm, run_blocks


class LinearHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, classes)
        return self.fc(self.dropout(self.norm(x.mean(dim=1))))


class BridgingClassifier(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N_vis, D) -> (B, classes)
        x = self.proj(x)  # (B, N_vis, width)
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.fc(self.dropout(self.norm(x.mean(dim=1))))
