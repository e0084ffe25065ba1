"""Helpers for measuring MAR + static-tubelet dropping (``bench step --variants --shards``, ``demo --static``).

With static tubelets dropped the token count depends on the content, so FLOPs cannot be counted on a
meta-device clip as :func:`marvit.bench.flops.count_flops` does: they are counted with torch's
``FlopCounterMode`` (multiply-adds, as fvcore counts) on a real batch, through exactly the forward the
training step runs, and reported per clip with the mean kept-token count.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from marvit.model import MARModel
from marvit.model.packed import Packed
from marvit.train.scheme import Scheme


def with_static(scheme: Scheme, threshold: float | None = None, drop: bool | str = True) -> Scheme:
    """``scheme`` with ``mask.drop_static`` set (and ``mask.static_threshold`` when given)."""
    mask = copy.deepcopy(scheme.mask)
    mask.drop_static = drop
    if threshold is not None:
        mask.static_threshold = threshold
    return dataclasses.replace(scheme, mask=mask)


@torch.no_grad()
def measured_flops(model: MARModel, scheme: Scheme, video: torch.Tensor, train: bool) -> dict:
    """GFLOPs per clip (multiply-adds) of the forward ``scheme`` runs on ``video`` (training: the training
    mask, static tubelets dropped where the scheme drops them, and the decoder; else the evaluation mask),
    and the mean visible tokens per clip. The model's mode is left as it was."""
    was = model.training
    model.train(train)
    b = video.shape[0]
    gen = torch.Generator(device=video.device).manual_seed(0)
    if train:
        vis, tgt = scheme.train_indices(b, gen, video.device)
    else:
        vis, tgt = scheme.eval_indices(b, video.device), None
    vis = scheme.static_dropped(video, vis, train=train)
    with FlopCounterMode(display=False) as counter:
        model(video, vis, tgt if train and scheme.with_decoder else None)
    model.train(was)
    if isinstance(vis, Packed):
        tokens = sum(vis.lengths) / b
    else:
        tokens = (
            float(vis.shape[1])
            if vis is not None
            else float(scheme.grid[0] * scheme.grid[1] * scheme.grid[2])
        )
    return {"gflops": counter.get_total_flops() / 2 / b / 1e9, "visible_tokens": tokens}


def demo_step_times(shards: str, iters: int = 10, warmup: int = 2, batch: int = 16) -> dict:
    """Training-step time of the demo's model (marvit/configs/demo.yaml) under the standard scheme, MAR and
    MAR + static dropping, interleaved on one batch of validation clips from ``shards`` (data loading
    excluded): per-iteration milliseconds, medians, and the per-iteration MAR / MAR + static ratios."""
    import statistics
    import time

    from marvit.bench.step import train_step
    from marvit.demo import _val_clips, demo_config
    from marvit.model import build_model
    from marvit.pipeline.manifest import load_manifest
    from marvit.train.optim import build_optimizer
    from marvit.train.scheme import resolve

    cfg = demo_config()
    cfg.data.root = shards
    cfg.model.num_classes = len(load_manifest(shards)["classes"])
    video = _val_clips(cfg, batch)
    label = torch.arange(video.shape[0]) % cfg.model.num_classes
    jobs = {}
    for name in ("standard", "mar"):
        c = copy.deepcopy(cfg)
        c.train.scheme = name
        c, scheme = resolve(c)
        torch.manual_seed(0)
        model = build_model(c.model, with_decoder=scheme.with_decoder).train()
        jobs[name] = (model, build_optimizer(model, c.train, 1e-4), scheme)
    model, opt, scheme = jobs["mar"]
    jobs["mar_static"] = (model, opt, with_static(scheme))  # the same model, static tubelets dropped
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for i in range(warmup + iters):
        for name, (m, o, s) in jobs.items():
            t0 = time.perf_counter()
            train_step(m, o, s, video, label, gen, None)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    ratios = [a / b for a, b in zip(times["mar"], times["mar_static"])]
    return {"batch": video.shape[0], "threads": torch.get_num_threads(), "times_ms": times,
            "median_ms": {k: statistics.median(v) for k, v in times.items()},
            "mar_over_mar_static_per_iteration": ratios, "median_ratio": statistics.median(ratios)}  # fmt: skip


if __name__ == "__main__":
    import json
    import sys

    # python -m marvit.bench.static SHARDS [ITERS]: the demo model's step times, interleaved
    print(json.dumps(demo_step_times(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10), indent=1))
