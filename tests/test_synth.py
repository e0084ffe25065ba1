"""The synthetic data set: deterministic for a seed, consistent lists, its class lives in the motion, and it
is redundant the way natural video is.

The motion test reads only pixels: it searches the translation, the rotation about the center and the
scaling about the center that best map a frame onto the frame two steps later (correlation of luminance),
and names the class from the best of them. That recovers the classes; features of one frame (colours,
contrast, gradient energy and orientation, where it is bright) do not. The redundancy test predicts each
masked tubelet from the same place in the nearest visible time slices, with no learning at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _data_util import decode_all

from marvit.errors import InputError
from marvit.pipeline import synth
from marvit.pipeline.synth import CLASS_NAMES, make_synthetic, render_video

SIZE, FRAMES, PER_CLASS, CLASSES, GAP = 48, 12, 12, 8, 6
SHIFTS = [(sx, sy) for sx in range(-8, 9) for sy in range(-8, 9)]
ANGLES = np.radians(np.arange(-30, 31, 2))
LOG_SCALES = np.arange(-0.3, 0.31, 0.02)


def _luma(video: np.ndarray) -> np.ndarray:
    f = video.astype(np.float32).mean(-1)
    return f - f.mean(axis=(1, 2), keepdims=True)


def _warp(frame: np.ndarray, angle: float, log_scale: float) -> np.ndarray:
    """The frame moved by a rotation (clockwise on screen) and a scaling about the center (nearest pixel)."""
    h, w = frame.shape
    y, x = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = w / 2, h / 2
    k = np.exp(-log_scale)
    c, s = np.cos(angle), np.sin(angle)  # inverse map: where did this pixel come from
    sx = cx + k * (c * (x - cx) + s * (y - cy))
    sy = cy + k * (-s * (x - cx) + c * (y - cy))
    return frame[np.clip(sy.astype(int), 0, h - 1), np.clip(sx.astype(int), 0, w - 1)]


def _score(pairs: list[tuple[np.ndarray, np.ndarray]], move, central: np.ndarray) -> float:
    return float(np.mean([(move(a) * b)[central].mean() for a, b in pairs]))


def motion_class(video: np.ndarray) -> str:
    """The class a pixel-level motion search assigns: the best translation, rotation or scaling."""
    f = _luma(video)
    pairs = [(f[t], f[t + GAP]) for t in range(len(f) - GAP)]
    h, w = f.shape[1:]
    y, x = np.mgrid[0:h, 0:w] + 0.5
    central = np.hypot(x - w / 2, y - h / 2) < 0.42 * w  # away from the corners a warp samples off-frame
    shifts = {d: _score(pairs, lambda a, d=d: np.roll(a, (d[1], d[0]), (0, 1)), central) for d in SHIFTS}
    best = max(
        [(v, "shift", d) for d, v in shifts.items()]
        + [(_score(pairs, lambda a, r=r: _warp(a, r, 0.0), central), "rot", r) for r in ANGLES if r]
        + [(_score(pairs, lambda a, s=s: _warp(a, 0.0, s), central), "scale", s) for s in LOG_SCALES if s],
        key=lambda r: r[0],
    )
    _, kind, value = best
    if kind == "rot":
        return "rotate_cw" if value > 0 else "rotate_ccw"
    if kind == "scale":
        return "grow" if value > 0 else "shrink"
    # the shift to a fraction of a pixel (a parabola through the peak and its neighbours on each axis),
    # then the nearest of the 8 directions
    sub = []
    for axis in (0, 1):
        step = np.eye(2, dtype=int)[axis]
        lo, mid = shifts.get(tuple(np.subtract(value, step))), shifts[value]
        hi = shifts.get(tuple(np.add(value, step)))
        curv = None if lo is None or hi is None else lo - 2 * mid + hi
        sub.append(value[axis] + (0.5 * (lo - hi) / curv if curv else 0.0))
    octant = int(np.round(np.arctan2(sub[1], sub[0]) / (np.pi / 4))) % 8  # 0 = right, 2 = down (y down)
    return ["move_right", "move_down_right", "move_down", "move_down_left", "move_left", "move_up_left",
            "move_up", "move_up_right"][octant]  # fmt: skip


def _one_frame_features(frame: np.ndarray) -> np.ndarray:
    """What one frame shows: colours and contrast, gradient energy and its orientation, fine detail (a
    Laplacian), where it is bright (quadrants) and how the centre differs from the border."""
    f = frame.astype(np.float32)
    lum = f.mean(-1)
    h, w = lum.shape
    y, x = np.mgrid[0:h, 0:w] + 0.5
    center = np.hypot(x - w / 2, y - h / 2) < w / 4
    gx, gy = np.abs(np.diff(lum, axis=1)).mean(), np.abs(np.diff(lum, axis=0)).mean()
    lap = 4 * lum[1:-1, 1:-1] - lum[2:, 1:-1] - lum[:-2, 1:-1] - lum[1:-1, 2:] - lum[1:-1, :-2]
    quads = [
        lum[: h // 2, : w // 2],
        lum[: h // 2, w // 2 :],
        lum[h // 2 :, : w // 2],
        lum[h // 2 :, w // 2 :],
    ]
    return np.r_[f.mean((0, 1)) / 255, f.std((0, 1)) / 255, gx, gy, gx / (gy + 1e-6), np.abs(lap).mean(),
                 lum[center].std(), lum[~center].std(), [q.mean() / 255 for q in quads]]  # fmt: skip


def _nearest_mean_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray | None = None) -> float:
    """Fit class means on the ``train`` samples (default: even ones), classify the others by standardized
    distance."""
    train = np.arange(len(y)) % 2 == 0 if train is None else train
    classes = np.unique(y)
    mu = np.stack([x[train & (y == c)].mean(0) for c in classes])
    sd = x[train].std(0) + 1e-6
    d = (((x[~train, None] - mu[None]) / sd) ** 2).sum(-1)
    return float((classes[d.argmin(1)] == y[~train]).mean())


@pytest.fixture(scope="module", params=synth.STYLES)
def rendered(request) -> tuple[list[np.ndarray], np.ndarray]:
    """Every style's videos (the demo trains on the dots, the default style is the textures)."""
    videos, labels = [], []
    for c in range(CLASSES):
        for i in range(PER_CLASS):
            params = synth._video_params(0, c, i, FRAMES, SIZE, request.param)
            videos.append(render_video(c, params, FRAMES, SIZE))
            labels.append(c)
    return videos, np.array(labels)


