"""Loaders: DALI against its PyAV twin, one random choice per clip, exactly-once evaluation, bad samples,
and timm's Mixup/CutMix on 5-D video. The shards are written here by tests/_loader_util.py (PyAV +
webdataset + DALI's wds2idx), independently of marvit's converter."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import Counter

import _loader_util as U  # tests/ is on sys.path (no __init__.py: pytest's rootdir-relative import)
import numpy as np
import pytest
import torch

from marvit.config import DataConfig
from marvit.errors import InputError
from marvit.pipeline import build_loader, mixup_fn
from marvit.pipeline.augment import AugmentRecipe, erase_clips_
from marvit.pipeline.dali_loader import dali_available
from marvit.pipeline.pyav_loader import decode_clip

BACKENDS = [
    "pyav",
    pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="no DALI decoder")),
]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _load(cfg: DataConfig, split: str, backend: str, **kw):
    """build_loader with ``backend`` as ``data.backend`` (the contract reads it from the config)."""
    return build_loader(dataclasses.replace(cfg, backend=backend), split, **kw)


def _cfg(root, **kw) -> DataConfig:
    base = dict(root=str(root), num_frames=8, sampling_rate=2, img_size=32, test_short_side=48, test_clips=2,
                test_crops=3, batch_size=3, num_workers=2, mean=MEAN, std=STD, reprob=0.0)  # fmt: skip
    base.update(kw)
    return DataConfig(**base)


def _uint8(video: torch.Tensor) -> torch.Tensor:
    """Normalized (N, 3, T, H, W) back to 0..255 values."""
    m = torch.tensor(MEAN).view(1, 3, 1, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1, 1)
    return (video.cpu() * s + m) * 255.0


@pytest.fixture(scope="module")
def ids_root(tmp_path_factory):
    """10 clips of 12 frames in 4 shards: frame i is grey level(i), clip k has a bar of 2 (k + 1) columns."""
    return U.index_dataset(tmp_path_factory.mktemp("ids"), "val", n=10, per_shard=3, frames=12)


@pytest.fixture(scope="module")
def one_shard_root(tmp_path_factory):
    """7 clips in a single shard: fewer shards than ranks x workers, so splitting goes by sample."""
    return U.index_dataset(tmp_path_factory.mktemp("one"), "val", n=7, per_shard=7, frames=12)


@pytest.fixture(scope="module")
def still_root(tmp_path_factory):
    """Clips whose frames are all the same structured picture; labels 0..2 with a flip map 0 <-> 1."""
    samples = []
    for i in range(8):
        f = U.make_frames(20, identical=True)
        samples.append({"key": f"still{i}", "mp4": U.encode_mp4(f, crf=0), "label": i % 3, "frames": 20})
    return U.write_shards(tmp_path_factory.mktemp("still"), samples, split="train", per_shard=4)


# ---------------------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------------------


def test_seeking_decoder_matches_plain_sequential_decode() -> None:
    from marvit.pipeline.video import decode_frames  # the converter's plain decoder: frame 0 onwards

    data = U.encode_mp4(U.make_frames(40, bar=6), gop=8)
    full = decode_frames(data)
    assert full.shape[0] == 40
    for idx in ([0, 4, 8, 12], [17, 21, 25, 29, 33], [9, 9, 9, 30], [33, 36, 39, 42, 45], [38, 5, 20]):
        got = decode_clip(data, np.array(idx))
        ref = full[np.minimum(idx, 39)]
        np.testing.assert_array_equal(got, ref)
        assert [U.frame_index(f[:, 20:].mean()) for f in got] == (np.minimum(idx, 39) % 36).tolist()


@pytest.mark.skipif(not dali_available(), reason="no DALI decoder")
@pytest.mark.parametrize("short", [48, 40])
def test_dali_and_pyav_give_the_same_test_views(ids_root, short: int) -> None:
    """No augmentation: short-side resize, 2 clips x 3 crops. Same frames, same crops, pixels within a
    small tolerance (the two decoders convert YUV to RGB with different code)."""
    cfg = _cfg(ids_root, test_short_side=short, img_size=short - 8, num_workers=0)
    out = {}
    for be in ("dali", "pyav"):
        batches = list(_load(cfg, "val", be, train=False))
        cat = {k: torch.cat([b[k].cpu() for b in batches]) for k in ("video", "label", "video_id", "view")}
        order = torch.argsort(cat["video_id"] * 100 + cat["view"])
        out[be] = {k: v[order] for k, v in cat.items()}
    d, p = out["dali"], out["pyav"]
    for k in ("label", "video_id", "view"):
        assert torch.equal(d[k], p[k]), k
    assert d["video"].shape == p["video"].shape == (10 * 6, 3, 8, short - 8, short - 8)
    diff = (_uint8(d["video"]) - _uint8(p["video"])).abs()
    # the decoders upsample chroma differently (visible at the sharp red bar), the resizers filter edges
    # differently; elsewhere the pixels agree to a level or two
    off = (diff > 4).float().mean()
    assert diff.mean() < 1.5 and off < 0.05 and diff.max() < 64, (diff.mean(), off, diff.max())
    # the same frames: frame index read back from the grey level of the right part of the centre crop
    gd = _uint8(d["video"])[:, :, :, :, -8:].mean((1, 3, 4))  # (N, T)
    gp = _uint8(p["video"])[:, :, :, :, -8:].mean((1, 3, 4))
    assert torch.equal(torch.round((gd - 16) / 6), torch.round((gp - 16) / 6))


# ---------------------------------------------------------------------------------------------------------
# augmentation: one random choice per clip
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_augmentation_is_one_choice_per_clip(still_root, backend: str) -> None:
    """Every frame of a clip is the same picture, so after crop, flip and RandAugment all output frames
    must still be the same, while different clips get different crops."""
    cfg = _cfg(still_root, batch_size=4, num_workers=1, img_size=32, rand_augment=True, min_area=0.2)
    loader = _load(cfg, "train", backend, seed=3)
    videos = torch.cat([b["video"].cpu() for b in loader])  # (N, 3, T, S, S)
    assert videos.shape[1:] == (3, 8, 32, 32)
    per_frame = (_uint8(videos) - _uint8(videos[:, :, :1])).abs().amax(dim=(1, 2, 3, 4))
    assert per_frame.max() <= 1e-3, per_frame  # lossless clips: exactly the same frames
    sig = torch.round(_uint8(videos)[:, :, 0].mean(dim=(2, 3)))  # (N, 3): mean colour of each clip
    distinct = {tuple(r) for r in sig.tolist()}
    assert len(distinct) >= len(videos) - 1  # the clips did not all get the same augmentation


@pytest.fixture(scope="module")
def tagged_root(tmp_path_factory):
    """Still clips whose blue level tells their label (0, 1, 2)."""
    samples = []
    for i in range(9):
        f = U.make_frames(12, identical=True, tag=i % 3)
        samples.append({"key": f"tag{i}", "mp4": U.encode_mp4(f, crf=0), "label": i % 3, "frames": 12})
    return U.write_shards(tmp_path_factory.mktemp("tagged"), samples, split="train", per_shard=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flip_swaps_labels_with_the_map(tagged_root, backend: str) -> None:
    """No RandAugment: the red channel rises left to right unless the clip was flipped, the blue level gives
    the original label; a flipped clip must carry map[label]."""
    flip_map = {0: 1, 1: 0}
    seen = Counter()
    for flip in (True, False):
        cfg = _cfg(tagged_root, batch_size=3, num_workers=1, rand_augment=False, min_area=0.5, flip=flip,
                   flip_label_map=flip_map)  # fmt: skip
        for epoch in range(2 if flip else 1):
            for b in _load(cfg, "train", backend, seed=epoch, epoch=epoch):
                x = _uint8(b["video"])[:, :, 0]  # (N, 3, S, S) first frames
                flipped = (x[:, 0, :, :4].mean((1, 2)) > x[:, 0, :, -4:].mean((1, 2))).tolist()
                orig = torch.round((x[:, 2].mean((1, 2)) - 40) / 80).long().tolist()
                for f, o, lab in zip(flipped, orig, b["label"].tolist()):
                    assert lab == (flip_map.get(o, o) if f else o), (f, o, lab)
                    assert flip or not f
                    seen[(f, o)] += 1
    assert seen[(True, 0)] and seen[(True, 1)] and seen[(False, 0)]  # the map was exercised both ways


def test_flip_label_map_per_row() -> None:
    """The PyAV twin maps the label of each flipped clip (checked row by row on known labels)."""
    from marvit.pipeline.augment import AugmentRecipe, ClipTrainAugment

    cfg = DataConfig(img_size=32, rand_augment=False, min_area=1.0, flip_label_map={0: 1, 1: 0})
    aug = ClipTrainAugment(AugmentRecipe.from_config(cfg), cfg.img_size)
    frames = U.make_frames(4, identical=True)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        out, flipped, _ = aug(frames, rng)
        red = out[0, :, :, 0].astype(float)
        assert flipped == bool(red[:, :4].mean() > red[:, -4:].mean())
        seen.add(flipped)
    assert seen == {True, False}


def test_normalize_matches_plain_formula() -> None:
    from marvit.pipeline.augment import normalize

    x = torch.randint(0, 256, (2, 3, 5, 7, 3), dtype=torch.uint8)  # (B, T, H, W, C)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = (
        x.double().permute(0, 4, 1, 2, 3) / 255 - torch.tensor(mean, dtype=torch.double).view(1, 3, 1, 1, 1)
    ) / (torch.tensor(std, dtype=torch.double).view(1, 3, 1, 1, 1))
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == (2, 3, 3, 5, 7)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_random_erasing_is_one_box_per_clip_when_not_per_frame() -> None:
    """``erase_per_frame=False``: one box through every channel and frame of a clip."""
    v = torch.zeros(6, 3, 8, 32, 32)
    erase_clips_(v, AugmentRecipe(erase_prob=1.0, erase_per_frame=False), seed=0)
    for clip in v:
        mask = clip != 0  # (3, T, H, W)
        assert mask.any()
        assert (mask == mask[:1, :1]).all()  # the same region in every channel and frame
        rows, cols = mask[0, 0].any(1).nonzero(), mask[0, 0].any(0).nonzero()
        box = mask[0, 0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and mask[0, 0].sum() == box.numel()  # a filled rectangle


# ---------------------------------------------------------------------------------------------------------
# splitting: every sample exactly once per epoch in evaluation
# ---------------------------------------------------------------------------------------------------------


def _eval_ids(root, backend: str, world_size: int, epochs: int = 1) -> list[Counter]:
    cfg = _cfg(root, num_workers=2, test_clips=1, test_crops=3, test_short_side=48, img_size=48)
    per_epoch = []
    loaders = [
        _load(cfg, "val", backend, rank=r, world_size=world_size, train=False) for r in range(world_size)
    ]
    for _ in range(epochs):
        ids: Counter = Counter()
        for loader in loaders:
            n = 0
            for b in loader:
                n += 1
                # the content identifies the clip: clip k has a red bar of 2 (k % 20 + 1) columns on the left,
                # which the left crop (view 0) shows whole
                assert b["view"].tolist() == [0, 1, 2] * (len(b["view"]) // 3)
                left = b["view"] == 0
                red = _uint8(b["video"][left])[:, 0, 0, 24]  # (N, W) one row of the first frame
                bars = ((red > 150).sum(1) // 2 - 1).tolist()
                for vid, lab, bar in zip(b["video_id"][left].tolist(), b["label"][left].tolist(), bars):
                    assert lab == vid % 3 and bar == vid, (vid, lab, bar)
                    ids[vid] += 1
            assert n == len(loader)
        per_epoch.append(ids)
    return per_epoch


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_every_sample_exactly_once_two_ranks_two_workers(ids_root, one_shard_root, backend: str) -> None:
    for root, n in ((ids_root, 10), (one_shard_root, 7)):
        for ids in _eval_ids(root, backend, world_size=2, epochs=2):
            assert ids == Counter(range(n))


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------


def test_pyav_skips_and_counts_corrupt_videos(tmp_path) -> None:
    good = [
        {
            "key": f"g{i}",
            "mp4": U.encode_mp4(U.make_frames(12, bar=2 * (i + 1))),
            "label": i % 3,
            "frames": 12,
        }
        for i in range(4)
    ]
    whole = U.encode_mp4(U.make_frames(12))
    bad = [
        {"key": "garbage", "mp4": np.random.default_rng(0).bytes(3000), "label": 0, "frames": 12},
        {"key": "truncated", "mp4": whole[: len(whole) // 3], "label": 1, "frames": 12},
        {"key": "empty", "mp4": b"", "label": 2, "frames": 12},
    ]
    U.write_shards(tmp_path, good[:2] + bad + good[2:], split="val", per_shard=4)
    cfg = _cfg(tmp_path, test_clips=1, test_crops=1, img_size=48, num_workers=0)
    loader = _load(cfg, "val", "pyav", train=False)
    with pytest.warns(UserWarning, match="skipping .*garbage"):
        ids = [i for b in loader for i in b["video_id"].tolist()]
    assert sorted(ids) == [0, 1, 5, 6]  # positions of the good clips in the split
    skipped = loader.skipped()
    assert sorted(w.split("'")[1] for w in skipped["samples"]) == ["empty", "garbage", "truncated"]
    assert skipped["count"] == 3 and skipped["reasons"] == {"undecodable video": 3}
    # in DataLoader workers too, and in training
    cfg2 = _cfg(tmp_path, batch_size=2, num_workers=2)
    train = _load(cfg2, "val", "pyav", train=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = sum(b["video"].shape[0] for b in train)
    assert n == len(train) * 2 and len(train) == 7 // 2
    keys = {w.split("'")[1] for w in train.skipped()["samples"]}
    assert keys <= {"empty", "garbage", "truncated"} and keys and train.skipped()["count"] >= len(keys)


@pytest.mark.skipif(not dali_available(), reason="no DALI decoder")
def test_dali_names_a_corrupt_video_and_the_way_out(tmp_path) -> None:
    good = {"key": "fine", "mp4": U.encode_mp4(U.make_frames(12)), "label": 0, "frames": 12}
    bad = {"key": "garbage", "mp4": np.random.default_rng(1).bytes(2000), "label": 0, "frames": 12}
    U.write_shards(tmp_path, [good, bad], split="val", per_shard=2)
    cfg = _cfg(tmp_path, test_clips=1, test_crops=1, img_size=48, num_workers=0, batch_size=2)
    with pytest.raises(InputError, match="(?s)val-000000.tar.*garbage.*marvit verify.*pyav"):
        list(_load(cfg, "val", "dali", train=False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_frame_count_is_a_clear_error(tmp_path, backend: str) -> None:
    s = {"key": "nometa", "mp4": U.encode_mp4(U.make_frames(12)), "label": 0, "frames": 12}
    U.write_shards(tmp_path, [s], split="val", per_shard=1)
    # rewrite the json without "frames"
    import tarfile

    tar = tmp_path / "val-000000.tar"
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(tar, "w") as tf:
        for m, data in members:
            if m.name.endswith(".json"):
                data = json.dumps({"label": "c0"}).encode()
                m.size = len(data)
            import io

            tf.addfile(m, io.BytesIO(data))
    import subprocess

    subprocess.run(["wds2idx", str(tar), str(tar.with_suffix(".idx"))], check=True, capture_output=True)
    cfg = _cfg(tmp_path, test_clips=1, test_crops=1, img_size=48, num_workers=0, batch_size=1)
    with pytest.raises(Exception, match="nometa.*'frames'"):
        list(_load(cfg, "val", backend, train=False))


def test_build_loader_errors(ids_root) -> None:
    with pytest.raises(ValueError, match="backend='tf'"):
        _load(_cfg(ids_root), "val", "tf")
    with pytest.raises(KeyError, match="no split 'test'"):
        _load(_cfg(ids_root), "test", "pyav")
    with pytest.raises(ValueError, match="data.root is not set"):
        _load(DataConfig(), "val", "pyav")
    with pytest.raises(ValueError, match="cannot fill one training batch"):
        _load(_cfg(ids_root, batch_size=8), "val", "pyav", world_size=2, train=True)


# ---------------------------------------------------------------------------------------------------------
# mixup / cutmix on 5-D video
# ---------------------------------------------------------------------------------------------------------


def test_cutmix_on_video_cuts_one_spatial_box_for_all_frames() -> None:
    cfg = DataConfig(mixup=0.0, cutmix=1.0, label_smoothing=0.0)
    mix = mixup_fn(cfg, num_classes=5)
    torch.manual_seed(0)
    np.random.seed(0)
    for _ in range(5):
        x = torch.rand(4, 3, 6, 20, 28)
        y = torch.tensor([0, 1, 2, 3])
        out, target = mix(x.clone(), y)
        assert out.shape == x.shape
        from_other = (out == x.flip(0)) & (out != x)  # pixels pasted from the partner clip
        region = from_other[0, 0, 0]  # (H, W)
        assert (from_other == region).all()  # the same box in every clip, channel and frame
        if region.any():
            rows, cols = region.any(1).nonzero(), region.any(0).nonzero()
            assert region[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        lam = 1.0 - region.float().mean().item()  # kept fraction of H x W
        ref = lam * torch.eye(5)[y] + (1 - lam) * torch.eye(5)[y.flip(0)]
        torch.testing.assert_close(target, ref, atol=1e-6, rtol=0)


def test_mixup_on_video_blends_whole_clips() -> None:
    cfg = DataConfig(mixup=0.8, cutmix=0.0, label_smoothing=0.1)
    mix = mixup_fn(cfg, num_classes=4)
    x = torch.rand(4, 3, 4, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    out, target = mix(x.clone(), y)
    lam = float(target[0, 0] - 0.1 / 4) / (1 - 0.1)  # smoothed one-hot: off = 0.1 / 4, on = 0.9 + 0.1 / 4
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.flip(0), atol=1e-5, rtol=1e-5)
    assert mixup_fn(DataConfig(mixup=0.0, cutmix=0.0), 4) is None


# ---------------------------------------------------------------------------------------------------------
# the benchmark runs end to end
# ---------------------------------------------------------------------------------------------------------


def test_bench_pipeline_smoke(still_root, tmp_path, capsys) -> None:
    from marvit.bench.pipeline import main

    rc = main(str(still_root), backend="pyav", split="train", batch=2, clips=4, workers=0, frames=4, size=32,
              out=str(tmp_path), as_json=True)  # fmt: skip
    assert rc == 0
    report = json.loads((tmp_path / "pipeline.json").read_text())
    assert [r["loader"] for r in report["results"]] == ["pyav", "naive"]
    assert all(r["clips"] >= 4 and r["clips_per_s"] > 0 for r in report["results"])
    assert json.loads(capsys.readouterr().out)["speedup_vs_naive"] > 0
