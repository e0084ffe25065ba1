"""The training augmentation recipe: DALI's graph and the PyAV loader's PIL twin held together
statistically on one source clip (per-op application rates, the effect of every op, the mean and spread of
per-clip pixel statistics), the recipe's defaults against the MAR/VideoMAE spec, and random erasing per
frame. Small frames (4 x 24 x 32) so a few hundred clips take seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marvit.config import DataConfig
from marvit.pipeline.augment import (
    RAND_INCREASING_OPS,
    SIGNED_OPS,
    AugmentRecipe,
    ClipTrainAugment,
    erase_clips_,
    op_argument,
)
from marvit.pipeline.dali_loader import dali_available

N_CLIPS = 300


def _source() -> np.ndarray:
    """uint8 (4, 24, 32, 3): a colour gradient with a bright square and texture, moving per frame."""
    yy, xx = np.mgrid[0:24, 0:32]
    out = np.empty((4, 24, 32, 3), np.uint8)
    for t in range(4):
        out[t, ..., 0] = 30 + xx * 6
        out[t, ..., 1] = 40 + yy * 7
        out[t, ..., 2] = ((xx + yy + 2 * t) % 8) * 25
        out[t, 6 + t : 12 + t, 10:18] = 235
    return out


def _pyav(recipe: AugmentRecipe, size: int, n: int = N_CLIPS):
    aug = ClipTrainAugment(recipe, size)
    frames = _source()
    views, draws = [], []
    for i in range(n):
        v, _, d = aug(frames, np.random.default_rng([5, i]))
        views.append(v)
        draws.append([(x.op, x.applied, x.bin, x.negative) for x in d])
    return np.stack(views).astype(np.float64), np.array(draws).reshape(n, -1, 4)


def _dali(recipe: AugmentRecipe, size: int, n: int = N_CLIPS, batch: int = 50):
    from nvidia.dali import fn, pipeline_def

    from marvit.pipeline.dali_loader import train_views

    frames = _source()

    @pipeline_def(enable_conditionals=True, batch_size=batch, num_threads=1, device_id=None, seed=17)
    def pipe():
        video = fn.external_source(source=lambda: [frames] * batch, batch=True, layout="FHWC")
        views, _, draws = train_views(video, recipe, size, 1)
        return (views[0], fn.stack(*draws)) if draws else (views[0],)

    p = pipe()
    p.build()
    views, draws = [], []
    for _ in range(n // batch):
        out = p.run()
        views.append(np.asarray(out[0].as_tensor()))
        if len(out) > 1:
            draws.append(np.asarray(out[1].as_tensor()))
    return np.concatenate(views).astype(np.float64), (np.concatenate(draws) if draws else None)


def test_recipe_defaults_are_the_spec() -> None:
    r = AugmentRecipe.from_config(DataConfig())
    assert r.ops == RAND_INCREASING_OPS and len(r.ops) == 15  # timm's inc1 set
    assert (r.num_ops, r.op_prob, r.magnitude, r.magnitude_std, r.magnitude_max) == (2, 0.5, 9.0, 0.5, 10.0)
    assert (r.crop_area, r.crop_ratio, r.flip_prob, r.flip_per_view) == (
        (0.08, 1.0),
        (3 / 4, 4 / 3),
        0.5,
        True,
    )
    assert (r.erase_prob, r.erase_mode, r.erase_area, r.erase_per_frame) == (
        0.25,
        "pixel",
        (0.02, 1 / 3),
        True,
    )
    # timm's level functions at m = 9 (auto_augment._*_level_to_arg, without the sign)
    assert (
        op_argument("PosterizeIncreasing", 9.0) == 1 and op_argument("PosterizeIncreasing", 10.0) == 1
    )  # not 0
    assert op_argument("SolarizeIncreasing", 9.0) == 256 - int(0.9 * 256)
    assert op_argument("SolarizeAdd", 9.0) == int(0.9 * 110)
    assert op_argument("Rotate", 9.0) == pytest.approx(27.0)
    assert op_argument("ShearX", 9.0) == pytest.approx(0.27)
    assert op_argument("TranslateYRel", 9.0) == pytest.approx(0.405)
    assert op_argument("BrightnessIncreasing", 9.0) == pytest.approx(0.81)
    assert r.magnitude_bin(9.04) == 90 and r.magnitude_bin(-1.0) == 0 and r.magnitude_bin(12.0) == 100


def test_pyav_draws_follow_the_recipe() -> None:
    """Op choice uniform over the 15 ops, applied with p 0.5, magnitude N(9, 0.5) on the 0.1 grid."""
    r = AugmentRecipe()
    from marvit.pipeline.augment import draw_rand_augment

    rng = np.random.default_rng(0)
    d = np.array(
        [[(x.op, x.applied, x.bin, x.negative) for x in draw_rand_augment(r, rng)] for _ in range(6000)]
    )
    d = d.reshape(-1, 4)
    counts = np.bincount(d[:, 0], minlength=15)
    assert counts.min() > 0.8 * len(d) / 15 and counts.max() < 1.2 * len(d) / 15
    assert abs(d[:, 1].mean() - 0.5) < 0.02 and abs(d[:, 3].mean() - 0.5) < 0.02
    mags = d[:, 2] * r.magnitude_step
    assert abs(mags.mean() - 9.0) < 0.02 and abs(mags.std() - 0.5) < 0.02


@pytest.mark.skipif(not dali_available(), reason="no DALI decoder")
def test_dali_and_pyav_training_augmentation_agree() -> None:
    """The full recipe (RandAugment, crop 0.08-1, flip) on one source, 300 clips per backend: the RandAugment
    draws have the same rates, and the per-clip pixel statistics the same mean and spread."""
    r = AugmentRecipe()
    pv, pd = _pyav(r, 16)
    dv, dd = _dali(r, 16)
    assert pv.shape == dv.shape == (N_CLIPS, 4, 16, 16, 3)
    # the draws: op choice, application rate, magnitude distribution, sign
    for draws in (pd, dd):
        d = draws.reshape(-1, 4)
        rate = np.bincount(d[:, 0][d[:, 1] == 1], minlength=15) / len(d)  # per-op application rate
        assert np.all(np.abs(rate - 0.5 / 15) < 4.5 * np.sqrt(0.5 / 15 / len(d))), rate
        assert abs(d[:, 1].mean() - 0.5) < 0.06
        mags = d[:, 2] * r.magnitude_step
        assert abs(mags.mean() - 9.0) < 0.08 and 0.4 < mags.std() < 0.6
    # every frame of a clip augmented alike: the frame-to-frame change is the source's motion only
    for v in (pv, dv):
        assert np.abs(np.diff(v.mean((2, 3, 4)), axis=1)).mean() < 8
    # per-clip statistics: mean brightness, contrast, colour balance
    for stat in (lambda v: v.mean((1, 2, 3, 4)), lambda v: v.std((1, 2, 3, 4)),
                 lambda v: v[..., 0].mean((1, 2, 3)) - v[..., 2].mean((1, 2, 3))):  # fmt: skip
        a, b = stat(pv), stat(dv)
        se = np.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4 * se + 1.0, (a.mean(), b.mean(), se)
        assert 0.75 < a.std() / b.std() < 1.33, (a.std(), b.std())


@pytest.mark.skipif(not dali_available(), reason="no DALI decoder")
def test_every_op_has_the_same_effect_in_dali_and_pyav() -> None:
    """One op per clip, always applied, no crop or flip: per op, the mean change of the clip's pixels and
    of its brightness agree between the backends (the ops DALI renders differently, e.g. Equalize, are
    matched on the PIL side; this fails when an op's range or meaning differs)."""
    r = AugmentRecipe(
        num_ops=1, op_prob=1.0, crop_area=(1.0, 1.0), crop_ratio=(32 / 24, 32 / 24), flip_prob=0.0
    )
    n = 600
    pv, pd = _pyav(r, 24, n)  # the crop keeps the whole 24 x 32 frame, resized to 24 x 24
    dv, dd = _dali(r, 24, n)
    src = _pyav(AugmentRecipe(rand_augment=False, crop_area=(1.0, 1.0), crop_ratio=(32 / 24, 32 / 24),
                              flip_prob=0.0), 24, 1)[0][0]  # fmt: skip
    for k, name in enumerate(r.ops):
        for sign in (0, 1) if name in SIGNED_OPS else (None,):  # a signed op: each direction apart
            pick_p, pick_d = pd[:, 0, 0] == k, dd[:, 0, 0] == k
            if sign is not None:
                pick_p, pick_d = pick_p & (pd[:, 0, 3] == sign), pick_d & (dd[:, 0, 3] == sign)
            ps, ds = pv[pick_p], dv[pick_d]
            what = (name, sign, len(ps), len(ds))
            assert len(ps) >= 8 and len(ds) >= 8, what
            change_p, change_d = np.abs(ps - src).mean(), np.abs(ds - src).mean()
            assert abs(change_p - change_d) < 0.25 * max(change_p, change_d) + 2.0, (
                *what,
                change_p,
                change_d,
            )
            bright_p, bright_d = ps.mean() - src.mean(), ds.mean() - src.mean()
            tol = 0.25 * max(abs(bright_p), abs(bright_d)) + 3.0
            assert abs(bright_p - bright_d) < tol, (*what, bright_p, bright_d)


def test_random_erasing_draws_a_box_per_frame() -> None:
    """VideoMAE's RandomErasing over (T, C, H, W): each frame its own coin and box, pixel noise in every
    channel of the box."""
    v = torch.zeros(40, 3, 8, 32, 32)
    erase_clips_(v, AugmentRecipe(erase_prob=0.25), seed=0)
    mask = v != 0  # (B, 3, T, H, W)
    assert (mask == mask[:, :1]).all()  # the same box in every channel of a frame
    frames = mask[:, 0].flatten(0, 1)  # (B * T, H, W)
    erased = frames.any(2).any(1)
    assert abs(erased.float().mean() - 0.25) < 0.05  # per-frame coin with p 0.25
    for f in frames[erased][:50]:
        rows, cols = f.any(1).nonzero(), f.any(0).nonzero()
        box = f[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and f.sum() == box.numel()  # one filled rectangle
        assert 0.02 * 1024 * 0.8 <= box.numel() <= 1024 / 3 * 1.1
    per_clip = mask[:, 0].any(3).any(2)  # (B, T): which frames of each clip were erased
    assert ((per_clip.sum(1) > 0) & (per_clip.sum(1) < 8)).any()  # frames of one clip differ
    # the same seed, the same boxes and noise (a resumed run reproduces them)
    w = torch.zeros_like(v)
    erase_clips_(w, AugmentRecipe(erase_prob=0.25), seed=0)
    assert torch.equal(v, w)
