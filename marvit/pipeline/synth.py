"""A synthetic action data set whose class is the motion, never the look of a single frame.

Natural video is redundant: a scene is mostly smooth surfaces, and it changes little from one frame to the
next, so a masked space-time patch can be inferred from its visible neighbours. MAR relies on that. The
default style, ``textures``, has it: each video is one random colour scene (band-limited noise over three
octaves of spatial frequency, most of its energy at wavelengths of 30-60 px at 64x64, squashed pointwise
into smooth surfaces with soft edges between them, in two random colour directions on a random base colour)
that moves as a whole with the class's motion: translation
(right, left, down, up, or diagonally), rotation about the frame center (clockwise or counter-clockwise), or
expansion / contraction about the center (grow, shrink). The texture is statistically stationary and
isotropic, so a rotated or translated texture is another sample of the same law; expansion would coarsen
it, so each octave layer slides through a fixed window of frequencies and fades out at the ends of the
window, where it wraps round (a visual Shepard zoom; every frame's spectrum keeps the same law). The
octave phase is random per video in every class. So one frame of any class is a sample of the same
random texture (a single frame is at chance), while every 2-frame tubelet carries the motion.

The older style, ``dots`` (random-dot kinematograms: sharp blurred dots, all moving with one flow, on a
noisy background), is kept for comparison: its class is also the motion, but dots are placed
independently, so a masked tubelet cannot be predicted from its neighbours (``marvit.bench.redundancy``
measures both).

Videos are rendered with numpy and encoded to H.264 mp4 with PyAV. Per-video randomness comes from
``numpy.random.default_rng([seed, class, index])``, so a seed gives the same pixels whatever the number of
worker processes. Output in OUT::

    videos/CLASS/CLASS_0000.mp4   train.csv  val.csv  (the ``list`` format: "relative/path label")
    classes.txt (one name per line, index order)   flip_map.json   synth.json (settings and counts)

``background="static"`` (textures only) renders textured objects moving over a still background instead
(:func:`render_objects`): content with static tubelets, as natural video has.

Direction-sensitive classes swap under a horizontal flip (right <-> left, clockwise <-> counter-clockwise);
``flip_map.json`` maps each class index (a JSON string key) to its index after a flip.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from marvit.errors import InputError
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
STYLES = ("textures", "dots")
BACKGROUNDS = ("moving", "static")  # the whole scene moves, or objects move over a still background

# textures: octave layers, each a periodic band-limited noise field sampled at a scale of its own
OCTAVES = 3  # layers; their frame frequencies span OCTAVES octaves above the coarsest
FIELD = 128  # side of a layer's periodic noise field (field pixels)
FIELD_FREQ = 1 / 16  # centre of a layer's frequency band, cycles per field pixel
BAND = 0.35  # the band's width: std of log2(frequency)
EDGE_GAIN = 2.0  # sharpness of the edges between surfaces (tanh gain; 0 = none)
COARSEST = 120.0  # wavelength (px at 64x64) of a layer at the bottom of the window, where its weight is 0

# dots
DOTS_PER_64SQ = (70, 110)  # dots per 64x64 pixels (uniform in between)
RESEED = 0.02  # chance per frame that a dot jumps to a uniform random place (its limited lifetime)


def _mirror(i: int) -> int:
    """The class a horizontal flip turns class ``i`` into (dx -> -dx, clockwise <-> counter-clockwise)."""
    _, (dx, dy), rot, scale = CLASS_SPECS[i]
    return next(j for j, (_, d, r, sc) in enumerate(CLASS_SPECS) if (d, r, sc) == ((-dx, dy), -rot, scale))


def flip_map(classes: int | Sequence[str]) -> dict[int, int]:
    """Label -> label after a horizontal flip, over the chosen classes (the first N, or these names)."""
    specs = class_specs(classes)
    # a mirror class outside the chosen subset cannot be a label: keep the class (make_synthetic warns)
    return {i: specs.index(j) if (j := _mirror(c)) in specs else i for i, c in enumerate(specs)}


def class_specs(classes: int | Sequence[str]) -> list[int]:
    """The CLASS_SPECS rows of the chosen classes, in label order: the first ``classes`` rows, or the rows
    of these names (``["move_right", "move_left", ...]``)."""
    if isinstance(classes, int):
        if not 1 <= classes <= MAX_CLASSES:
            raise InputError(
                f"classes={classes}: must be in [1, {MAX_CLASSES}] (the motion classes available)"
            )
        return list(range(classes))
    names = list(classes)
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise InputError(f"classes={names}: expected distinct names out of {CLASS_NAMES}")
    return [CLASS_NAMES.index(n) for n in names]


TRANSLATIONS = [n for n, _, rot, scale in CLASS_SPECS if not rot and not scale]  # the 8 directions


def _video_params(seed: int, cls: int, index: int, frames: int, size: int, style: str = "textures") -> dict:
    """The random settings of video ``index`` of class ``cls``: from (seed, class, index) alone."""
    rng = np.random.default_rng([seed, cls, index])
    if style == "dots":
        return _dot_params(rng, size)
    if style != "textures":
        raise InputError(f"style={style!r}: expected one of {list(STYLES)}")
    k = size / 64
    colors = rng.normal(0, 1, (2, 3))
    colors /= np.linalg.norm(colors, axis=1, keepdims=True)
    colors *= np.array([rng.uniform(35, 55), rng.uniform(12, 25)])[:, None]  # per unit of field std
    return dict(
        style="textures",
        base=rng.uniform(80, 175, 3).tolist(),
        colors=colors.tolist(),  # (2, 3): the RGB direction and strength of each of the two fields
        noise=float(rng.uniform(0.5, 2.0)),  # per-pixel noise std (grey levels)
        speed=float(rng.uniform(0.6, 1.4) * k),  # translation, px per frame
        spin=float(math.radians(rng.uniform(2.0, 4.0))),  # rotation, rad per frame
        grow=float(rng.uniform(0.02, 0.04)),  # expansion, log-scale per frame
        phase=float(rng.uniform(0, 1)),  # where the octave layers sit in their frequency window
        sim_seed=int(rng.integers(2**31)),
    )


def _periodic_field(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance periodic noise (n, n), band-limited around FIELD_FREQ."""
    fy, fx = np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]
    f = np.maximum(np.hypot(fx, fy), 1e-9)
    band = np.exp(-0.5 * (np.log2(f / FIELD_FREQ) / BAND) ** 2)
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) * band
    x = np.fft.irfft2(spec, s=(n, n))
    return x / x.std()


