"""AdamW parameter groups with layer-wise lr decay, and the per-iteration warm-up + cosine schedule.

Each group carries an ``lr_scale`` (MAE style): layer ``i`` of ``L + 1`` gets ``decay ** (L + 1 - i)``, with
the patch embedding at layer 0 and heads/decoder at the top. Norms, biases (every 1-D parameter) and the
model's ``no_weight_decay()`` tokens get no weight decay. ``scope="weights"`` (the official MAR optimizer:
biases and norms sit in its BN group at the full rate) applies the layer's ``lr_scale`` to those
weight-decayed matrices only, every no-decay parameter keeping scale 1; ``scope="all"`` (MAE / VideoMAE)
scales every parameter of the layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from marvit.config import TrainConfig


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float, scope: str = "weights"
) -> list[dict]:
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    num_layers = model.num_layers() if hasattr(model, "num_layers") else 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip or name.endswith(".bias")
        layer = model.layer_id(name) if hasattr(model, "layer_id") else 0
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": 1.0 if (no_decay and scope == "weights") else layer_decay ** (num_layers - 1 - layer),
            }  # fmt: skip
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay, cfg.layer_decay_scope)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    params = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    # the fused kernel updates every tensor of a group at once (CPU and CUDA): the per-tensor loop of the
    # default implementation costs as much as a small model's backward on a CPU
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(params, lr=lr, betas=cfg.betas, fused=fused)


def cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float, start: float = 0.0) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup`` steps, then cosine to ``floor`` at ``total``."""
    if step < warmup:
        return start + (peak - start) * step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
