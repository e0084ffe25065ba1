"""The synthetic data set: deterministic for a seed, consistent lists, and its class lives in the motion.

The motion test reads only pixels: it segments the shape against the first frame's median color, tracks
its centroid on the torus and finds the rotation that best maps one mask onto the mask two frames later.
Those motion features separate the classes; the same kind of features from one frame (position, size,
colors) do not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _data_util import decode_all

from marvit.pipeline import synth
from marvit.pipeline.synth import CLASS_NAMES, make_synthetic, render_video

SIZE, FRAMES, PER_CLASS = 48, 8, 20
ROTATIONS = np.radians(np.arange(-40, 41, 4))


def _wrap(d, period):
    return (d + period / 2) % period - period / 2


def _shape_masks(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) shape masks and (T, 2) toroidal centroids (x, y) of a rendered video."""
    f = video.astype(np.float32)
    bg = np.median(f[0].reshape(-1, 3), axis=0)
    masks = np.linalg.norm(f - bg, axis=-1) > 55
    h, w = masks.shape[1:]
    cents = []
    for m in masks:
        ys, xs = np.nonzero(m)
        cx = np.angle(np.exp(2j * np.pi * (xs + 0.5) / w).sum()) * w / (2 * np.pi) % w
        cy = np.angle(np.exp(2j * np.pi * (ys + 0.5) / h).sum()) * h / (2 * np.pi) % h
        cents.append((cx, cy))
    return masks, np.array(cents)


def _motion_features(video: np.ndarray) -> np.ndarray:
    """Mean centroid step (dx, dy) in px/frame and the best rotation over two frames in degrees."""
    masks, cents = _shape_masks(video)
    t, h, w = masks.shape
    score = np.zeros(len(ROTATIONS))
    for i in range(t - 2):
        ys, xs = np.nonzero(masks[i])
        dx, dy = _wrap(xs + 0.5 - cents[i, 0], w), _wrap(ys + 0.5 - cents[i, 1], h)
        for k, phi in enumerate(ROTATIONS):
            rx = np.cos(phi) * dx - np.sin(phi) * dy + cents[i + 2, 0]
            ry = np.sin(phi) * dx + np.cos(phi) * dy + cents[i + 2, 1]
            score[k] += masks[i + 2][np.floor(ry).astype(int) % h, np.floor(rx).astype(int) % w].mean()
    step = _wrap(np.diff(cents, axis=0), np.array([w, h])).mean(0)
    return np.r_[step, np.degrees(ROTATIONS[score.argmax()])]


def _first_frame_features(video: np.ndarray) -> np.ndarray:
    """What one frame shows: where the shape is (on the torus), how big, and the colors."""
    masks, cents = _shape_masks(video[:1])
    f = video[0].astype(np.float32)
    ang = 2 * np.pi * cents[0] / SIZE
    fg = f[masks[0]].mean(0) if masks[0].any() else np.zeros(3)
    return np.r_[np.cos(ang), np.sin(ang), masks[0].mean() * 10, f[~masks[0]].mean(0) / 255, fg / 255]


