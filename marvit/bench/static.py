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
