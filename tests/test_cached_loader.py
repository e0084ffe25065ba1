"""The cached loader against its plain twin (the PyAV loader) and the loader contract.

Evaluation views are deterministic, so the cached loader must hand out exactly the PyAV loader's batches.
Training draws differ by design (its generator is per batch and row), so it is held to what the frames
say: every clip is a window of the right frames of the right video (frame content encodes the index),
labels follow the video, each epoch visits every sample once, resuming reproduces the batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _loader_util import encode_mp4, frame_index, index_dataset, make_frames, write_shards

from marvit.config import DataConfig
from marvit.pipeline.cached_loader import CachedLoader
from marvit.pipeline.pyav_loader import PyavLoader
from marvit.pipeline.shards import find_shards

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _cfg(**kw) -> DataConfig:
    base = dict(num_frames=4, sampling_rate=2, img_size=32, test_short_side=40, test_clips=2, test_crops=2,
                batch_size=3, num_workers=0, rand_augment=False, reprob=0.0, mixup=0.0, cutmix=0.0,
                min_area=0.5, flip=True, mean=MEAN, std=STD)  # fmt: skip
    base.update(kw)
    return DataConfig(**base)


def _gray(video: torch.Tensor) -> np.ndarray:
    """Per-frame mean grey level of normalized rows (B, 3, T, H, W) -> (B, T), right of any bar."""
    raw = video * torch.tensor(STD).view(1, 3, 1, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1, 1)
    return (raw[..., -8:] * 255).mean(dim=(1, 3, 4)).numpy()


def test_evaluation_batches_equal_the_pyav_loader(tmp_path):
    root = index_dataset(tmp_path, split="val", n=7, per_shard=3, frames=14)
    cfg = _cfg()
    shards = find_shards(root, "val")
    ref = list(PyavLoader(shards, cfg, train=False))
    got = list(CachedLoader(shards, cfg, train=False))
    assert len(got) == len(ref) == len(CachedLoader(shards, cfg, train=False)) == 3
    for a, b in zip(got, ref):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_training_clips_are_windows_of_the_right_video(tmp_path):
    # sample i: frames flat level(t) with a bar of 2 * (i + 1) red columns; label i % 3
    root = index_dataset(tmp_path, split="train", n=9, per_shard=4, frames=14)
    cfg = _cfg(flip=False, min_area=1.0)  # the whole frame: the bar stays measurable
    loader = CachedLoader(find_shards(root, "train"), cfg, train=True, seed=3)
    assert len(loader) == 9 // 3
    seen = []
    for batch in loader:
        assert batch["video"].shape == (3, 3, 4, 32, 32) and batch["video"].dtype == torch.float32
        for row, label in zip(batch["video"], batch["label"].tolist()):
            idx = [frame_index(g) for g in _gray(row[None])[0]]
            assert np.all(np.diff(idx) == 2), idx  # 4 frames at stride 2 from one window
            raw = row * torch.tensor(STD).view(3, 1, 1, 1) + torch.tensor(MEAN).view(3, 1, 1, 1)
            red_cols = int(((raw[0, 0] - raw[2, 0]) > 0.3).any(0).sum())  # bar columns, scaled 64 -> 32 wide
            sample = round(red_cols * 64 / 32 / 2) - 1
            assert label == sample % 3
            seen.append(sample)
    assert sorted(seen) == list(range(9))  # one epoch visits every sample once


def test_training_is_a_function_of_seed_epoch_and_batch(tmp_path):
    root = index_dataset(tmp_path, split="train", n=9, per_shard=4, frames=14)
    shards, cfg = find_shards(root, "train"), _cfg(reprob=0.5)
    a, b = CachedLoader(shards, cfg, train=True, seed=1), CachedLoader(shards, cfg, train=True, seed=1)
    first = list(a)
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(first, b))
    resumed = list(a.iter_from(1))  # resume: batch k without replaying the earlier ones
    assert len(resumed) == 2 and all(torch.equal(x["video"], y["video"]) for x, y in zip(resumed, first[1:]))
    a.set_epoch(1)
    assert not all(torch.equal(x["video"], y["video"]) for x, y in zip(a, first))
    with pytest.raises(ValueError, match="iter_from"):
        a.iter_from(4)


def test_flips_relabel_and_a_broken_video_is_skipped_and_counted(tmp_path):
    # every good sample is class 0 with a red bar on the left; a horizontal flip moves the bar to the right
    # and must turn the label into flip_label_map[0] = 1
    good = [{"key": f"s{i}", "mp4": encode_mp4(make_frames(10, bar=8)), "label": 0, "frames": 10}
            for i in range(6)]  # fmt: skip
    broken = {"key": "bad", "mp4": b"not a video", "label": 0, "frames": 10}
    root = write_shards(tmp_path, good[:3] + [broken] + good[3:], split="train", per_shard=4,
                        classes=["a", "b"])  # fmt: skip
    cfg = _cfg(flip_label_map={0: 1, 1: 0}, min_area=1.0, batch_size=2)
    with pytest.warns(UserWarning, match="undecodable"):
        loader = CachedLoader(find_shards(root, "train"), cfg, train=True)
    assert loader.skipped()["count"] == 1 and loader.skipped()["reasons"] == {"undecodable video": 1}
    assert len(loader) == 7 // 2  # the contract counts the split's samples, skipped or not
    flips = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        for batch in loader:
            raw = batch["video"] * torch.tensor(STD).view(1, 3, 1, 1, 1) + torch.tensor(MEAN).view(
                1, 3, 1, 1, 1
            )
            for row, label in zip(raw, batch["label"].tolist()):
                red = (row[0, 0] - row[2, 0]) > 0.3  # (H, W) of the first frame
                left, right = bool(red[:, :2].all()), bool(red[:, -2:].all())
                assert left != right  # exactly one side has the bar
                assert label == (1 if right else 0)
                flips.append(right)
    assert 0 < sum(flips) < len(flips)  # both coins came up
