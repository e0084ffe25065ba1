"""Multi-view evaluation: softmax scores averaged over every view of a video, then top-1 and top-5.

The loader yields each validation video as ``clips x crops`` rows tagged with its ``video_id``; scores are
summed per video on every rank and gathered once at the end (one host sync per evaluation, not per step).
MAR models are evaluated with the evaluation mask at their trained ratio (cell running: the fixed,
spatially repeated pattern); ``mask_ratio=None`` evaluates on every token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from marvit.config import Config, MaskConfig
from marvit.model import build_model, make_mask, visible_indices
from marvit.model.masking import num_visible
from marvit.pipeline.manifest import atomic_write_json


def eval_mask_indices(mask_cfg: MaskConfig | None, grid, batch: int, device) -> torch.Tensor | None:
    """Visible indices of the evaluation mask (B, N_vis), or None for every token."""
    if mask_cfg is None or mask_cfg.strategy == "none" or mask_cfg.ratio == 0:
        return None
    gen = torch.Generator(device=device).manual_seed(1234)  # fixed: the same test mask every evaluation
    m = make_mask(mask_cfg.strategy, mask_cfg.ratio, grid, batch=batch, train=False, generator=gen,
                  cell=mask_cfg.cell, spatial="repeated", device=device)  # fmt: skip
    return visible_indices(m, num_visible(mask_cfg.strategy, mask_cfg.ratio, grid, mask_cfg.cell))


@torch.no_grad()
def evaluate(
    model, loader, mask_cfg: MaskConfig | None, grid, device, amp_dtype=None, progress=False
) -> dict:
    """Top-1/top-5 over videos with softmax scores averaged over views. ``model`` is the bare MARModel."""
    was_training = model.training
    model.eval()
    scores: dict[int, torch.Tensor] = {}
    labels: dict[int, int] = {}
    ids_all, probs_all, labels_all = [], [], []
    masks: dict[int, torch.Tensor | None] = {}  # the evaluation mask is fixed: one per batch size
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        video = batch["video"]
        b = video.shape[0]
        if b not in masks:
            masks[b] = eval_mask_indices(mask_cfg, grid, b, device)
        vis = masks[b]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(video, vis)["logits"]
        probs_all.append(logits.float().softmax(-1))
        ids_all.append(batch["video_id"])
        labels_all.append(batch["label"])
    model.train(was_training)
    ids = torch.cat(ids_all).cpu() if ids_all else torch.zeros(0, dtype=torch.long)  # sync point
    probs = torch.cat(probs_all).cpu() if probs_all else torch.zeros(0, 1)
    labs = torch.cat(labels_all).cpu() if labels_all else torch.zeros(0, dtype=torch.long)
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (ids, probs, labs))
        ids = torch.cat([g[0] for g in gathered])
        probs = torch.cat([g[1] for g in gathered])
        labs = torch.cat([g[2] for g in gathered])
    for i, p, y in zip(ids.tolist(), probs, labs.tolist()):
        if i < 0:  # padding rows some loaders add to keep batches full
            continue
        scores[i] = scores[i] + p if i in scores else p.clone()
        labels[i] = y
    return summarize(scores, labels)


def summarize(scores: dict[int, torch.Tensor], labels: dict[int, int]) -> dict:
    if not scores:
        return {"top1": 0.0, "top5": 0.0, "num_videos": 0}
    keys = sorted(scores)
    s = torch.stack([scores[k] for k in keys])
    y = torch.tensor([labels[k] for k in keys])
    k5 = min(5, s.shape[1])
    top = s.topk(k5, dim=1).indices
    return {
        "top1": float((top[:, 0] == y).float().mean() * 100),
        "top5": float((top == y[:, None]).any(1).float().mean() * 100),
        "num_videos": len(keys),
    }


def main(cfg: Config, checkpoint: str, views: str | None, no_mask: bool) -> int:
    """``marvit eval CONFIG --checkpoint DIR``: multi-view top-1/top-5 as JSON (and eval.json beside it)."""
    from marvit.train.checkpoint import load_checkpoint
    from marvit.train.loop import build_data_loader, pick_device, resolve_scheme

    cfg = resolve_scheme(cfg)
    if views is not None:
        try:
            clips, crops = (int(v) for v in views.lower().split("x"))
        except ValueError:
            print(f"marvit eval: --views {views!r}: expected CLIPSxCROPS such as 5x3")
            return 2
        cfg.data.test_clips, cfg.data.test_crops = clips, crops
    device = pick_device(cfg.train.device, 0)
    model = build_model(cfg.model, with_decoder=False).to(device)
    load_checkpoint(checkpoint, model)
    loader = build_data_loader(cfg, "val", train=False, rank=0, world=1, device=device)
    mask_cfg = None if (no_mask or cfg.train.scheme == "standard") else cfg.mask
    res = evaluate(model, loader, mask_cfg, cfg.model.grid, device, progress=True)
    res.update(checkpoint=str(checkpoint), views=f"{cfg.data.test_clips}x{cfg.data.test_crops}",
               mask=None if mask_cfg is None else f"{mask_cfg.strategy}@{mask_cfg.ratio}")  # fmt: skip
    atomic_write_json(Path(checkpoint) / "eval.json", res, indent=2)
    print(json.dumps(res))
    return 0