def test_the_motion_names_the_class(rendered):
    videos, y = rendered
    found = np.array([CLASS_NAMES.index(motion_class(v)) for v in videos])
    for c in range(CLASSES):
        assert (found[y == c] == c).mean() >= 0.9, (CLASS_NAMES[c], [CLASS_NAMES[k] for k in found[y == c]])


def test_the_diagonals_move_diagonally():
    found = {}
    for c in range(8, 12):
        videos = [render_video(c, synth._video_params(1, c, i, FRAMES, SIZE), FRAMES, SIZE) for i in range(4)]
        found[CLASS_NAMES[c]] = [motion_class(v) for v in videos]
    hits = {name: sum(f == name for f in got) for name, got in found.items()}
    # a smooth texture's shift is estimated less sharply than dots': 15 of 16 here (one down-left reads left)
    assert all(h >= 3 for h in hits.values()) and sum(hits.values()) >= 15, found


def test_a_single_frame_does_not_tell_the_class(rendered):
    videos, y = rendered
    # every frame of every video is a sample; class means are fitted on the even videos' frames and the
    # odd videos' frames are classified (so no video is on both sides)
    x = np.stack([_one_frame_features(f) for v in videos for f in v])  # (videos * FRAMES, features)
    labels, video = np.repeat(y, FRAMES), np.repeat(np.arange(len(videos)), FRAMES)
    acc = _nearest_mean_accuracy(x, labels, train=video % 2 == 0)
    assert acc < 0.3, acc  # chance is 1/8; the motion search names > 90% of the same videos


def test_the_texture_is_redundant_and_the_dots_are_not():
    from marvit.bench.redundancy import eval_mask, interpolation_mse, rendered_clips

    mse = {}
    for style in ("textures", "dots"):
        video = rendered_clips(
            style, classes=4, per_class=3, frames=8, size=32, stride=2
        )  # (12, 3, 8, 32, 32)
        mse[style] = interpolation_mse(video, eval_mask((4, 4, 4), len(video)), 2, 8)
    # normalized pixels: 1 = predicting each tubelet's mean, 2 = an unrelated pattern (measured: 0.83, 2.02):
    # the textures' neighbours beat predicting nothing, the dots' are worse than nothing
    assert mse["textures"] < 0.9 and mse["dots"] > 1.7, mse


