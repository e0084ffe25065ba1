"""``marvit synth --background static``: textured objects moving over a still textured background.

The default synthetic set moves the whole scene, so no tubelet ever repeats: the worst case for dropping
static tubelets. Natural video is mostly the other case (a still background, a few things that move), and
this style renders it: the background is one still frame of the ``textures`` style (the same smooth random
colour scene, with fresh per-pixel sensor noise of 0.5-2 grey levels each frame, so "static" means
"changes by well under the 0.1 threshold", not "identical"), and 2-3 textured discs move over it with the
class's flow: translation (wrapping round the frame), rotation about the frame center, or expansion /
contraction about it (the radius wraps round between 8% and 50% of the side). An object's look (its texture
and size) is drawn independently of the class, so the class is still in the motion only: one frame is at
chance. The objects cover about 5-15% of a frame; the rest is static.
"""

from __future__ import annotations

import math

import numpy as np

from marvit.pipeline.synth import CLASS_SPECS, render_video


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
