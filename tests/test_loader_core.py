"""The loader core (marvit/pipeline/core.py): the flip-label table against its dict twin, no host sync per
batch on any backend, several DALI pipelines per rank delivering each sample once per epoch, the epoch
length, and data integrity at training time (issue 23): ``.cls`` against ``.json``, a shard changed or cut
short under a running loader, random bytes inside mp4 payloads, and ``data.verify=checksum``."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import _loader_util as U  # tests/ is on sys.path
import av
import numpy as np
import pytest
import torch

from marvit.config import DataConfig
from marvit.errors import InputError
from marvit.pipeline import build_loader
from marvit.pipeline.core import FlipLabels, epoch_batches
from marvit.pipeline.dali_loader import dali_available

NEEDS_DALI = pytest.mark.skipif(not dali_available(), reason="no DALI decoder")
ALL = ["synthetic", "pyav", "cached", pytest.param("dali", marks=NEEDS_DALI)]


def _cfg(root, backend: str, **kw) -> DataConfig:
    base = dict(root=str(root) if root else None, backend=backend, num_frames=2, sampling_rate=1, img_size=16,
                test_short_side=16, test_clips=1, test_crops=1, batch_size=2, num_workers=0,
                rand_augment=False, reprob=0.0, mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
    base.update(kw)
    return DataConfig(**base)


def _sample(i: int, label: int | None = None, frames: int = 4) -> dict:
    f = U.make_frames(frames, h=16, w=16, bar=1 + i % 12)
    return {"key": f"s{i:03d}", "mp4": U.encode_mp4(f, gop=4), "label": i if label is None else label,
            "frames": frames, "width": 16, "height": 16}  # fmt: skip


def _rewrite(tar: Path, change) -> None:
    """Rewrite ``tar`` with ``change(name, data) -> data`` applied to every member; refresh its index."""
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(tar, "w") as tf:
        for m, data in members:
            data = change(m.name, data)
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    subprocess.run(["wds2idx", str(tar), str(tar.with_suffix(".idx"))], check=True, capture_output=True)


def _with_class(root: Path, split: str = "train") -> None:
    """Add ``"class"`` (the .cls index) to every sample's .json, as `marvit convert` writes it."""
    for tar in sorted(root.glob(f"{split}-*.tar")):
        cls = {}
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".cls"):
                    cls[m.name[:-4]] = int(tf.extractfile(m).read())

        def add(name: str, data: bytes, cls=cls) -> bytes:
            if not name.endswith(".json"):
                return data
            return json.dumps({**json.loads(data), "class": cls[name[:-5]]}).encode()

        _rewrite(tar, add)


@pytest.fixture(scope="module")
def unique_root(tmp_path_factory):
    """24 samples, each its own class (label = sample index), in 5 shards of up to 5."""
    return U.write_shards(tmp_path_factory.mktemp("unique"), [_sample(i) for i in range(24)], per_shard=5)