def _nearest_mean_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Fit class means on even samples, classify odd ones by standardized distance."""
    train = np.arange(len(y)) % 2 == 0
    classes = np.unique(y)
    mu = np.stack([x[train & (y == c)].mean(0) for c in classes])
    sd = x[train].std(0) + 1e-6
    d = (((x[~train, None] - mu[None]) / sd) ** 2).sum(-1)
    return float((classes[d.argmin(1)] == y[~train]).mean())


@pytest.fixture(scope="module")
def rendered() -> tuple[list[np.ndarray], np.ndarray]:
    videos, labels = [], []
    for c in range(6):
        for i in range(PER_CLASS):
            params = synth._video_params(0, c, i, FRAMES, SIZE)
            videos.append(render_video(c, params, FRAMES, SIZE))
            labels.append(c)
    return videos, np.array(labels)


def test_motion_features_follow_the_class(rendered):
    videos, y = rendered
    feats = np.stack([_motion_features(v) for v in videos])
    expected_step = {"move_right": (0, 1), "move_left": (0, -1), "move_down": (1, 1), "move_up": (1, -1)}
    for c, name in enumerate(CLASS_NAMES[:6]):
        f = feats[y == c]
        if name in expected_step:
            axis, sign = expected_step[name]
            # every video moves that way (noisy masks can shorten a step, never reverse it)
            assert (sign * f[:, axis] > 0).all() and (sign * f[:, axis] > 0.5).mean() >= 0.9, (
                name,
                f[:, axis],
            )
            assert (np.abs(f[:, 1 - axis]) < 0.3).mean() >= 0.9, (name, f[:, 1 - axis])  # and not the other
        else:
            sign = 1 if name == "rotate_cw" else -1
            assert (sign * f[:, 2] > 0).mean() >= 0.8, (name, f[:, 2])  # small shapes can blur the angle
            assert (np.abs(f[:, :2]) < 0.3).mean() >= 0.9, (name, f[:, :2])  # rotating in place
    assert _nearest_mean_accuracy(feats, y) > 0.85


def test_a_single_frame_does_not_tell_the_class(rendered):
    videos, y = rendered
    acc = _nearest_mean_accuracy(np.stack([_first_frame_features(v) for v in videos]), y)
    assert acc < 0.4, acc  # chance is 1/6; motion features reach > 0.85 on the same videos


def test_flip_map_mirrors_direction():
    m = synth.flip_map(12)
    names = {CLASS_NAMES[k]: CLASS_NAMES[v] for k, v in m.items()}
    assert names["move_right"] == "move_left" and names["move_left"] == "move_right"
    assert names["rotate_cw"] == "rotate_ccw" and names["move_up"] == "move_up" and names["grow"] == "grow"
    assert names["move_down_right"] == "move_down_left" and names["move_up_left"] == "move_up_right"
    assert all(m[m[k]] == k for k in m)  # an involution
    # a mirrored video of class c looks like class flip_map[c]: check on pixels
    for c in (0, 4):
        params = synth._video_params(3, c, 0, FRAMES, SIZE)
        mirrored = render_video(c, params, FRAMES, SIZE)[:, :, ::-1]
        f = _motion_features(mirrored)
        if c == 0:
            assert f[0] < -0.3  # now moving left
        else:
            assert f[2] < 0  # now counter-clockwise


def _decode_tree(root: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(root).as_posix(): decode_all(p) for p in sorted((root / "videos").rglob("*.mp4"))}


def test_deterministic_lists_and_files(tmp_path):
    kw = dict(classes=3, per_class=6, frames=8, size=32, seed=5, val_fraction=0.34, progress=False)
    a = make_synthetic(tmp_path / "a", workers=1, **kw)
    make_synthetic(tmp_path / "b", workers=2, **kw)  # the worker count must not change the data
    va, vb = _decode_tree(tmp_path / "a"), _decode_tree(tmp_path / "b")
    assert va.keys() == vb.keys() and len(va) == 18
    assert all(v.shape == (8, 32, 32, 3) for v in va.values())
    for rel, video in va.items():
        name, index = Path(rel).stem.rsplit("_", 1)
        cls, i = CLASS_NAMES.index(name), int(index)
        # the pixels come from (seed, class, index) alone: rendering again gives the same array ...
        ref = render_video(cls, synth._video_params(5, cls, i, 8, 32), 8, 32).astype(int)
        assert np.array_equal(ref, render_video(cls, synth._video_params(5, cls, i, 8, 32), 8, 32))
        # ... both runs stored the same video (libx264 is not always bit-exact, see video.py) ...
        assert np.abs(video.astype(int) - vb[rel]).mean() < 4, rel  # variants seen: up to 2.3
        # ... up to H.264's loss, which mostly drops the per-pixel noise (sigma up to 10)
        assert np.abs(video - ref).mean() < 12, rel
        # ... and another seed makes another video
        other = render_video(cls, synth._video_params(6, cls, i, 8, 32), 8, 32)
        assert np.abs(other - ref).mean() > 20

    root = tmp_path / "a"
    classes = (root / "classes.txt").read_text().split()
    assert classes == CLASS_NAMES[:3] == a["classes"]
    rows = {}
    for split in ("train", "val"):
        for line in (root / f"{split}.csv").read_text().splitlines():
            path, label = line.split()
            assert (root / path).is_file() and path.split("/")[1] == classes[int(label)]
            rows[path] = split
    assert len(rows) == 18 and set(rows) == {k for k in va}  # every video in exactly one list
    n_val = sum(s == "val" for s in rows.values())
    assert n_val == a["val"] == 3 * 2 and a["train"] == 12
    assert (root / "train.csv").read_text() == (tmp_path / "b" / "train.csv").read_text()
    fm = json.loads((root / "flip_map.json").read_text())
    assert fm == {"0": 1, "1": 0, "2": 2}


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="classes=13"):
        make_synthetic(tmp_path, classes=13)
    with pytest.raises(ValueError, match="size=33"):
        make_synthetic(tmp_path, size=33)
    assert synth.main(str(tmp_path), val_fraction=1.0) == 2
    assert "val_fraction=1.0" in capsys.readouterr().err