def test_flip_map_mirrors_direction():
    m = synth.flip_map(12)
    names = {CLASS_NAMES[k]: CLASS_NAMES[v] for k, v in m.items()}
    assert names["move_right"] == "move_left" and names["move_left"] == "move_right"
    assert names["rotate_cw"] == "rotate_ccw" and names["move_up"] == "move_up" and names["grow"] == "grow"
    assert names["move_down_right"] == "move_down_left" and names["move_up_left"] == "move_up_right"
    assert all(m[m[k]] == k for k in m)  # an involution
    # a mirrored video of class c looks like class flip_map[c]: check on pixels
    for c in (0, 4, 6, 8):
        mirrored = [render_video(c, synth._video_params(3, c, i, FRAMES, SIZE), FRAMES, SIZE)[:, :, ::-1]
                    for i in range(3)]  # fmt: skip
        found = [motion_class(v) for v in mirrored]
        assert sum(f == CLASS_NAMES[m[c]] for f in found) >= 2, (CLASS_NAMES[c], found)  # the search errs ~5%


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


def test_the_dot_style_is_kept_for_comparison(tmp_path):
    s = make_synthetic(
        tmp_path, classes=2, per_class=2, frames=4, size=32, style="dots", workers=1, progress=False
    )
    assert s["style"] == "dots" and json.loads((tmp_path / "synth.json").read_text())["style"] == "dots"
    video = decode_all(tmp_path / "videos" / "move_right" / "move_right_0000.mp4")
    ref = render_video(0, synth._video_params(0, 0, 0, 4, 32, "dots"), 4, 32)
    assert np.abs(video.astype(int) - ref).mean() < 12
    textures = render_video(0, synth._video_params(0, 0, 0, 4, 32), 4, 32)
    assert np.abs(textures.astype(int) - ref).mean() > 20  # the default is the other style


def test_classes_chosen_by_name(tmp_path):
    names = ["move_up", "move_right", "move_left"]
    s = make_synthetic(tmp_path, classes=names, per_class=3, frames=4, size=32, style="dots", val_fraction=0.34,
                       workers=1, progress=False)  # fmt: skip
    assert s["classes"] == names and (tmp_path / "classes.txt").read_text().split() == names
    rows = [
        line.split()
        for split in ("train", "val")
        for line in (tmp_path / f"{split}.csv").read_text().splitlines()
    ]
    # labels are positions in the chosen list, each file in its class's folder
    assert sorted({int(label) for _, label in rows}) == [0, 1, 2]
    assert all(path.split("/")[1] == names[int(label)] for path, label in rows)
    # right <-> left swap under a flip, up stays: in the chosen labels
    assert json.loads((tmp_path / "flip_map.json").read_text()) == {"0": 0, "1": 2, "2": 1}
    # a class's videos do not depend on which others were chosen (its randomness is keyed by its name's row)
    video = decode_all(tmp_path / "videos" / "move_right" / "move_right_0001.mp4")
    ref = render_video(0, synth._video_params(0, 0, 1, 4, 32, "dots"), 4, 32)
    assert np.abs(video.astype(int) - ref).mean() < 12
    assert [n for n in CLASS_NAMES if n.startswith("move_")] == synth.TRANSLATIONS


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="classes=13"):
        make_synthetic(tmp_path, classes=13)
    with pytest.raises(InputError, match="move_sideways"):
        make_synthetic(tmp_path, classes=["move_right", "move_sideways"])
    with pytest.raises(InputError, match="distinct"):
        make_synthetic(tmp_path, classes=["move_right", "move_right"])
    with pytest.raises(ValueError, match="size=33"):
        make_synthetic(tmp_path, size=33)
    with pytest.raises(InputError, match="style='sparkles'"):
        make_synthetic(tmp_path, style="sparkles")
    assert synth.main(str(tmp_path), val_fraction=1.0) == 2
    assert "val_fraction=1.0" in capsys.readouterr().err


def test_periodic_sampling_is_wrapped_bilinear_interpolation():
    """The texture sampler against torch's bilinear grid_sample on the field padded by one wrapped row/column."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    field = rng.normal(size=(12, 20))
    y, x = rng.uniform(-50, 50, (2, 7, 9))  # far outside the field on both sides: exercises the wrap
    ours = synth.sample_periodic(field, y, x)
    n, m = field.shape
    padded = torch.from_numpy(np.pad(field, ((0, 1), (0, 1)), mode="wrap"))[None, None]  # (1, 1, n+1, m+1)
    yy, xx = torch.from_numpy(y % n), torch.from_numpy(x % m)  # into [0, n) x [0, m): inside the padded grid
    grid = torch.stack([xx / m * 2 - 1, yy / n * 2 - 1], -1)[None]  # align_corners: -1..1 spans n+1 samples
    ref = F.grid_sample(padded, grid, mode="bilinear", align_corners=True)[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    np.testing.assert_array_equal(synth.sample_periodic(field, np.float64(13), np.float64(-19)), field[1, 1])