# ---------------------------------------------------------------------------------------------------------
# the shared stages
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flip_map", [{0: 1, 1: 0}, {3: 7, 7: 3, 5: 2}, {2: 9}])
def test_flip_table_matches_the_dict_lookup(flip_map) -> None:
    g = torch.Generator().manual_seed(0)
    label = torch.randint(-1, 12, (500,), generator=g)
    flipped = torch.rand(500, generator=g) < 0.5
    got = FlipLabels(flip_map, torch.device("cpu"))(label, flipped)
    want = [flip_map.get(x, x) if f else x for x, f in zip(label.tolist(), flipped.tolist())]
    assert got.tolist() == want
    assert FlipLabels(None, torch.device("cpu"))(label, flipped) is label


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_epoch_batches(parts: int, world: int) -> None:
    for n in (7, 24, 25, 100, 257):
        for b in (1, 2, 4):
            got = epoch_batches(n, world, b, parts)
            if parts == 1:
                assert got == (n // world) // b
            # every rank can fill that many batches from its parts without reading a sample twice
            for r in range(world):
                cap = sum((n * (r * parts + p + 1) // (world * parts) - n * (r * parts + p) // (world * parts)) // b
                          for p in range(parts))  # fmt: skip
                assert got <= cap


class _SyncCounter:
    """Counts the calls of the tensor methods that read a value back to the host."""

    NAMES = ("tolist", "item", "cpu", "__int__", "__float__", "__bool__", "__index__")

    def __init__(self, monkeypatch) -> None:
        self.calls: Counter[str] = Counter()
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)

            def wrapped(t, *a, _orig=orig, _name=name, **k):
                self.calls[_name] += 1
                return _orig(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapped)


@pytest.mark.parametrize("backend", ALL)
def test_no_host_sync_per_batch(unique_root, backend: str, monkeypatch) -> None:
    """No ``.tolist()``/``.item()``/``.cpu()`` (nor int()/float()/bool() of a tensor) while batches flow, flip
    map, repeated augmentation and random erasing on: on a GPU each would stall the training step."""
    cfg = _cfg(unique_root, backend, flip_label_map={0: 1, 1: 0, 5: 6, 6: 5}, repeated_aug=2, reprob=0.5,
               synthetic_samples=(24, 8), num_workers=0 if backend != "dali" else 1)  # fmt: skip
    loader = build_loader(cfg, "train", num_classes=24, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = iter(loader)
        batches = [next(it)]  # once per epoch, starting a pass may read a seed (torch's DataLoader does)
        counter = _SyncCounter(monkeypatch)
        batches += list(it)
    monkeypatch.undo()
    assert len(batches) == len(loader) == 12 and batches[0]["video"].shape == (4, 3, 2, 16, 16)
    assert sum(counter.calls.values()) == 0, dict(counter.calls)


# ---------------------------------------------------------------------------------------------------------
# several DALI pipelines per rank
# ---------------------------------------------------------------------------------------------------------


@NEEDS_DALI
@pytest.mark.parametrize("pipes,world", [(3, 1), (2, 2), (4, 1)])
def test_dali_pipelines_deliver_each_sample_once_per_epoch(unique_root, pipes: int, world: int) -> None:
    cfg = _cfg(unique_root, "dali", dali_pipelines=pipes, num_workers=1)
    for epoch in (0, 1):
        seen: Counter[int] = Counter()
        for rank in range(world):
            loader = build_loader(cfg, "train", rank=rank, world_size=world, seed=5, epoch=epoch)
            assert len(loader) == epoch_batches(24, world, 2, pipes)
            for b in loader:
                seen.update(b["label"].tolist())
        assert max(seen.values()) == 1  # no sample twice
        assert sum(seen.values()) == world * len(loader) * 2
    if 24 % (world * pipes * 2) == 0:  # every part fills whole batches: every sample once
        assert set(seen) == set(range(24))
    # evaluation: every sample exactly once over the ranks, with its id
    ids = Counter()
    for rank in range(world):
        ev = build_loader(cfg, "train", train=False, rank=rank, world_size=world)
        batches = list(ev)
        assert len(batches) == len(ev)
        for b in batches:
            assert b["label"].tolist() == b["video_id"].tolist()  # label = sample index here
            ids.update(b["video_id"].tolist())
    assert ids == Counter(range(24))


# ---------------------------------------------------------------------------------------------------------
# data integrity at training time (issue 23)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def mislabeled_root(tmp_path):
    """12 samples whose .json carries the class; three .cls members then changed (one byte each)."""
    U.write_shards(tmp_path, [_sample(i, label=i % 4) for i in range(12)], per_shard=4)
    _with_class(tmp_path)
    bad = {"s001", "s006", "s011"}

    def flip_cls(name: str, data: bytes) -> bytes:
        return str((int(data) + 1) % 4).encode() if name.endswith(".cls") and name[:-4] in bad else data

    for tar in sorted(tmp_path.glob("train-*.tar")):
        _rewrite(tar, flip_cls)
    return tmp_path


@pytest.mark.parametrize("backend", ["pyav", "cached"])
def test_label_mismatch_is_a_counted_skip(mislabeled_root, backend: str) -> None:
    with pytest.warns(UserWarning, match="skipping .*label mismatch"):
        loader = build_loader(_cfg(mislabeled_root, backend), "train", train=False)
        got = {int(i): int(lab) for b in loader for i, lab in zip(b["video_id"], b["label"])}
    assert len(got) == 9 and all(lab == i % 4 for i, lab in got.items())  # the 9 good samples, right labels
    assert loader.skipped()["reasons"] == {"label mismatch": 3}
    assert {s.split("'")[1] for s in loader.skipped()["samples"]} == {"s001", "s006", "s011"}


@NEEDS_DALI
def test_dali_refuses_a_label_mismatch_by_name(mislabeled_root) -> None:
    loader = build_loader(_cfg(mislabeled_root, "dali", num_workers=1, batch_size=12), "train")
    with pytest.raises(InputError, match=r"train-00000\d.tar.*s0(01|06|11).*\.cls says class"):
        list(loader)


def test_pyav_counts_a_shard_truncated_under_the_loader(unique_root, tmp_path) -> None:
    """An epoch that loses samples says how many it lost and how many repeats filled it."""
    root = tmp_path / "data"
    root.mkdir()
    for f in Path(unique_root).iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    loader = build_loader(_cfg(root, "pyav", num_workers=1), "train", seed=2)
    full = [b["label"] for b in loader]
    assert torch.cat(full).unique().numel() == 24 and loader.skipped()["count"] == 0
    shard = root / "train-000001.tar"  # samples 5..9
    shard.write_bytes(shard.read_bytes()[:3000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = torch.cat([b["label"] for b in loader])
    assert len(labels) == 24  # the epoch still has its batches
    lost = loader.skipped()
    assert lost["count"] == 5 and lost["reasons"] == {"shard changed under the loader": 5}
    assert all("train-000001.tar" in s for s in lost["samples"])
    assert not set(labels.tolist()) & {5, 6, 7, 8, 9}
    assert lost["repeated"] == 5 == len(labels) - len(set(labels.tolist()))  # every repeat counted


def test_pyav_counts_what_a_shard_cut_short_mid_read_lost(unique_root, tmp_path) -> None:
    """A shard that passes the size check and is then cut short (or was never whole): every sample it should
    hold is either read or stands in as a counted loss, none vanishes."""
    from marvit.pipeline.pyav_loader import _ClipStream
    from marvit.pipeline.shards import find_shards

    root = tmp_path / "data"
    root.mkdir()
    for f in Path(unique_root).iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    shards = find_shards(root, "train")
    url = shards.urls[1]
    Path(url).write_bytes(Path(url).read_bytes()[:4000])  # after find_shards: no stat to compare with
    stream = _ClipStream(shards, _cfg(root, "pyav"), True, 0, 1, 0, 0)
    got = list(stream._shard_samples(url))
    assert len(got) == shards.counts[1] == 5
    lost = [s for s in got if "__lost__" in s]
    assert lost and all(s["__lost__"].startswith("unreadable shard") for s in lost)
    assert all(s["__url__"] == url for s in got)


_DALI_TRUNCATE = """
import sys, warnings
warnings.simplefilter("ignore")
from marvit.config import DataConfig
from marvit.errors import InputError
from marvit.pipeline import build_loader
cfg = DataConfig(root=sys.argv[1], backend="dali", num_frames=2, sampling_rate=1, img_size=16, test_short_side=16,
                 test_clips=1, test_crops=1, batch_size=2, num_workers=1, rand_augment=False, reprob=0.0)
loader = build_loader(cfg, "train", seed=1)
shard = sys.argv[1] + "/train-000001.tar"
try:
    for epoch in range(3):
        loader.set_epoch(epoch)
        for i, b in enumerate(loader):
            if epoch == 0 and i == 1:
                data = open(shard, "rb").read()
                open(shard, "wb").write(data[:3000])
except InputError as e:
    print("INPUTERROR", str(e).splitlines()[0])
    sys.exit(2)
print("NO ERROR")
"""


@NEEDS_DALI
def test_dali_names_a_shard_truncated_under_the_loader(unique_root, tmp_path) -> None:
    """One clear error naming the shard, never a SIGBUS (DALI maps shards; marvit reads them instead)."""
    root = tmp_path / "data"
    root.mkdir()
    for f in Path(unique_root).iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    r = subprocess.run([sys.executable, "-c", _DALI_TRUNCATE, str(root)], capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "INPUTERROR" in r.stdout and "train-000001.tar" in r.stdout


def _plain_decode(data: bytes) -> list[np.ndarray]:
    """Every frame with FFmpeg's default error handling (what marvit's PyAV path did before: conceal)."""
    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def _scramble(data: bytes, seed: int) -> bytes:
    """8 random bytes inside the coded frames (the mdat box) of an mp4."""
    b = bytearray(data)
    at = b.index(b"mdat") + 4
    end = at + int.from_bytes(b[at - 8 : at - 4], "big") - 8
    rng = np.random.default_rng(seed)
    pos = int(rng.integers(at + (end - at) // 4, end - (end - at) // 4))
    b[pos : pos + 8] = rng.bytes(8)
    return bytes(b)


@pytest.fixture
def scrambled_root(tmp_path):
    """12 clips of 8 frames; in 3 of them (s006, s008, s011) random bytes that FFmpeg's default decoding
    conceals: it returns every frame, with other pixels (checked here)."""
    samples = [_sample(i, label=i % 4, frames=8) for i in range(12)]
    for i in (6, 8, 11):
        seed = next(
            s for s in range(100)
            if _silently_corrupt(samples[i]["mp4"], _scramble(samples[i]["mp4"], s))
        )  # fmt: skip
        samples[i]["mp4"] = _scramble(samples[i]["mp4"], seed)
    return U.write_shards(tmp_path, samples, per_shard=6)


def _silently_corrupt(clean: bytes, bad: bytes) -> bool:
    try:
        got = _plain_decode(bad)
    except av.error.FFmpegError:
        return False
    want = _plain_decode(clean)
    return len(got) == len(want) and any((a != b).any() for a, b in zip(got, want))


def test_pyav_counts_every_scrambled_payload(scrambled_root) -> None:
    # every frame decoded (8 of 8), so no corrupt frame can hide outside the clip
    loader = build_loader(_cfg(scrambled_root, "pyav", num_frames=8), "train", train=False)
    with pytest.warns(UserWarning, match="undecodable video"):
        ids = sorted(int(i) for b in loader for i in b["video_id"])
    assert ids == [i for i in range(12) if i not in (6, 8, 11)]
    assert loader.skipped()["reasons"] == {"undecodable video": 3}


@pytest.fixture
def garbled_root(tmp_path):
    """12 clips of 8 frames; random bytes over the middle three quarters of the coded frames of 3 (the
    DALI decoder fails on them: its message names no shard)."""
    samples = [_sample(i, label=i % 4, frames=8) for i in range(12)]
    rng = np.random.default_rng(1)
    for i in (6, 8, 11):
        b = bytearray(samples[i]["mp4"])
        at = b.index(b"mdat") + 4
        end = at + int.from_bytes(b[at - 8 : at - 4], "big") - 8
        lo, hi = at + (end - at) // 8, end - (end - at) // 8
        b[lo:hi] = rng.bytes(hi - lo)
        samples[i]["mp4"] = bytes(b)
    return U.write_shards(tmp_path, samples, per_shard=6)


@NEEDS_DALI
def test_dali_names_the_shard_of_a_garbled_payload(garbled_root) -> None:
    """DALI conceals small corruptions as FFmpeg's default does (see the PyAV test; only a checksum per
    payload could tell); where its decoder fails, the error names the shard."""
    loader = build_loader(_cfg(garbled_root, "dali", num_frames=8, num_workers=1, batch_size=4), "train")
    with pytest.raises(InputError, match="(?s)the DALI loader failed on .*train-000001.tar"):
        for epoch in range(2):
            loader.set_epoch(epoch)
            list(loader)


def test_data_verify_checksum(tmp_path) -> None:
    from marvit.config import Config
    from marvit.train.setup import check_shards

    U.write_shards(tmp_path, [_sample(i, label=i % 4) for i in range(8)], per_shard=4)
    shard = tmp_path / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF  # same size, one byte of a video changed: only the checksum tells
    shard.write_bytes(bytes(data))
    cfg = Config()
    cfg.data = dataclasses.replace(cfg.data, root=str(tmp_path), backend="pyav")
    check_shards(cfg, {"train"})  # the default: sizes and counts only
    cfg.data = dataclasses.replace(cfg.data, verify="checksum")
    with pytest.raises(InputError, match="train-000001.tar: sha256"):
        check_shards(cfg, {"train"})
