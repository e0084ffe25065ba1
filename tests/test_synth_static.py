"""``marvit synth --background static``: objects moving over a still background. Most tubelets are static,
the objects' motion still names the class (pixel-level motion search on the foreground), a single frame
does not, and the files are written and refused as the default style's are."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _data_util import decode_all
from test_synth import CLASSES, FRAMES, SIZE, _nearest_mean_accuracy, _one_frame_features, motion_class

from marvit.errors import InputError
from marvit.model.static import tubelet_motion
from marvit.pipeline import synth
from marvit.pipeline.synth import CLASS_NAMES, make_synthetic, render_objects

PER_CLASS = 6


@pytest.fixture(scope="module")
def objects() -> tuple[list[np.ndarray], np.ndarray]:
    videos, labels = [], []
    for c in range(CLASSES):
        for i in range(PER_CLASS):
            videos.append(render_objects(c, synth._video_params(0, c, i, FRAMES, SIZE), FRAMES, SIZE))
            labels.append(c)
    return videos, np.array(labels)


def _motion(video: np.ndarray, patch: int = 8) -> torch.Tensor:
    """(T, S, S, 3) uint8 -> (Tn - 1, Hn * Wn) mean |difference| of 2-frame tubelets, [0, 1] pixels."""
    x = torch.from_numpy(video).float().permute(3, 0, 1, 2)[None] / 255  # (1, 3, T, S, S)
    return tubelet_motion(x, 2, patch, (1.0, 1.0, 1.0)).view(FRAMES // 2, -1)[1:]


def test_the_background_is_static_and_the_objects_move(objects):
    videos, _ = objects
    moving_slices = []
    for v in videos:
        m = _motion(v)
        assert (m < 0.1).float().mean() >= 0.6  # most tubelets after the first slice are static
        moving_slices.append((m >= 0.1).any(dim=1).float().mean())
    assert np.mean(moving_slices) >= 0.75  # and most slices have a tubelet that moves


def test_the_objects_motion_names_the_class(objects, monkeypatch):
    import test_synth

    monkeypatch.setattr(test_synth, "GAP", 2)  # the objects move faster than the scenes: a shorter gap
    videos, y = objects
    # the foreground: what differs from the still background (each pixel's median over time)
    fg = [np.abs(v.astype(np.float32) - np.median(v.astype(np.float32), axis=0)) for v in videos]
    found = np.array([CLASS_NAMES.index(motion_class(f)) for f in fg])
    for c in range(6):  # translations and rotations: the objects' flow is unambiguous
        assert (found[y == c] == c).sum() >= PER_CLASS - 1, (CLASS_NAMES[c], found[y == c])
    assert (found == y).mean() >= 0.75  # growth and shrinkage of a few small objects read less sharply


def test_a_single_frame_does_not_tell_the_class(objects):
    videos, y = objects
    x = np.stack([_one_frame_features(f) for v in videos for f in v])
    labels, video = np.repeat(y, FRAMES), np.repeat(np.arange(len(videos)), FRAMES)
    assert _nearest_mean_accuracy(x, labels, train=video % 2 == 0) < 0.3  # chance is 1/8


def test_written_files_and_refusals(tmp_path, capsys):
    assert synth.main(str(tmp_path), classes=2, per_class=2, frames=8, size=32, background="static") == 0
    assert "static background" in capsys.readouterr().out
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["background"] == "static" and meta["train"] + meta["val"] == 4
    video = decode_all(tmp_path / "videos" / "move_right" / "move_right_0000.mp4")
    ref = render_objects(0, synth._video_params(0, 0, 0, 8, 32), 8, 32)
    assert np.abs(video.astype(int) - ref).mean() < 12  # H.264 keeps the rendered pixels (sharp edges: less)
    with pytest.raises(InputError, match="background=static"):
        make_synthetic(tmp_path / "x", style="dots", background="static")
    with pytest.raises(InputError, match="background='still'"):
        make_synthetic(tmp_path / "x", background="still")
