"""The one loader contract (``len``, ``set_epoch``, ``iter_from``, ``skipped``) for every backend, class
mixing under 2 ranks x 2 workers against the exact i.i.d. expectation, and bad shards: a sample without its
video skipped and counted, a corrupt video (PyAV skips, DALI names the shard), ``check_shards`` against the
manifest. Shards are written by tests/_loader_util.py, independently of marvit's converter."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import tarfile
import warnings

import _loader_util as U  # tests/ is on sys.path
import numpy as np
import pytest
import torch

from marvit.config import DataConfig
from marvit.errors import InputError
from marvit.pipeline import build_loader, check_shards, resolve_backend
from marvit.pipeline.dali_loader import dali_available

NEEDS_DALI = pytest.mark.skipif(not dali_available(), reason="no DALI decoder")
REAL = ["pyav", pytest.param("dali", marks=NEEDS_DALI)]


def _cfg(root, backend: str, **kw) -> DataConfig:
    base = dict(root=str(root) if root else None, backend=backend, num_frames=2, sampling_rate=1, img_size=16,
                test_short_side=16, test_clips=1, test_crops=1, batch_size=4, num_workers=2,
                rand_augment=False, reprob=0.0, mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
    base.update(kw)
    return DataConfig(**base)


def _tiny(label: int, key: str, frames: int = 4) -> dict:
    f = U.make_frames(frames, h=16, w=16, bar=1 + label % 12)
    return {"key": key, "mp4": U.encode_mp4(f, gop=4), "label": label, "frames": frames, "width": 16,
            "height": 16}  # fmt: skip


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    """32 labels x 8 clips from a class-sorted listing, written in a seeded random order (as `marvit
    convert` writes), 16 clips per shard."""
    listing = [(c, i) for c in range(32) for i in range(8)]  # sorted by class, as real listings arrive
    order = np.random.default_rng(11).permutation(len(listing))
    samples = [_tiny(listing[j][0], f"k{n:04d}") for n, j in enumerate(order)]
    return U.write_shards(tmp_path_factory.mktemp("mixed"), samples, split="train", per_shard=16)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    samples = [_tiny(i % 5, f"s{i:03d}") for i in range(24)]
    return U.write_shards(tmp_path_factory.mktemp("small"), samples, split="train", per_shard=6)


def iid_distinct(counts: list[int], b: int) -> float:
    """E[distinct labels] in ``b`` samples drawn uniformly without replacement from a split with
    ``counts[c]`` samples of class c: sum over classes of P(class c drawn at least once)."""
    n = sum(counts)
    return sum(1 - math.comb(n - k, b) / math.comb(n, b) for k in counts)


def test_iid_expectation_against_simulation() -> None:
    counts = [8] * 32
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(32), 8)
    sim = np.mean([len(set(rng.choice(labels, 8, replace=False))) for _ in range(20000)])
    assert abs(iid_distinct(counts, 8) - sim) < 0.02
    assert iid_distinct([1] * 8, 8) == pytest.approx(8.0)  # every sample a class of its own


# ---------------------------------------------------------------------------------------------------------
# the contract, every backend
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["synthetic", *REAL])
def test_iter_from_resumes_the_same_batches(small_root, backend: str) -> None:
    cfg = _cfg(small_root, backend, synthetic_samples=(24, 8), num_workers=2 if backend == "pyav" else 1)
    loader = build_loader(cfg, "train", num_classes=5, seed=4, epoch=1)
    n = len(loader)
    assert n == 24 // 4
    full = list(loader)
    assert len(full) == n and list(iter(loader))[0]["label"].tolist() == full[0]["label"].tolist()
    for k in (1, n - 1, n):
        part = list(loader.iter_from(k))
        assert len(part) == n - k
        for a, b in zip(part, full[k:]):
            assert torch.equal(a["label"], b["label"])
            torch.testing.assert_close(a["video"], b["video"], atol=0, rtol=0)
    loader.set_epoch(2)
    other = [b["label"].tolist() for b in loader]
    assert other != [b["label"].tolist() for b in full]  # another epoch, another order
    assert loader.skipped() == {"count": 0, "reasons": {}, "samples": []}
    with pytest.raises(ValueError, match="iter_from"):
        loader.iter_from(n + 1)


@pytest.mark.parametrize("backend", ["synthetic", *REAL])
def test_repeated_aug_gives_r_views_per_clip(small_root, backend: str) -> None:
    cfg = _cfg(small_root, backend, repeated_aug=2, synthetic_samples=(24, 8), num_workers=1)
    batch = next(iter(build_loader(cfg, "train", num_classes=5)))
    assert batch["video"].shape == (8, 3, 2, 16, 16) and batch["label"].shape == (8,)
    assert torch.equal(batch["label"][0::2], batch["label"][1::2])  # the views of a clip are consecutive


def test_backend_choice() -> None:
    assert resolve_backend("synthetic") == "synthetic"
    assert resolve_backend("auto", "cpu") == "pyav"  # measured faster on a CPU (see resolve_backend)
    with pytest.raises(InputError, match="backend='tf'"):
        resolve_backend("tf")
    with pytest.raises(InputError, match="num_classes"):
        build_loader(_cfg(None, "synthetic"), "train")


# ---------------------------------------------------------------------------------------------------------
# class mixing: a batch mixes classes as an i.i.d. draw would, on every rank and worker
# ---------------------------------------------------------------------------------------------------------


def distinct_per_batch(root, backend: str, batch: int = 8, world: int = 2, workers: int = 2, epochs: int = 2):
    """Mean distinct labels per training batch over ``world`` ranks of ``workers`` workers each."""
    cfg = _cfg(root, backend, batch_size=batch, num_workers=workers)
    per_batch = []
    for rank in range(world):
        loader = build_loader(cfg, "train", rank=rank, world_size=world, seed=7)
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            per_batch += [len(set(b["label"].tolist())) for b in loader]
    return float(np.mean(per_batch)), len(per_batch)


@pytest.mark.parametrize("backend", REAL)
def test_batches_mix_classes_like_an_iid_draw(mixed_root, backend: str) -> None:
    expect = iid_distinct([8] * 32, 8)  # 7.18 of 8
    got, n = distinct_per_batch(mixed_root, backend)
    assert n == 2 * 2 * (256 // 2 // 8)
    assert abs(got - expect) <= 0.1 * expect, (got, expect)


# ---------------------------------------------------------------------------------------------------------
# bad shards
# ---------------------------------------------------------------------------------------------------------


def _drop_member(tar_path, key: str, ext: str) -> None:
    """Rewrite a shard without ``key.ext`` and refresh its index (the manifest keeps the old sha256)."""
    with tarfile.open(tar_path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers() if m.name != f"{key}.{ext}"]
    with tarfile.open(tar_path, "w") as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data))
    import subprocess

    subprocess.run(
        ["wds2idx", str(tar_path), str(tar_path.with_suffix(".idx"))], check=True, capture_output=True
    )


@pytest.mark.parametrize("backend", REAL)
def test_sample_without_video_is_skipped_and_counted(tmp_path, backend: str) -> None:
    samples = [_tiny(i % 3, f"m{i:02d}") for i in range(8)]
    U.write_shards(tmp_path, samples, split="val", per_shard=4)
    _drop_member(tmp_path / "val-000001.tar", "m05", "mp4")
    cfg = _cfg(tmp_path, backend, num_workers=0 if backend == "pyav" else 1, batch_size=2)
    loader = build_loader(cfg, "val", train=False)
    with pytest.warns(UserWarning, match="skipping .*m05.*missing member"):
        ids = sorted(i for b in loader for i in b["video_id"].tolist())
    assert len(ids) == 7 and len(set(ids)) == 7
    skipped = loader.skipped()
    assert skipped["count"] == 1 and skipped["reasons"] == {"missing member": 1}
    assert "val-000001.tar" in skipped["samples"][0] and "m05" in skipped["samples"][0]
    # training goes on too
    train = build_loader(dataclasses.replace(cfg, num_workers=1), "val", train=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(4):  # a shuffled stream meets the sample in one of its first passes
            train.set_epoch(epoch)
            assert sum(b["video"].shape[0] for b in train) == len(train) * 2
    assert (
        train.skipped()["reasons"] == {"missing member": train.skipped()["count"]}
        and train.skipped()["count"]
    )


def test_pyav_skips_an_undecodable_video_in_training(tmp_path) -> None:
    samples = [_tiny(i % 3, f"u{i:02d}") for i in range(8)]
    samples[2]["mp4"] = b"\x00\x00\x00\x18ftypmp42" + bytes(300)
    U.write_shards(tmp_path, samples, split="train", per_shard=4)
    loader = build_loader(_cfg(tmp_path, "pyav", num_workers=2, batch_size=2), "train")
    with pytest.warns(UserWarning, match="skipping .*u02.*undecodable video"):
        n = sum(b["video"].shape[0] for b in loader)
    assert n == len(loader) * 2 and loader.skipped()["reasons"] == {"undecodable video": 1}


@NEEDS_DALI
def test_dali_names_the_shard_of_an_undecodable_video_in_training(tmp_path) -> None:
    samples = [_tiny(i % 3, f"u{i:02d}") for i in range(8)]
    samples[6]["mp4"] = np.random.default_rng(3).bytes(700)
    U.write_shards(tmp_path, samples, split="train", per_shard=4)
    loader = build_loader(_cfg(tmp_path, "dali", num_workers=1, batch_size=8), "train")
    with pytest.raises(InputError, match="(?s)train-000001.tar.*u06.*data.backend=pyav"):
        list(loader)


def test_check_shards_against_the_manifest(tmp_path) -> None:
    samples = [_tiny(i % 3, f"c{i:02d}") for i in range(8)]
    U.write_shards(tmp_path, samples, split="train", per_shard=4)
    mpath = tmp_path / "manifest.json"
    man = json.loads(mpath.read_text())
    for e in man["splits"]["train"]["shards"]:
        e["bytes"] = (tmp_path / e["name"]).stat().st_size
    mpath.write_text(json.dumps(man))
    ok = check_shards(tmp_path, "train")
    assert ok == {"split": "train", "shards": 2, "samples": 8, "checksums": True, "incomplete": 0,
                  "bytes": sum(e["bytes"] for e in man["splits"]["train"]["shards"])}  # fmt: skip
    shard = tmp_path / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    # same size, one byte changed inside a video: only the checksum can tell
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match="train-000001.tar: sha256"):
        check_shards(tmp_path, "train")
    assert (
        check_shards(tmp_path, "train", checksums=False)["samples"] == 8
    )  # the fast mode reads headers only
    # truncated
    shard.write_bytes(bytes(data[:-1024]))
    with pytest.raises(InputError, match="train-000001.tar: .* bytes, the manifest says"):
        check_shards(tmp_path, "train", checksums=False)
    # a sample count that differs from the manifest's
    del man["splits"]["train"]["shards"][1]["bytes"]
    man["splits"]["train"]["shards"][1]["sha256"] = None
    man["splits"]["train"]["shards"][0]["samples"] = 5
    mpath.write_text(json.dumps(man))
    with pytest.raises(InputError, match="train-000000.tar: 4 samples in the tar, the manifest says 5"):
        check_shards(tmp_path, "train", checksums=False)
    (tmp_path / "train-000000.tar").unlink()
    with pytest.raises(InputError, match="train-000000.tar .*does not exist"):
        check_shards(tmp_path, "train")
    with pytest.raises(InputError, match="no shards for split 'val'"):
        check_shards(tmp_path, "val")