def sample_periodic(field: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a periodic ``field (n, m)`` at real coordinates ``y, x`` (any equal shape).

    Sample (i, j) sits at coordinate (i, j) and the field repeats with its size (linear sampling is enough: the
    fields are band-limited well below their grid); the same as ``scipy.ndimage.map_coordinates(field,
    [y, x], order=1, mode="grid-wrap")``, which the tests hold it to where scipy is installed.
    """
    n, m = field.shape
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    i0, j0 = y0.astype(np.int64) % n, x0.astype(np.int64) % m
    i1, j1 = (i0 + 1) % n, (j0 + 1) % m
    top = field[i0, j0] * (1 - fx) + field[i0, j1] * fx
    bottom = field[i1, j0] * (1 - fx) + field[i1, j1] * fx
    return top * (1 - fy) + bottom * fy


def _render_textures(cls: int, params: dict, frames: int, size: int) -> np.ndarray:
    """A smooth random colour texture moving with the flow of class ``cls``: ``uint8 (T, size, size, 3)``."""
    _, (dx, dy), rot, scale = CLASS_SPECS[cls]
    rng = np.random.default_rng(params["sim_seed"])
    fields = [[_periodic_field(rng, FIELD) for _ in range(OCTAVES)] for _ in range(2)]  # (2, OCTAVES)
    offsets = rng.uniform(0, FIELD, (2, OCTAVES, 2))
    g = np.arange(size) + 0.5 - size / 2
    x, y = np.meshgrid(g, g)  # (S, S) pixel coordinates about the center, y down
    f_min = 64 / (COARSEST * size)  # cycles per frame pixel at the bottom of the window
    step = params["speed"] * np.array([dx, dy]) / (math.hypot(dx, dy) or 1.0)
    colors = np.asarray(params["colors"], np.float32)
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    # the scene point seen at pixel (x, y) at time t: the class's motion undone; (T, S, S) each
    a = -rot * params["spin"] * t  # rot=+1 turns the scene clockwise on screen
    px = np.cos(a) * x - np.sin(a) * y - step[0] * t
    py = np.sin(a) * x + np.cos(a) * y - step[1] * t
    zoom = scale * params["grow"] * t[:, 0, 0] / math.log(2)  # (T,) octaves the scene has grown by
    acc = np.zeros((2, frames, size, size))
    for j in range(OCTAVES):
        lam = (j + params["phase"] - zoom) % OCTAVES  # (T,) position in the window: 0 = coarsest
        weight = np.sin(np.pi * lam / OCTAVES)[:, None, None] ** 2  # 0 at both ends, where it wraps round
        s = (f_min * 2**lam / FIELD_FREQ)[:, None, None]  # field pixels per frame pixel
        for c in range(2):
            acc[c] += weight * sample_periodic(
                fields[c][j], py * s + offsets[c, j, 0], px * s + offsets[c, j, 1]
            )
    # a pointwise squashing turns the smooth field into surfaces with soft edges between them (it commutes
    # with the motion, so every frame keeps the same law)
    acc = np.tanh(EDGE_GAIN * acc) / np.tanh(EDGE_GAIN) if EDGE_GAIN > 0 else acc
    img = np.asarray(params["base"], np.float32) + np.einsum("cthw,ck->thwk", acc, colors)  # (T, S, S, 3)
    img += np.random.default_rng(params["sim_seed"] + 1).normal(0, params["noise"], img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def render_video(cls: int, params: dict, frames: int, size: int) -> np.ndarray:
    """Render one video of class ``cls`` in the style of ``params``: ``uint8 (T, size, size, 3)``."""
    if params.get("style", "dots") == "textures":
        return _render_textures(cls, params, frames, size)
    return _render_dots(cls, params, frames, size)


def _dot_params(rng: np.random.Generator, size: int) -> dict:
    k = size / 64
    return dict(
        style="dots",
        bg=rng.uniform(0, 100, 3).tolist(),
        fg=rng.uniform(150, 255, 3).tolist(),  # brighter than the background in every channel
        gradient=rng.uniform(-20, 20, 2).tolist(),  # background slope over the frame, per axis
        noise=float(rng.uniform(2.0, 6.0)),
        density=float(rng.uniform(*DOTS_PER_64SQ)) / 64**2,  # dots per pixel
        sigma=float(rng.uniform(1.0, 1.8) * max(k, 0.75)),  # dot radius (Gaussian sigma) in px
        speed=float(rng.uniform(0.8, 1.8) * k),  # translation, px per frame
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


def _render_dots(cls: int, params: dict, frames: int, size: int) -> np.ndarray:
    """The random-dot kinematogram of class ``cls``: ``uint8 (T, size, size, 3)``."""
    _, (dx, dy), rot, scale = CLASS_SPECS[cls]
    # the partner motions are the forward ones played backwards (same law per frame, motion reversed)
    backwards = rot < 0 or scale < 0 or (not rot and not scale and (dy < 0 or (dy == 0 and dx < 0)))
    if backwards:
        dx, dy, rot, scale = -dx, -dy, -rot, -scale
    centers = _simulate(dx, dy, rot, scale, params, frames, size)
    if backwards:
        centers = centers[::-1]
    alpha = _dot_alpha(centers, params["sigma"], size, torus=not (rot or scale))
    lin = (np.arange(size) + 0.5) / size - 0.5
    gx, gy = params["gradient"]
    bg = np.asarray(params["bg"], np.float32) + (gx * lin[None, :, None] + gy * lin[:, None, None])
    fg = np.asarray(params["fg"], np.float32)
    a = alpha[..., None]
    img = bg[None] * (1 - a) + fg * a  # (T, H, W, 3)
    noise = np.random.default_rng(params["sim_seed"] + 1).normal(0, params["noise"], img.shape)
    return np.clip(img + noise, 0, 255).round().astype(np.uint8)


def _dot_alpha(centers: list, sigma: float, size: int, torus: bool) -> np.ndarray:
    """Each frame's dots as Gaussian spots of peak 1, where they overlap the brighter one: ``float32 (T, S, S)``.

    Each dot is evaluated only over the window of 4 sigma around it (beyond that a spot is below 1/1000 of its
    peak) and the frame keeps the maximum over dots: the cost is dots x window, not dots x frame. On the torus
    the windows wrap round; otherwise the parts outside the frame are dropped.
    """
    r = int(math.ceil(4 * sigma))
    offs = np.arange(-r, r + 1)
    alpha = np.zeros((len(centers), size * size), np.float32)
    for t, pos in enumerate(centers):
        if not len(pos):
            continue
        cx, cy = np.floor(pos[:, 0]).astype(int), np.floor(pos[:, 1]).astype(int)  # the pixel under each dot
        xi = cx[:, None] + offs[None, :]  # (N, K) pixel columns of each dot's window
        yi = cy[:, None] + offs[None, :]  # (N, K) pixel rows
        gx = np.exp(-((xi + 0.5 - pos[:, :1]) ** 2) / (2 * sigma**2))  # separable Gaussian at pixel centers
        gy = np.exp(-((yi + 0.5 - pos[:, 1:]) ** 2) / (2 * sigma**2))
        val = gy[:, :, None] * gx[:, None, :]  # (N, K, K)
        if torus:
            xi, yi = xi % size, yi % size
            keep = np.ones(val.shape, bool)
        else:
            keep = ((yi >= 0) & (yi < size))[:, :, None] & ((xi >= 0) & (xi < size))[:, None, :]
        flat = (np.clip(yi, 0, size - 1)[:, :, None] * size + np.clip(xi, 0, size - 1)[:, None, :])[keep]
        np.maximum.at(alpha[t], flat, val[keep].astype(np.float32))
    return alpha.reshape(len(centers), size, size)


# --------------------------------------------------------------------------------------------------------
# --background static: textured objects moving over a still textured background
# --------------------------------------------------------------------------------------------------------
# The default synthetic set moves the whole scene, so no tubelet ever repeats: the worst case for dropping
# static tubelets. Natural video is mostly the other case (a still background, a few things that move), and
# this style renders it: the background is one still frame of the ``textures`` style (the same smooth random
# colour scene, with fresh per-pixel sensor noise of 0.5-2 grey levels each frame, so "static" means
# "changes by well under the 0.1 threshold", not "identical"), and 2-3 textured discs move over it with the
# class's flow: translation (wrapping round the frame), rotation about the frame center, or expansion /
# contraction about it (the radius wraps round between 8% and 50% of the side). An object's look (its texture
# and size) is drawn independently of the class, so the class is still in the motion only: one frame is at
# chance. The objects cover about 5-15% of a frame; the rest is static.


def _still(params: dict, size: int) -> np.ndarray:
    """One frame of the textures style with no motion: float32 (size, size, 3), noise-free."""
    still = dict(params, speed=0.0, spin=0.0, grow=0.0, noise=0.0)
    return render_video(0, still, 1, size)[0].astype(np.float32)


def render_objects(cls: int, params: dict, frames: int, size: int) -> np.ndarray:
    """Render video of class ``cls``: ``uint8 (T, size, size, 3)``; ``params`` from the textures style."""
    _, (dx, dy), rot, scale = CLASS_SPECS[cls]
    rng = np.random.default_rng(params["sim_seed"] + 7)
    k = size / 64
    background = _still(params, size)  # (S, S, 3)
    n_obj = int(rng.integers(2, 4))
    g = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(g, g, indexing="ij")  # (S, S) pixel rows, columns
    center = (size - 1) / 2
    img = np.repeat(background[None], frames, axis=0)  # (T, S, S, 3)
    t = np.arange(frames, dtype=np.float64)
    for _ in range(n_obj):
        radius = float(rng.uniform(0.12, 0.17) * size)
        scene = np.asarray(
            params["base"]
        )  # each channel 70-100 grey levels away from the scene's base colour
        base = scene + np.where(scene > 127, -1, 1) * rng.uniform(70, 100, 3)
        obj_params = dict(params, base=base.tolist(), sim_seed=int(rng.integers(2**31)),
                          colors=(np.asarray(params["colors"]) * rng.choice([-1.3, 1.3])).tolist())  # fmt: skip
        sprite = _still(obj_params, size)  # its texture, carried rigidly with the object
        sy, sx = rng.uniform(0, size, 2)  # where in its texture the object's center sits
        if rot == 0 and scale == 0:  # translation, wrapping round the frame
            speed = float(rng.uniform(2.0, 3.0) * k)
            unit = np.array([dx, dy]) / math.hypot(dx, dy)
            x0, y0 = rng.uniform(0, size, 2)
            cx, cy = (x0 + unit[0] * speed * t) % size, (y0 + unit[1] * speed * t) % size
        else:
            a0 = rng.uniform(0, 2 * math.pi)
            if rot != 0:  # orbit about the frame center (rot=+1: clockwise on screen, y down)
                r = np.full(frames, rng.uniform(0.18, 0.36) * size)
                a = a0 + rot * math.radians(rng.uniform(6.0, 9.0)) * t
            else:  # expansion / contraction about the center: log-radius wraps round in [8%, 50%] of the side
                lo, hi = math.log(0.08 * size), math.log(0.5 * size)
                r = np.exp(lo + (rng.uniform(lo, hi) - lo + scale * rng.uniform(0.06, 0.09) * t) % (hi - lo))
                a = np.full(frames, a0)
            cx, cy = center + r * np.cos(a), center + r * np.sin(a)
        for f in range(frames):
            ox, oy = xx - cx[f], yy - cy[f]  # offset from the object's center
            if rot == 0 and scale == 0:  # the shortest way round the torus
                ox, oy = (ox + size / 2) % size - size / 2, (oy + size / 2) % size - size / 2
            alpha = np.clip(radius + 0.5 - np.hypot(ox, oy), 0.0, 1.0)[..., None]  # (S, S, 1) soft edge
            tex = sprite[
                np.round(sy + oy).astype(int) % size, np.round(sx + ox).astype(int) % size
            ]  # (S, S, 3)
            img[f] = img[f] * (1 - alpha) + tex * alpha
    img += np.random.default_rng(params["sim_seed"] + 1).normal(0, params["noise"], img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _make_one(job: tuple) -> tuple[str, int]:
    out, rel, cls, index, seed, frames, size, style, background = job
    params = _video_params(seed, cls, index, frames, size, style)
    if background == "static":
        pixels = render_objects(cls, params, frames, size)
    else:
        pixels = render_video(cls, params, frames, size)
    data = encode_h264(pixels, fps=25, threads=1)
    path = Path(out) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return rel, len(data)


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _check_args(
    per_class: int, frames: int, size: int, val_fraction: float, style: str, background: str = "moving"
) -> None:
    if style not in STYLES:
        raise InputError(f"style={style!r}: expected one of {list(STYLES)}")
    if background not in BACKGROUNDS:
        raise InputError(f"background={background!r}: expected one of {list(BACKGROUNDS)}")
    if background == "static" and style != "textures":
        raise InputError(
            f"background=static: objects over a still background need style=textures, not {style!r}"
        )
    if per_class < 1:
        raise InputError(f"per_class={per_class}: must be >= 1")
    if frames < 2:
        raise InputError(f"frames={frames}: must be >= 2 (a motion needs two frames)")
    if size < 16 or size % 2:
        raise InputError(f"size={size}: must be an even number >= 16 (H.264 yuv420p needs even sides)")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction={val_fraction}: must be in [0, 1)")


def make_synthetic(out: str | Path, classes: int | Sequence[str] = 6, per_class: int = 24, frames: int = 32,
                   size: int = 64, seed: int = 0, val_fraction: float = 0.25, workers: int | None = None,
                   progress: bool = True, style: str = "textures", background: str = "moving") -> dict:  # fmt: skip
    """Render and encode the data set into ``out``; returns a summary dict (also written to synth.json).

    ``classes``: the first N rows of CLASS_SPECS, or a list of their names (labels follow the list's order;
    a class's videos are the same whichever others are chosen).

    ``workers``: processes for rendering and encoding (default: the CPU count; 1 runs in this process).
    """
    specs = class_specs(classes)
    _check_args(per_class, frames, size, val_fraction, style, background)
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [CLASS_NAMES[c] for c in specs]
    jobs, split_of = [], {}
    for label, (cls, name) in enumerate(zip(specs, names)):
        order = np.random.default_rng([seed, cls, 2**31 - 1]).permutation(per_class)
        n_val = int(round(per_class * val_fraction))
        if val_fraction > 0 and per_class >= 2:
            n_val = min(max(n_val, 1), per_class - 1)
        val_idx = set(order[:n_val].tolist())
        for i in range(per_class):
            rel = f"videos/{name}/{name}_{i:04d}.mp4"
            jobs.append((str(out), rel, cls, i, seed, frames, size, style, background))
            split_of[rel] = ("val" if i in val_idx else "train", label)

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
    unsafe = [CLASS_NAMES[c] for c in specs if _mirror(c) not in specs]
    if unsafe:
        print(f"synth: with classes {names} the mirror of {unsafe} is not a class; train without flips",
              file=sys.stderr)  # fmt: skip
    summary = {
        "out": str(out),
        "style": style,
        "background": background,
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


def main(out: str, classes: int | Sequence[str] = 6, per_class: int = 24, frames: int = 32, size: int = 64, seed: int = 0,
         val_fraction: float = 0.25, style: str = "textures", background: str = "moving") -> int:  # fmt: skip
    """``marvit synth``: make the data set and print a summary; 2 on bad arguments."""
    try:
        s = make_synthetic(out, classes, per_class, frames, size, seed, val_fraction, style=style,
                           background=background)  # fmt: skip
    except ValueError as e:
        print(f"marvit synth: {e}", file=sys.stderr)
        return 2
    print(
        f"synth ({s['style']}{', static background' if s['background'] == 'static' else ''}): {s['train']} train + {s['val']} val videos, {len(s['classes'])} classes "
        f"({', '.join(s['classes'])}), {s['frames']} frames at {s['size']}x{s['size']}, "
        f"{s['bytes'] / 1e6:.1f} MB in {s['seconds']:.1f} s -> {s['out']}"
    )
    return 0
