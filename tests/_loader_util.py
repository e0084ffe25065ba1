"""Tiny shard sets for the loader tests, written without marvit's own converter.

Each clip is a real H.264 mp4 (closed GOP, no B-frames, yuv420p) made with PyAV. A frame's content
encodes its index (a flat grey level ``level(i)``) and the clip's identity (a coloured bar whose width
depends on the sample), so a test can read back which frame a loader decoded. Shards follow the project
format: ``{split}-{NNNNNN}.tar`` with ``KEY.mp4``, ``KEY.cls``, ``KEY.json``, a DALI ``.idx`` beside each
shard (written by DALI's own ``wds2idx``) and ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import webdataset as wds


def level(i: int) -> int:
    """Grey level of frame ``i``: far enough apart that H.264 cannot blur one index into the next."""
    return 16 + 6 * (i % 36)


def frame_index(gray: float) -> int:
    """Inverse of :func:`level` for a decoded grey mean: the frame index modulo 36."""
    return int(round((gray - 16) / 6))


def make_frames(
    n: int, h: int = 48, w: int = 64, bar: int = 0, identical: bool = False, tag: int | None = None
) -> np.ndarray:
    """(n, h, w, 3) uint8 frames. Frame i is flat ``level(i)`` except a coloured bar of ``bar`` columns on
    the left. ``identical`` gives n copies of one structured picture (red rises left to right, green top to
    bottom, so any crop or flip shows; blue is a pattern, or the flat level ``40 + 80 * tag`` with a tag)."""
    if identical:
        yy, xx = np.mgrid[0:h, 0:w]
        blue = ((xx + yy) * 3) % 256 if tag is None else np.full_like(xx, 40 + 80 * tag)
        f = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), blue], -1)
        return np.repeat(f[None].astype(np.uint8), n, axis=0)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i] = level(i)
    if bar:
        out[:, :, :bar] = (200, 40, 40)
    return out


def encode_mp4(frames: np.ndarray, fps: int = 25, gop: int = 8, crf: int = 10) -> bytes:
    """H.264 mp4 bytes of ``frames`` (n, h, w, 3) uint8: closed GOP of ``gop``, no B-frames, yuv420p.
    ``crf=0`` is lossless (in YUV): identical input frames decode to identical frames."""
    n, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": str(crf), "g": str(gop), "bf": "0",
                     "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0"}  # fmt: skip
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def write_shards(
    root: str | Path,
    samples: list[dict],
    split: str = "train",
    per_shard: int = 4,
    classes: list[str] | None = None,
) -> Path:
    """Write ``samples`` (dicts with key, mp4 bytes, label, frames, and optional width/height) as shards.

    A sample may carry ``"json": False`` to omit frames from its json (tests the error path) or raw
    ``mp4`` bytes that are not a video (a corrupt sample)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for si in range(0, len(samples), per_shard):
        name = f"{split}-{si // per_shard:06d}.tar"
        path = root / name
        with wds.TarWriter(str(path)) as tw:
            for s in samples[si : si + per_shard]:
                meta = {"label": f"c{s['label']}", "source": f"{s['key']}.mp4", "frames": s["frames"],
                        "fps": 25, "width": s.get("width", 64), "height": s.get("height", 48)}  # fmt: skip
                tw.write({"__key__": s["key"], "mp4": s["mp4"], "cls": str(s["label"]).encode(),
                          "json": json.dumps(meta).encode()})  # fmt: skip
        subprocess.run([shutil.which("wds2idx") or "wds2idx", str(path), str(path.with_suffix(".idx"))],
                       check=True, capture_output=True)  # fmt: skip
        shards.append({"name": name, "samples": len(samples[si : si + per_shard]),
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})  # fmt: skip
    mpath = root / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {"classes": [], "splits": {}}
    n_cls = max(s["label"] for s in samples) + 1
    manifest["classes"] = classes or manifest["classes"] or [f"c{i}" for i in range(n_cls)]
    manifest["splits"][split] = {"num_samples": len(samples), "shards": shards, "skipped": []}
    mpath.write_text(json.dumps(manifest, indent=1))
    return root


def index_dataset(root: str | Path, split: str = "val", n: int = 10, per_shard: int = 2, frames: int = 12):
    """``n`` clips whose bar width (2 * (i + 1) columns) identifies sample i, label i % 3."""
    samples = []
    for i in range(n):
        f = make_frames(frames, bar=2 * (i % 20 + 1))
        samples.append({"key": f"s{i:04d}", "mp4": encode_mp4(f), "label": i % 3, "frames": frames})
    return write_shards(root, samples, split=split, per_shard=per_shard)
