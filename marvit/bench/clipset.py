"""A small clip set written on the spot, for measuring a data path where no data set is at hand.

``write_clip_set(out)`` renders ``clips`` videos (a smooth random texture drifting in one of four
directions, plus mild noise: texture and motion as in natural video, not a flat test card), encodes them as
``marvit convert`` does by default (H.264, closed GOP,
fastdecode tune: :class:`marvit.pipeline.encoding.Encoding`) and writes them as one split of WebDataset shards with DALI indexes and a manifest: what
``build_loader`` and ``marvit bench pipeline`` read. ``marvit doctor`` measures its GPU data path on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from marvit.pipeline.encoding import Encoding
from marvit.pipeline.manifest import MANIFEST, atomic_write_json
from marvit.pipeline.video import encode_h264
from marvit.pipeline.writer import ShardWriter

CLASSES = ["right", "left", "down", "up"]


def _frames(i: int, frames: int, height: int, width: int) -> np.ndarray:
    """(frames, H, W, 3) uint8: clip ``i``'s texture drifting 2 px per frame in direction ``i % 4``."""
    rng = np.random.default_rng(i)
    small = rng.uniform(40, 215, (height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    big = np.kron(small, np.ones((16, 16, 1), np.float32))  # blocky, smoothed by the shifts below
    big = (big + np.roll(big, 8, 0) + np.roll(big, 8, 1) + np.roll(big, (8, 8), (0, 1))) / 4
    dy, dx = [(0, 2), (0, -2), (2, 0), (-2, 0)][i % 4]
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        view = np.roll(big, (dy * t, dx * t), (0, 1))[:height, :width]
        out[t] = np.clip(view + rng.normal(0, 3, view.shape), 0, 255)
    return out


def write_clip_set(out: str | Path, clips: int = 32, frames: int = 96, height: int = 240, width: int = 320,
                   split: str = "train", per_shard: int = 16) -> Path:  # fmt: skip
    """Write the clip set to ``out`` (a directory `build_loader` reads as ``data.root``); returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    enc = Encoding()  # `marvit convert`'s defaults
    shards = []
    for s in range(-(-clips // per_shard)):
        w = ShardWriter(out, split, s)
        for i in range(s * per_shard, min(clips, (s + 1) * per_shard)):
            data = encode_h264(_frames(i, frames, height, width), fps=25, encoding=enc)
            meta = {"class": i % 4, "label": CLASSES[i % 4], "frames": frames, "fps": 25.0, "width": width,
                    "height": height}  # fmt: skip
            w.add(f"{split}_{i:07d}", data, i % 4, meta)
        shards.append(w.finish())
    manifest = {
        "classes": CLASSES,
        "splits": {split: {"num_samples": clips, "shards": shards, "skipped": []}},
    }
    atomic_write_json(out / MANIFEST, manifest)
    return out
