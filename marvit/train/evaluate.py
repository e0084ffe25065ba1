"""Multi-view evaluation: softmax scores averaged over every view of a video, then top-1 and top-5.

The loader yields each validation video as ``clips x crops`` rows tagged with its ``video_id``; scores are
summed per video on every rank and gathered once at the end (one host sync per evaluation, not per step).
MAR models are evaluated with the evaluation mask at their trained ratio (cell running: the fixed,
spatially repeated pattern); ``scheme=None`` evaluates on every token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from marvit.config import Config
from marvit.errors import InputError
from marvit.model import build_model
from marvit.train.fsio import write_json
from marvit.train.scheme import Scheme, resolve


@torch.no_grad()
def evaluate(model, loader, scheme: Scheme | None, device, amp_dtype=None, progress: bool = False) -> dict:
    """Top-1/top-5 over videos with softmax scores averaged over views. ``model`` is the bare MARModel;
    ``scheme`` gives the evaluation mask (None: every token)."""
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
            masks[b] = scheme.eval_indices(b, device) if scheme is not None else None
        vis = masks[b] if scheme is None else scheme.static_dropped(video, masks[b], train=False)
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


def available_memory() -> int:
    """Bytes this machine can still give (``MemAvailable``; the physical total where that is unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_views_fit(cfg: Config, what: str) -> None:
    """A test batch holds every view of ``data.batch_size`` videos, as uint8 and as float32, beside one
    video's decoded clips at ``data.test_short_side``: refuse a view count that would take more than half of
    the available memory (``--views 1000x100`` once asked for 39 GB)."""
    d = cfg.data
    views = d.test_clips * d.test_crops
    per_view = d.batch_size * 3 * d.num_frames * d.img_size**2 * (1 + 4)  # (B, V, T, S, S, 3) u8 + f32
    decoded = d.test_clips * d.num_frames * d.test_short_side**2 * 3 * 2  # frames and their resize, u8
    need, have = views * per_view + decoded, available_memory()
    if need > have // 2:
        fit = max(1, (have // 2) // (per_view + decoded // views))
        raise InputError(
            f"{what}: {views} views of {d.num_frames}x{d.img_size}x{d.img_size} in batches of {d.batch_size} "
            f"need {need / 2**30:.1f} GiB, more than half of the {have / 2**30:.1f} GiB available; at most "
            f"about {fit} views fit"
        )


def main(cfg: Config, checkpoint: str, views: str | None, no_mask: bool, out: str = "eval_out") -> int:
    """``marvit eval CONFIG --checkpoint DIR``: multi-view top-1/top-5 as JSON, printed, then written to
    ``OUT/eval.json`` (``--out``; never into the checkpoint unless ``--out`` names it).

    DIR is a checkpoint directory or a run directory (its best checkpoint, else its newest)."""
    from marvit.train.checkpoint import find_checkpoint, load_checkpoint
    from marvit.train.setup import build_data_loader, check_data, pick_device

    cfg, scheme = resolve(cfg)
    if not scheme.labels:
        raise InputError("train.scheme=pretrain: a pretrained model has no head to evaluate")
    if views is not None:
        try:
            clips, crops = (int(v) for v in views.lower().split("x"))
            if clips < 1 or crops < 1:
                raise ValueError
        except ValueError:
            raise InputError(
                f"--views {views!r}: expected CLIPSxCROPS of positive numbers, such as 5x3"
            ) from None
        cfg.data.test_clips, cfg.data.test_crops = clips, crops
    check_views_fit(cfg, f"--views {views}" if views else "data.test_clips x data.test_crops")
    ckpt = find_checkpoint(checkpoint)  # before any data work: a bad path fails at once
    check_data(cfg, need_val=True)
    device = pick_device(cfg.train.device, 0)
    model = build_model(cfg.model, with_decoder=False).to(device)
    load_checkpoint(ckpt, model)
    loader = build_data_loader(cfg, "val", train=False, rank=0, world=1, device=device)
    if no_mask:
        scheme = scheme.without_eval_mask()
    res = evaluate(model, loader, scheme, device, progress=True)
    m = scheme.mask
    res.update(checkpoint=str(ckpt), views=f"{cfg.data.test_clips}x{cfg.data.test_crops}",
               mask=f"{m.strategy}@{m.ratio}" if scheme.eval_masked else None)  # fmt: skip
    print(json.dumps(res), flush=True)  # the result first: a full disk below loses no work
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(out_dir)) from None
    write_json(out_dir / "eval.json", res, indent=2)
    return 0
