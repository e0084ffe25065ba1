"""A synthetic action data set whose class is the motion, never the look of a single frame.

Each video shows one flat-colored shape (triangle, bar, L, kite or T) over a noisy gradient background.
Its class is how the shape moves: it translates (right, left, down, up, or diagonally), rotates clockwise
or counter-clockwise, or grows or shrinks. Everything a single frame shows is drawn from the same
distribution in every class: the position wraps around the frame edges (a torus), so it is uniform in
every frame; the orientation is uniform; the radius is log-uniform in every frame because growing and
shrinking run as a sawtooth with a random phase, and the other classes draw a random fixed radius from
the same law. Shapes, colors, speeds and noise are random per video. So a model that sees one frame is at
chance, and one that sees the motion is not.

Videos are rendered with numpy (2x2 supersampling for smooth edges) and encoded to H.264 mp4 with PyAV.
Per-video randomness comes from ``numpy.random.default_rng([seed, class, index])``, so a seed gives the
same pixels whatever the number of worker processes. Output in OUT::

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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from marvit.pipeline.video import encode_h264, worker_context

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

# Shapes as unions of convex polygons in unit coordinates (x right, y down), none rotationally symmetric.
SHAPES: dict[str, list[list[tuple[float, float]]]] = {
    "triangle": [[(1.0, 0.0), (-0.7, 0.65), (-0.7, -0.65)]],
    "bar": [[(-1.0, -0.3), (1.0, -0.3), (1.0, 0.3), (-1.0, 0.3)]],
    "L": [[(-0.75, -0.75), (-0.25, -0.75), (-0.25, 0.75), (-0.75, 0.75)],
          [(-0.75, 0.3), (0.75, 0.3), (0.75, 0.75), (-0.75, 0.75)]],
    "kite": [[(1.0, 0.0), (0.0, 0.5), (-0.8, 0.0), (0.0, -0.5)]],
    "T": [[(-0.8, -0.75), (0.8, -0.75), (0.8, -0.3), (-0.8, -0.3)],
          [(-0.22, -0.75), (0.22, -0.75), (0.22, 0.8), (-0.22, 0.8)]],
}  # fmt: skip
SHAPE_NAMES = sorted(SHAPES)

R_MIN, R_MAX = 0.09, 0.25  # shape radius as a fraction of the frame size (log-uniform in between)


def flip_map(num_classes: int) -> dict[int, int]:
    """Class index -> class index after a horizontal flip (dx -> -dx, clockwise <-> counter-clockwise)."""
    names = CLASS_NAMES[:num_classes]
    out = {}
    for i, (_, (dx, dy), rot, scale) in enumerate(CLASS_SPECS[:num_classes]):
        mirrored = next(
            (
                j
                for j, (_, (dx2, dy2), rot2, sc2) in enumerate(CLASS_SPECS)
                if (dx2, dy2, rot2, sc2) == (-dx, dy, -rot, scale)
            ),
            i,
        )
        # a mirror class outside the chosen subset cannot be a label: keep the class (make_synthetic warns)
        out[i] = mirrored if mirrored < len(names) else i
    return out


def _mirror_outside(i: int, num_classes: int) -> bool:
    _, (dx, dy), rot, scale = CLASS_SPECS[i]
    return any(
        (dx2, dy2, rot2, sc2) == (-dx, dy, -rot, scale) and j >= num_classes
        for j, (_, (dx2, dy2), rot2, sc2) in enumerate(CLASS_SPECS)
    )


def _video_params(seed: int, cls: int, index: int, frames: int, size: int) -> dict:
    rng = np.random.default_rng([seed, cls, index])
    c_bg = rng.uniform(0, 255, 3)
    while True:  # a shape color that stands out from the background
        c_fg = rng.uniform(0, 255, 3)
        if np.linalg.norm(c_fg - c_bg) > 110:
            break
    log_lo, log_hi = math.log(R_MIN * size), math.log(R_MAX * size)
    return dict(
        shape=SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))],
        bg=c_bg.tolist(),
        fg=c_fg.tolist(),
        gradient=rng.uniform(-40, 40, 2).tolist(),  # background slope over the frame, per axis
        noise=float(rng.uniform(2.0, 10.0)),
        x0=float(rng.uniform(0, size)),
        y0=float(rng.uniform(0, size)),
        angle0=float(rng.uniform(0, 2 * math.pi)),
        log_r0=float(rng.uniform(log_lo, log_hi)),
        speed=float(rng.uniform(0.8, 2.0) * size / 64),  # px per frame
        spin=float(math.radians(rng.uniform(5.0, 12.0))),  # rad per frame
        grow=float(rng.uniform(0.03, 0.07)),  # log-radius per frame
        noise_seed=int(rng.integers(2**31)),
    )


def _inside(u: np.ndarray, v: np.ndarray, shape: str) -> np.ndarray:
    """Boolean mask of points (u, v) in unit shape coordinates that fall inside ``shape``."""
    hit = np.zeros(u.shape, bool)
    for poly in SHAPES[shape]:
        pts = np.asarray(poly)
        area = np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1])
        if area < 0:
            pts = pts[::-1]
        inside = np.ones(u.shape, bool)
        for (ax, ay), (bx, by) in zip(pts, np.roll(pts, -1, axis=0)):
            inside &= (bx - ax) * (v - ay) - (by - ay) * (u - ax) >= 0
        hit |= inside
    return hit


def render_video(cls: int, params: dict, frames: int, size: int) -> np.ndarray:
    """Render one video of class ``cls``: ``uint8 (T, size, size, 3)``."""
    _, (dx, dy), rot, scale = CLASS_SPECS[cls]
    ss = 2  # supersampling factor per axis
    t = np.arange(frames, dtype=np.float64)
    norm = math.hypot(dx, dy) or 1.0
    cx = (params["x0"] + params["speed"] * dx / norm * t) % size  # (T,)
    cy = (params["y0"] + params["speed"] * dy / norm * t) % size
    angle = params["angle0"] + rot * params["spin"] * t
    log_lo, log_hi = math.log(R_MIN * size), math.log(R_MAX * size)
    if scale:  # sawtooth in log radius with a random phase: log-uniform in every frame
        log_r = log_lo + (params["log_r0"] - log_lo + scale * params["grow"] * t) % (log_hi - log_lo)
    else:
        log_r = np.full(frames, params["log_r0"])
    radius = np.exp(log_r)

    g = (np.arange(size * ss) + 0.5) / ss  # supersampled pixel centers
    X, Y = g[None, None, :], g[None, :, None]  # (1, 1, S) and (1, S, 1)
    # toroidal offsets from the center: the shape wraps around the frame edges
    ddx = (X - cx[:, None, None] + size / 2) % size - size / 2  # (T, S, S)
    ddy = (Y - cy[:, None, None] + size / 2) % size - size / 2
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    r = radius[:, None, None]
    u = (cos * ddx + sin * ddy) / r  # inverse rotation into shape coordinates
    v = (-sin * ddx + cos * ddy) / r
    alpha = _inside(u, v, params["shape"]).astype(np.float32)
    alpha = alpha.reshape(frames, size, ss, size, ss).mean(axis=(2, 4))[..., None]  # (T, H, W, 1)

    lin = (np.arange(size) + 0.5) / size - 0.5
    gx, gy = params["gradient"]
    bg = np.asarray(params["bg"], np.float32) + (gx * lin[None, :, None] + gy * lin[:, None, None])
    fg = np.asarray(params["fg"], np.float32)
    img = bg[None] * (1 - alpha) + fg * alpha  # (T, H, W, 3)
    noise = np.random.default_rng(params["noise_seed"]).normal(0, params["noise"], img.shape)
    return np.clip(img + noise, 0, 255).round().astype(np.uint8)


def _make_one(job: tuple) -> tuple[str, int]:
    out, rel, cls, index, seed, frames, size = job
    params = _video_params(seed, cls, index, frames, size)
    data = encode_h264(render_video(cls, params, frames, size), fps=25, threads=1)
    path = Path(out) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return rel, len(data)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    if workers == 1:
        for job in jobs:
            nbytes += _make_one(job)[1]
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=worker_context()) as pool:
            for _, n in pool.map(_make_one, jobs, chunksize=4):
                nbytes += n
                bar.update()
    bar.close()

    for split in ("train", "val"):
        lines = [f"{rel} {cls}\n" for rel, (s, cls) in split_of.items() if s == split]
        _write_text(out / f"{split}.csv", "".join(lines))
    _write_text(out / "classes.txt", "".join(f"{n}\n" for n in names))
    _write_text(
        out / "flip_map.json", json.dumps({str(k): v for k, v in flip_map(classes).items()}, indent=1)
    )
    unsafe = [CLASS_NAMES[i] for i, j in flip_map(classes).items() if i == j and _mirror_outside(i, classes)]
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
