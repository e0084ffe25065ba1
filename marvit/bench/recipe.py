"""``marvit recipe CONFIG [key=value ...] --gpus N [--json]``: the recipe a run would train, and its cost.

The recipe itself (batch and accumulation, peak lr, layer decay and its scope, schedule in steps, evaluation,
augmentation, flip pairs, test views) is :func:`marvit.train.recipe.resolve_recipe`, the one ``marvit train``
runs and prints; here it is shown beside the official run with differences marked, plus the run's cost:
training GFLOPs per clip (multiply-adds, fvcore's counting, measured on the meta device by
:func:`marvit.bench.flops.count_flops`: encoder over the visible tokens, head, decoder), the total over the
schedule (a backward pass counted as two forwards), and GPU-hours at a stated MFU on a named GPU.
The paper's reference point: SSv2 ViT-B trains in 5.9 h with MAR vs 11.8 h standard on 32 V100s.
"""

from __future__ import annotations

import json

from marvit.bench.flops import count_flops
from marvit.config import Config
from marvit.errors import InputError
from marvit.pipeline.manifest import load_manifest
from marvit.train.recipe import TRAIN_VIDEOS, differences, format_table, official_for, resolve_recipe
from marvit.train.scheme import resolve

# dense fp16/bf16 tensor-core peaks (FLOP/s, one multiply-add = 2 FLOPs), from the vendors' data sheets
GPU_PEAK = {"v100": 125e12, "a100": 312e12, "h100": 989e12}
PAPER = "paper: SSv2 ViT-B on 32 V100s, MAR 5.9 h (189 GPU-h) vs standard 11.8 h (378 GPU-h)"


def train_videos_of(cfg: Config) -> int | None:
    """Videos in the training split: data.root's manifest, else the paper's data set size, else None."""
    if cfg.data.root:
        try:
            info = load_manifest(cfg.data.root)
        except ValueError as e:
            raise InputError(f"data.root={cfg.data.root!r}: {e}") from e
        if info is not None and "train" in info["splits"]:
            return int(info["splits"]["train"].get("num_samples", 0)) or None
    return TRAIN_VIDEOS.get(cfg.model.num_classes)


def cost(cfg: Config, scheme, recipe, gpu: str, mfu: float) -> dict:
    """Training multiply-adds per clip, in all, and GPU-hours on ``gpu`` at ``mfu``."""
    m = scheme.mask
    ratio = m.ratio if m.strategy != "none" else 0.0
    flops = count_flops(cfg.model, m.strategy if ratio else "none", ratio, train=scheme.with_decoder,
                        decoder_keep=scheme.decoder_keep, cell=m.cell)  # fmt: skip
    per_clip = flops.get("train_gflops", flops["gflops"])  # forward GMACs of one training clip
    clips = recipe.global_batch * (recipe.total_steps or 0)
    total_macs = 3 * per_clip * 1e9 * clips  # forward + backward (2x forward)
    hours = 2 * total_macs / (GPU_PEAK[gpu] * mfu) / 3600
    return {"train_gflops_per_clip": per_clip, "clips": clips, "total_pflops": total_macs / 1e15,
            "gpu": gpu, "mfu": mfu, "gpu_hours": hours, "wall_hours": hours / recipe.world}  # fmt: skip


def main(
    cfg: Config, gpus: int, as_json: bool = False, gpu: str = "v100", mfu: float = 0.3,
    train_videos: int | None = None,
) -> int:  # fmt: skip
    if gpus < 1:
        raise InputError(f"--gpus {gpus}: expected a positive number of GPUs")
    if gpu not in GPU_PEAK:
        raise InputError(f"--gpu {gpu!r}: expected one of {sorted(GPU_PEAK)}")
    if not 0 < mfu <= 1:
        raise InputError(f"--mfu {mfu}: expected a fraction in (0, 1]")
    if train_videos is not None and train_videos < 1:
        raise InputError(f"--train-videos {train_videos}: expected a positive number")
    cfg, scheme = resolve(cfg)
    videos = train_videos if train_videos is not None else train_videos_of(cfg)
    recipe = resolve_recipe(cfg, gpus, train_videos=videos)
    official = official_for(cfg)
    c = cost(cfg, scheme, recipe, gpu, mfu) if recipe.total_steps else None
    if as_json:
        out = recipe.to_dict()
        out["official_run"] = official[0] if official else None
        out["official"] = {k: v for k, (v, _) in official[1].items()} if official else None
        out["sources"] = {k: src for k, (_, src) in official[1].items()} if official else None
        out["differences"] = (
            {k: list(v) for k, v in differences(recipe, official[1]).items()} if official else {}
        )
        out["cost"] = c
        print(json.dumps(out))
        return 0
    print(format_table(recipe, official, c))
    print(f"  ({PAPER})")
    return 0
