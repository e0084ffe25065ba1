"""``marvit bench tokens --shards DIR``: how many tokens static-tubelet dropping keeps, per clip, on real data.

Clips are read from a ``marvit convert`` output with the evaluation transform (one clip, one center crop:
``frames`` frames at ``sampling_rate``, short side ``size``), exactly as the model would see them, and each
clip's kept-token fraction is measured at several thresholds with :func:`marvit.model.static.tubelet_motion`
(mean |difference| of each 2 x patch x patch tubelet to the one a slice earlier, in [0, 1] pixels; the
first slice always kept). Two sets are reported: all tokens (static dropping alone) and the cell running
evaluation mask's visible set at 50% (MAR + static dropping, as a share of MAR's visible tokens), with the
``mask.static_min_keep`` floor applied as training applies it. Nothing here is timed.
"""

from __future__ import annotations

import json as jsonlib
import statistics
from pathlib import Path

import torch

from marvit.config import DataConfig, MaskConfig
from marvit.errors import InputError
from marvit.model.masking import eval_visible
from marvit.model.static import keep_moving, tubelet_motion
from marvit.pipeline import build_loader
from marvit.pipeline.manifest import atomic_write_bytes, atomic_write_json


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise InputError(
            f"--thresholds {text!r}: expected comma-separated numbers >= 0, such as 0.05,0.1,0.2"
        )
    return values


def _summary(fracs: list[float]) -> dict:
    q = statistics.quantiles(fracs, n=10, method="inclusive") if len(fracs) > 1 else [fracs[0]] * 9
    return {"mean": statistics.fmean(fracs), "median": statistics.median(fracs), "p10": q[0], "p90": q[-1],
            "min": min(fracs), "max": max(fracs)}  # fmt: skip


def load_clips(
    shards: str, split: str, frames: int, size: int, sampling_rate: int, clips: int, backend: str
) -> tuple[torch.Tensor, DataConfig]:
    """Up to ``clips`` evaluation clips (B, 3, T, S, S), normalized, and the data config that read them."""
    cfg = DataConfig(backend=backend, num_frames=frames, img_size=size, test_short_side=size,
                     sampling_rate=sampling_rate, test_clips=1, test_crops=1, batch_size=8, num_workers=0)  # fmt: skip
    out, n = [], 0
    for batch in build_loader(cfg, split, train=False, shards=shards):
        keep = batch["video_id"] >= 0  # padding rows some loaders add
        out.append(batch["video"][keep])
        n += int(keep.sum())
        if n >= clips:
            break
    if not out:
        raise InputError(f"--shards {shards}: no {split} clips")
    return torch.cat(out)[:clips], cfg


def measure(
    video: torch.Tensor, std: tuple[float, ...], thresholds: list[float], patch: int = 16, tubelet: int = 2,
    min_keep: float = MaskConfig().static_min_keep,
) -> dict:  # fmt: skip
    """Kept-token fractions per clip at each threshold: all tokens, and MAR's 50% cell running visible set."""
    B, _, T, H, W = video.shape
    grid = (T // tubelet, H // patch, W // patch)
    motion = tubelet_motion(video, tubelet, patch, std)  # (B, N)
    vis = eval_visible("cell_running", 0.5, grid, B, device=video.device)  # (B, N_vis)
    rows = []
    for th in thresholds:
        alone = keep_moving(motion, None, th, min_keep)
        mar = keep_moving(motion, vis, th, min_keep)
        rows.append({
            "threshold": th,
            "static_alone": _summary([n / motion.shape[1] for n in alone.lengths]),
            "mar_static": _summary([n / vis.shape[1] for n in mar.lengths]),
            "mar_static_of_all_tokens": statistics.fmean(n / motion.shape[1] for n in mar.lengths),
            "per_clip_static_alone": [n / motion.shape[1] for n in alone.lengths],
        })  # fmt: skip
    return {"clips": B, "grid": list(grid), "tokens": motion.shape[1], "mar_visible": vis.shape[1],
            "min_keep": min_keep, "results": rows}  # fmt: skip


def _table(res: dict) -> str:
    lines = [
        f"{res['shards']} ({res['split']}): {res['clips']} clips, {res['frames']} frames at stride "
        f"{res['sampling_rate']}, {res['size']}px, {res['tokens']} tokens (grid {res['grid']}), floor "
        f"{res['min_keep']:g} of the visible set",
        "threshold | kept alone: mean (p10-p90) | MAR+static: kept of MAR's visible, mean (p10-p90) | of all",
        "---|---|---|---",
    ]
    for r in res["results"]:
        a, m = r["static_alone"], r["mar_static"]
        lines.append(f"{r['threshold']:g} | {a['mean']:.1%} ({a['p10']:.1%}-{a['p90']:.1%}) | "
                     f"{m['mean']:.1%} ({m['p10']:.1%}-{m['p90']:.1%}) | {r['mar_static_of_all_tokens']:.1%}")  # fmt: skip
    return "\n".join(lines)


def main(
    shards: str, split: str = "val", frames: int = 16, size: int = 224, sampling_rate: int = 4,
    clips: int = 64, thresholds: str = "0.05,0.1,0.2", backend: str = "pyav", out: str | None = None,
    as_json: bool = False,
) -> int:  # fmt: skip
    """``marvit bench tokens``: print the table (or JSON) and write tokens.json / tokens.md under ``--out``."""
    ths = _thresholds(thresholds)
    if clips < 1 or frames < 2 or size < 16:
        raise InputError(f"--clips={clips}, --frames={frames}, --size={size}: need >= 1, >= 2 and >= 16")
    video, cfg = load_clips(shards, split, frames, size, sampling_rate, clips, backend)
    res = {"shards": shards, "split": split, "frames": frames, "size": size, "sampling_rate": sampling_rate,
           **measure(video, tuple(cfg.std), ths)}  # fmt: skip
    table = _table(res)
    if out is not None:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "tokens.json", res, indent=2)
        atomic_write_bytes(d / "tokens.md", (table + "\n").encode())
    print(jsonlib.dumps(res) if as_json else table)
    return 0
