"""The GPU data path beside the model's step: does decoding keep up with MAR's training step?

On a CUDA device (``marvit doctor``): a clip set written on the spot (:mod:`marvit.bench.clipset`, 320x240,
96 frames, `marvit convert`'s encoding) is read by the DALI loader ("mixed" decoding on the GPU's video
decoders, the recipe's augmentation, 16x224 clips) with 1, 2, 4 and 7 pipelines per rank
(``data.dali_pipelines``), measuring loader clips/s and decoded frames/s
(:func:`marvit.bench.pipeline.pipeline_sweep`); then a ViT-B MAR training step (50% masking, bf16) is
timed at the same batch (:func:`marvit.bench.step.run`). Data keeps up when the best pipeline count
delivers at least the step's clips/s. Elsewhere it says why it did not run; ``marvit bench pipeline`` measures
the same loader sweep on any machine.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CLIPS = 64  # videos in the clip set
TIMED_CLIPS = 256  # clips timed per pipeline count
BATCH = 8


def measure(device: torch.device, counts: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The data path report: ``{"pipelines": [sweep rows], "mar_step_clips_per_s", "keeps_up", ...}``, or
    ``{"skipped": why}`` where it cannot run."""
    from marvit.pipeline.dali_loader import dali_available

    if device.type != "cuda":
        return {"skipped": "the GPU data path needs a CUDA device (`marvit bench pipeline` measures the CPU)"}
    if not dali_available():
        return {"skipped": "DALI is not installed or cannot decode here"}
    from marvit.bench.clipset import write_clip_set
    from marvit.bench.pipeline import PIPELINES, _extract, decode_rule, decode_work, pipeline_sweep
    from marvit.bench.step import StepOptions, run
    from marvit.config import DataConfig
    from marvit.pipeline.shards import find_shards

    cfg = DataConfig(backend="dali", num_frames=16, img_size=224, test_short_side=224, batch_size=BATCH,
                     num_workers=max(2, (os.cpu_count() or 2) // 2), sampling="kinetics",
                     sampling_rate=4)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="marvit_datapath_") as tmp:
        root = write_clip_set(Path(tmp) / "clips", clips=CLIPS)
        items, _ = _extract(find_shards(root, "train"), Path(tmp))
        rule = decode_rule("dali")
        decoded = decode_work(items, cfg, [rule])[rule]
        sweep = pipeline_sweep(cfg, "train", str(root), counts or PIPELINES, TIMED_CLIPS, decoded, device)
    step = run(StepOptions(preset="vit_b", batch=BATCH, mask_ratio=0.5, iters=5, warmup=2, device=str(device),
                           progress=False))  # fmt: skip
    need = step["results"][0]["train"]["mar_clips_per_s"]
    best = max((r for r in sweep if "clips_per_s" in r), key=lambda r: r["clips_per_s"], default=None)
    return {
        "clip_set": f"{CLIPS} clips of 96 frames at 320x240, read as 16x224 clips (stride 4), batch {BATCH}",
        "decoded_frames_per_clip": decoded,
        "pipelines": sweep,
        "mar_step_clips_per_s": need,
        "best_pipelines": best["pipelines"] if best else None,
        "keeps_up": bool(best and best["clips_per_s"] >= need),
    }


def format_report(rep: dict[str, Any]) -> str:
    """The data path section of the doctor's table."""
    if "skipped" in rep:
        return f"data path: skipped ({rep['skipped']})"
    from marvit.bench.pipeline import sweep_table

    verdict = "keeps up" if rep["keeps_up"] else "does NOT keep up"
    return "\n".join([
        f"data path: {rep['clip_set']}, {rep['decoded_frames_per_clip']:.0f} decoded frames per clip",
        sweep_table(rep["pipelines"]),
        f"ViT-B MAR 50% training step: {rep['mar_step_clips_per_s']:.1f} clips/s; data {verdict} "
        f"(best: {rep['best_pipelines']} pipelines)",
    ])  # fmt: skip
