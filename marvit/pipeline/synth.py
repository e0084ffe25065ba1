"""A synthetic action data set whose class is the motion, never the look of a single frame.

Each video is a random-dot kinematogram, the classic motion stimulus of vision science: bright blurred
dots on a darker noisy background, all moving with one flow field. The class is the flow: translation
(right, left, down, up, or diagonally), rotation about the frame center (clockwise or counter-clockwise),
or expansion / contraction from the center (grow, shrink). Every single frame is a uniform scatter of
dots whatever the class: translations run on a torus (dots leaving one edge come back at the other), the
rotations run in a disc that covers the frame, an expansion re-seeds at a uniform place every dot that
leaves its disc (a linear flow keeps a uniform density uniform), and the opposite motions (left, up,
counter-clockwise, shrink and the up/left diagonals) are their partners played backwards, which keeps
each frame's law and reverses the motion. Dots are also re-seeded at random (a limited lifetime) in every
class. Colors, dot count and size, speeds and noise are random per video. So a model that sees one frame
is at chance, while every 2-frame tubelet carries the motion: a tiny ViT learns it in minutes, where a
single moving shape was not learnt at all (one object gives a model too little signal per clip).

Videos are rendered with numpy and encoded to H.264 mp4 with PyAV. Per-video randomness comes from
``numpy.random.default_rng([seed, class, index])``, so a seed gives the same pixels whatever the number of
worker processes. Output in OUT::

    videos/CLASS/CLASS_0000.mp4   train.csv  val.csv  (the ``list`` format: "relative/path label")
    classes.txt (one name per line, index order)   flip_map.json   synth.json (settings and counts)

Direction-sensitive classes swap under a horizontal flip (right <-> left, clockwise <-> counter-clockwise);
``flip_map.json`` maps each class index (a JSON string key) to its index after a flip.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from marvit.pipeline.manifest import atomic_write_bytes
from marvit.pipeline.video import encode_h264, run_jobs

# name, (dx, dy) direction of translation, rotation sense (+1 = clockwise on screen), scale sense
CLASS_SPECS: list[tuple[str, tuple[float, float], int, int]] = [
    ("move_right", (1.0, 0.0), 0, 0),
    ("move_left", (-1.0, 0.0), 0, 0),
    ("move_down", (0.0, 1.0), 0, 0),
    ("move_up", (0.0, -1.0), 0, 0),
    ("rotate_cw", (0.0, 0.0), 1, 0),
    ("rotate_ccw", (0.0, 0.0), -1, 0),
    ("grow", (0.0, 0.0), 0, 1),
    ("shrink", (0.0, 0.0), 0, -1),
    ("move_down_right", (1.0, 1.0), 0, 0),
    ("move_up_left", (-1.0, -1.0), 0, 0),
    ("move_down_left", (-1.0, 1.0), 0, 0),
    ("move_up_right", (1.0, -1.0), 0, 0),
]
CLASS_NAMES = [c[0] for c in CLASS_SPECS]
MAX_CLASSES = len(CLASS_SPECS)

DOTS_PER_64SQ = (30, 60)  # dots per 64x64 pixels (uniform in between)
RESEED = 0.04  # chance per frame that a dot jumps to a uniform random place (its limited lifetime)


def _mirror(i: int) -> int:
    """The class a horizontal flip turns class ``i`` into (dx -> -dx, clockwise <-> counter-clockwise)."""
    _, (dx, dy), rot, scale = CLASS_SPECS[i]
    return next(j for j, (_, d, r, sc) in enumerate(CLASS_SPECS) if (d, r, sc) == ((-dx, dy), -rot, scale))


def flip_map(num_classes: int) -> dict[int, int]:
    """Class index -> class index after a horizontal flip, within the first ``num_classes`` classes."""
    # a mirror class outside the chosen subset cannot be a label: keep the class (make_synthetic warns)
    return {i: j if (j := _mirror(i)) < num_classes else i for i in range(num_classes)}


def _video_params(seed: int, cls: int, index: int, frames: int, size: int) -> dict:
    rng = np.random.default_rng([seed, cls, index])
    k = size / 64
    return dict(
        bg=rng.uniform(0, 100, 3).tolist(),
        fg=rng.uniform(150, 255, 3).tolist(),  # brighter than the background in every channel
        gradient=rng.uniform(-20, 20, 2).tolist(),  # background slope over the frame, per axis
        noise=float(rng.uniform(2.0, 6.0)),
        density=float(rng.uniform(*DOTS_PER_64SQ)) / 64**2,  # dots per pixel
        sigma=float(rng.uniform(1.0, 1.8) * max(k, 0.75)),  # dot radius (Gaussian sigma) in px
        speed=float(rng.uniform(1.2, 3.0) * k),  # translation, px per frame
        spin=float(math.radians(rng.uniform(3.5, 7.0))),  # rotation, rad per frame
        grow=float(rng.uniform(0.04, 0.08)),  # expansion, log-scale per frame
        sim_seed=int(rng.integers(2**31)),
    )


def _simulate(dx: float, dy: float, rot: int, scale: int, params: dict, frames: int, size: int) -> list:
    """Dot centers (N_t, 2) per frame in pixel coordinates for a forward flow (rot, scale in {0, +1})."""
    rng = np.random.default_rng(params["sim_seed"])
    c = size / 2
    if rot or scale:  # a disc around the center that covers the frame's corners
        radius = c * math.sqrt(2) + 4 * params["sigma"]
        n = rng.poisson(params["density"] * math.pi * radius**2)

        def seed_dots(m: int) -> np.ndarray:
            r = radius * np.sqrt(rng.uniform(0, 1, m))
            a = rng.uniform(0, 2 * math.pi, m)
            return np.stack([c + r * np.cos(a), c + r * np.sin(a)], 1)
    else:  # the frame itself, as a torus
        n = rng.poisson(params["density"] * size**2)

        def seed_dots(m: int) -> np.ndarray:
            return rng.uniform(0, size, (m, 2))

    pos = seed_dots(n)
    norm = math.hypot(dx, dy) or 1.0
    step = params["speed"] * np.array([dx, dy]) / norm
    cos, sin = math.cos(params["spin"]), math.sin(params["spin"])
    out = []
    for _ in range(frames):
        out.append(pos.copy())
        if rot:  # clockwise on screen (y points down)
            rel = pos - c
            pos = c + np.stack([cos * rel[:, 0] - sin * rel[:, 1], sin * rel[:, 0] + cos * rel[:, 1]], 1)
        elif scale:
            pos = c + (pos - c) * math.exp(params["grow"])
            gone = np.hypot(*(pos - c).T) > radius
            pos[gone] = seed_dots(int(gone.sum()))
        else:
            pos = (pos + step) % size
        jump = rng.uniform(0, 1, len(pos)) < RESEED
        pos[jump] = seed_dots(int(jump.sum()))
    return out


def render_video(cls: int, params: dict, frames: int, size: int) -> np.ndarray:
    """Render one video of class ``cls``: ``uint8 (T, size, size, 3)``."""
    _, (dx, dy), rot, scale = CLASS_SPECS[cls]
    # the partner motions are the forward ones played backwards (same law per frame, motion reversed)
    backwards = rot < 0 or scale < 0 or (not rot and not scale and (dy < 0 or (dy == 0 and dx < 0)))
    if backwards:
        dx, dy, rot, scale = -dx, -dy, -rot, -scale
    centers = _simulate(dx, dy, rot, scale, params, frames, size)
    if backwards:
        centers = centers[::-1]
    torus = not (rot or scale)
    g = np.arange(size) + 0.5
    two_s2 = 2 * params["sigma"] ** 2
    alpha = np.zeros((frames, size, size), np.float32)
    for t, pos in enumerate(centers):
        ddx = g[None, None, :] - pos[:, 0, None, None]  # (N, 1, S)
        ddy = g[None, :, None] - pos[:, 1, None, None]  # (N, S, 1)
        if torus:
            ddx, ddy = (ddx + size / 2) % size - size / 2, (ddy + size / 2) % size - size / 2
        if len(pos):
            alpha[t] = np.exp(-(ddx**2 + ddy**2) / two_s2).max(axis=0)

    lin = (np.arange(size) + 0.5) / size - 0.5
    gx, gy = params["gradient"]
    bg = np.asarray(params["bg"], np.float32) + (gx * lin[None, :, None] + gy * lin[:, None, None])
    fg = np.asarray(params["fg"], np.float32)
    a = alpha[..., None]
    img = bg[None] * (1 - a) + fg * a  # (T, H, W, 3)
    noise = np.random.default_rng(params["sim_seed"] + 1).normal(0, params["noise"], img.shape)
    return np.clip(img + noise, 0, 255).round().astype(np.uint8)


def _make_one(job: tuple) -> tuple[str, int]:
    out, rel, cls, index, seed, frames, size = job
    params = _video_params(seed, cls, index, frames, size)
    data = encode_h264(render_video(cls, params, frames, size), fps=25, threads=1)
    path = Path(out) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return rel, len(data)


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _check_args(classes: int, per_class: int, frames: int, size: int, val_fraction: float) -> None:
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes={classes}: must be in [1, {MAX_CLASSES}] (the motion classes available)")
    if per_class < 1:
        raise ValueError(f"per_class={per_class}: must be >= 1")
    if frames < 2:
        raise ValueError(f"frames={frames}: must be >= 2 (a motion needs two frames)")
    if size < 16 or size % 2:
        raise ValueError(f"size={size}: must be an even number >= 16 (H.264 yuv420p needs even sides)")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1)")


def make_synthetic(out: str | Path, classes: int = 6, per_class: int = 24, frames: int = 32, size: int = 64,
                   seed: int = 0, val_fraction: float = 0.25, workers: int | None = None,
                   progress: bool = True) -> dict:  # fmt: skip
    """Render and encode the data set into ``out``; returns a summary dict (also written to synth.json).

    ``workers``: processes for rendering and encoding (default: the CPU count; 1 runs in this process).
    """
    _check_args(classes, per_class, frames, size, val_fraction)
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = CLASS_NAMES[:classes]
    jobs, split_of = [], {}
    for cls, name in enumerate(names):
        order = np.random.default_rng([seed, cls, 2**31 - 1]).permutation(per_class)
        n_val = int(round(per_class * val_fraction))
        if val_fraction > 0 and per_class >= 2:
            n_val = min(max(n_val, 1), per_class - 1)
        val_idx = set(order[:n_val].tolist())
        for i in range(per_class):
            rel = f"videos/{name}/{name}_{i:04d}.mp4"
            jobs.append((str(out), rel, cls, i, seed, frames, size))
            split_of[rel] = ("val" if i in val_idx else "train", cls)

    workers = (os.cpu_count() or 1) if workers is None else workers
    workers = max(1, min(workers, len(jobs) // 8 or 1))
    bar = tqdm(total=len(jobs), desc="synth", unit="video", disable=not progress, file=sys.stderr)
    nbytes = 0
    for _, n in run_jobs(_make_one, jobs, workers, chunksize=4):
        nbytes += n
        bar.update()
    bar.close()

    for split in ("train", "val"):
        lines = [f"{rel} {cls}\n" for rel, (s, cls) in split_of.items() if s == split]
        _write_text(out / f"{split}.csv", "".join(lines))
    _write_text(out / "classes.txt", "".join(f"{n}\n" for n in names))
    flips = flip_map(classes)
    _write_text(out / "flip_map.json", json.dumps({str(k): v for k, v in flips.items()}, indent=1))
    unsafe = [CLASS_NAMES[i] for i in flips if _mirror(i) >= classes]
    if unsafe:
        print(f"synth: with {classes} classes the mirror of {unsafe} is not a class; train without flips",
              file=sys.stderr)  # fmt: skip
    summary = {
        "out": str(out),
        "flip_safe": not unsafe,
        "classes": names,
        "per_class": per_class,
        "frames": frames,
        "size": size,
        "fps": 25,
        "seed": seed,
        "val_fraction": val_fraction,
        "train": sum(1 for s, _ in split_of.values() if s == "train"),
        "val": sum(1 for s, _ in split_of.values() if s == "val"),
        "bytes": nbytes,
        "seconds": round(time.perf_counter() - t0, 3),
        "workers": workers,
    }
    _write_text(out / "synth.json", json.dumps(summary, indent=1))
    return summary


def main(out: str, classes: int = 6, per_class: int = 24, frames: int = 32, size: int = 64, seed: int = 0,
         val_fraction: float = 0.25) -> int:  # fmt: skip
    """``marvit synth``: make the data set and print a summary; 2 on bad arguments."""
    try:
        s = make_synthetic(out, classes, per_class, frames, size, seed, val_fraction)
    except ValueError as e:
        print(f"marvit synth: {e}", file=sys.stderr)
        return 2
    print(
        f"synth: {s['train']} train + {s['val']} val videos, {len(s['classes'])} classes "
        f"({', '.join(s['classes'])}), {s['frames']} frames at {s['size']}x{s['size']}, "
        f"{s['bytes'] / 1e6:.1f} MB in {s['seconds']:.1f} s -> {s['out']}"
    )
    return 0
