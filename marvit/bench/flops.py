"""FLOPs and parameters of a model, counted the way the field does (one multiply-add = one FLOP, as fvcore).

The count is measured, not modelled: the model is built on the meta device (no memory, no time) and run
under ``torch.utils.flop_counter.FlopCounterMode``, which sees every matmul, convolution and attention
kernel (the attention matmuls included); its multiply-add count is half its FLOP count. Elementwise work
(norms, GELU, softmax) is not counted, as in fvcore. The encoder, the head and the decoder are counted apart.

The model is the one the config builds, so each layout is counted as it runs: the standard scheme
(``head="linear"``) is VideoMAE's fine-tuning layout (no per-token final norm; mean, ``fc_norm``, linear);
MAR's encoder keeps its final norm before the bridging classifier; pretraining (``head="none"``) has no head.
"""

from __future__ import annotations

import json as _json

import torch
from torch.utils.flop_counter import FlopCounterMode

from marvit.config import ModelConfig
from marvit.model import build_model, make_mask, split_indices
from marvit.model.mar import TRAIN_ONLY
from marvit.model.masking import num_targets, num_visible


def _macs(fn, *args) -> tuple[float, object]:
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return counter.get_total_flops() / 2, out


def count_flops(
    cfg: ModelConfig,
    mask: str = "cell_running",
    ratio: float = 0.5,
    train: bool = False,
    decoder_keep: float = 1.0,
    cell: tuple[int, int] = (2, 2),
) -> dict:
    """GFLOPs (multiply-adds) of one view: encoder over the visible tokens, head, and with ``train`` the decoder.

    ``ratio=0`` or ``mask="none"`` gives the full clip (the standard scheme with ``cfg.head="linear"``).
    """
    strategy = "none" if ratio == 0 else mask
    n_vis = num_visible(strategy, ratio, cfg.grid, cell)
    with torch.device("meta"):
        model = build_model(cfg, with_decoder=train)
    params = sum(p.numel() for p in model.parameters())
    params_infer = params - (sum(p.numel() for n, p in model.named_parameters() if n.startswith(TRAIN_ONLY)))
    video = torch.empty(1, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size, device="meta")
    m = make_mask(strategy, ratio, cfg.grid, batch=1, cell=cell, device="cpu")
    vis, msk = split_indices(m, n_vis)
    vis_arg = None if strategy == "none" else vis.to("meta")
    enc, tokens = _macs(model.forward_features, video, vis_arg)
    head = _macs(model.forward_head, tokens)[0] if model.head is not None else 0.0  # none in pretraining
    result = {
        "preset": cfg.name,
        "frames": cfg.num_frames,
        "size": cfg.img_size,
        "head": cfg.head,
        "mask": strategy,
        "mask_ratio": ratio,
        "tokens": cfg.num_tokens,
        "visible_tokens": n_vis,
        "encoder_gflops": enc / 1e9,
        "head_gflops": head / 1e9,
        "gflops": (enc + head) / 1e9,
        "params_m": params_infer / 1e6,
    }
    if train:
        n_t = num_targets(cfg.num_tokens - n_vis, decoder_keep)
        if n_t:
            dec, _ = _macs(model.forward_decoder, tokens, vis_arg, msk[:, :n_t].to("meta"))
        else:
            dec = 0.0
        result.update(
            decoder_tokens=n_t, decoder_gflops=dec / 1e9, train_gflops=(enc + head + dec) / 1e9,
            train_params_m=params / 1e6,
        )  # fmt: skip
    return result


def main(
    preset: str, frames: int, size: int, mask_ratio: float, mask: str, head: str, classes: int, train: bool,
    decoder_keep: float, as_json: bool,
) -> int:  # fmt: skip
    cfg = ModelConfig.from_name(preset, num_frames=frames, img_size=size, head=head, num_classes=classes)
    cfg.validate()
    res = count_flops(cfg, mask, mask_ratio, train, decoder_keep)
    std_cfg = ModelConfig.from_name(
        preset, num_frames=frames, img_size=size, head="linear", num_classes=classes
    )
    res["standard_gflops"] = count_flops(std_cfg, "none", 0.0)["gflops"]
    res["fraction_of_standard"] = res["gflops"] / res["standard_gflops"]
    if as_json:
        print(_json.dumps(res))
        return 0
    rows = [(k, f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in res.items()]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
