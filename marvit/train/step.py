"""One training micro-step: masks, forward, reconstruction targets and loss, as every caller runs it.

The training loop, ``marvit bench step``, ``marvit profile`` and ``marvit doctor`` call :func:`forward_loss`
and then ``backward()`` the loss, so a benchmark times exactly what training runs. No host sync here: the
losses stay tensors on the device.
"""

from __future__ import annotations

import torch
from torch import nn

from marvit.model import mar_loss
from marvit.train.scheme import Scheme


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def forward_loss(
    model: nn.Module,
    scheme: Scheme,
    video: torch.Tensor,
    target: torch.Tensor | None,
    generator: torch.Generator,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """One micro-batch's losses: ``loss`` and its parts ``ce`` / ``mse`` where the scheme has them.

    video: (B, C, T, H, W) normalized; target: labels (B,) or soft targets (B, classes) from mixup, ignored
    when the scheme has no labels. ``model`` may be DDP-wrapped (its forward then syncs gradients in
    backward, unless the caller is inside ``no_sync``).
    """
    vis, tgt = scheme.train_indices(video.shape[0], generator, video.device)  # (B, N_vis), (B, N_t)
    vis = scheme.static_dropped(video, vis, train=True)  # packed when mask.drop_static drops static tubelets
    with torch.autocast(video.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(video, vis, tgt)  # logits (B, classes) unless no head; pred (B, N_t, t*p*p*C)
    pixels = unwrap(model).targets(video, tgt, scheme.normalize_targets) if tgt is not None else None
    return mar_loss(out.get("logits"), target if scheme.labels else None, out.get("pred"), pixels,
                    scheme.recon_weight, scheme.label_smoothing)  # fmt: skip
