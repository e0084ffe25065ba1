"""``marvit convert`` / ``marvit verify`` on small data sets the tests write (see ``_data_util``).

Everything is checked from the outside: shards are read back with ``tarfile``, videos decoded with plain
PyAV, checksums recomputed with ``hashlib``, DALI index entries compared with the tar's own offsets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _data_util import (
    decode_all,
    make_class_sorted_list,
    make_folder_tree,
    make_kinetics,
    make_ssv2,
    read_shard,
    stream_facts,
    tar_offsets,
    write_video,
    x264_settings,
)

from marvit.cli import main
from marvit.errors import InputError
from marvit.pipeline import convert as C


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _samples(out: Path, split: str) -> dict[str, dict[str, bytes]]:
    """All samples of a split, read shard by shard in manifest order."""
    got: dict[str, dict[str, bytes]] = {}
    for s in _manifest(out)["splits"][split]["shards"]:
        for key, members in read_shard(out / s["name"]).items():
            assert key not in got, f"duplicate key {key}"
            got[key] = members
    return got


def _read_idx(path: Path) -> list[list[tuple[str, int, int]]]:
    lines = path.read_text().splitlines()
    assert lines[0].split()[0] == "v1.2" and int(lines[0].split()[1]) == len(lines) - 1
    out = []
    for line in lines[1:]:
        f = line.split()
        out.append(sorted((f[i], int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f), 4)))
    return out


def _check_shards_against_manifest(out: Path, split: str) -> None:
    for s in _manifest(out)["splits"][split]["shards"]:
        tar = out / s["name"]
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == s["sha256"]
        assert len(read_shard(tar)) == s["samples"]
        assert _read_idx(tar.with_suffix(".idx")) == tar_offsets(tar)  # what DALI will seek to
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*progress*"))


def test_folder_tree_with_bad_files(tmp_path):
    src = tmp_path / "ucf"
    expect = make_folder_tree(src)
    out = tmp_path / "shards"
    entry = C.convert_split(src, out, "folder", split="train", short_side=32, shard_size=3, workers=1,
                            progress=False, gop=16)  # fmt: skip
    m = _manifest(out)
    assert m["classes"] == expect["classes"]
    assert entry["num_samples"] == len(expect["good"]) == 4
    # 7 files in windows of 3 positions of the conversion order, one shard per window; the 3 bad files
    # leave their windows short (issue 21: a shard's content depends on its window only)
    assert sum(s["samples"] for s in entry["shards"]) == 4 and all(s["samples"] <= 3 for s in entry["shards"])
    assert {s["name"] for s in entry["shards"]} <= {f"train-{w:06d}.tar" for w in range(3)}
    skipped = {s["path"]: s["reason"] for s in m["splits"]["train"]["skipped"]}
    assert set(skipped) == expect["bad"]
    assert skipped["Archery/empty.mp4"] == "empty file (0 bytes)"
    assert skipped["Bowling/cut.mp4"].startswith("truncated: decoded")
    assert "not a readable video" in skipped["Bowling/README.txt"]
    _check_shards_against_manifest(out, "train")

    samples = _samples(out, "train")
    by_source = {json.loads(s["json"])["source"]: (k, s) for k, s in samples.items()}
    assert set(by_source) == set(expect["good"])
    for rel, frames in expect["good"].items():
        key, s = by_source[rel]
        assert "." not in key and "/" not in key
        meta = json.loads(s["json"])
        cls = int(s["cls"].decode("ascii"))
        assert m["classes"][cls] == meta["label"] == rel.split("/")[0]
        facts = stream_facts(s["mp4"])
        # 64x48 source, short side 32: 42x32 (even), H.264 yuv420p, GOP 16, no B-frames
        assert (facts["codec"], facts["pix_fmt"], facts["width"], facts["height"]) == (
            "h264",
            "yuv420p",
            42,
            32,
        )
        assert facts["keyframes"] == list(range(0, len(frames), 16)) and facts["in_order"]
        video = decode_all(s["mp4"])
        assert video.shape == (len(frames), 32, 42, 3) and meta["frames"] == len(frames)
        assert (meta["width"], meta["height"], meta["source_width"], meta["source_height"]) == (
            42,
            32,
            64,
            48,
        )
        # content survives: compare with the source frames shrunk by 2/3 (block means of nearest pixels)
        yy = (np.arange(32) * 48 / 32).astype(int)
        xx = (np.arange(42) * 64 / 42).astype(int)
        ref = frames[:, yy][:, :, xx].astype(int)
        assert np.abs(video.astype(int) - ref).mean() < 20, rel
    assert {json.loads(s["json"])["source_codec"] for s in samples.values()} == {"h264", "mpeg4", "vp9"}


def test_list_format_keeps_pixels_and_copy(tmp_path):
    src = tmp_path / "data"
    frames = {
        "a/one.mp4": write_video(src / "a/one.mp4", 20, seed=11),
        "b/two.webm": write_video(src / "b/two.webm", 12, kind=("libvpx-vp9", "webm", "yuv420p"), seed=12),
    }
    (src / "classes.txt").write_text("first\nsecond\n")
    (src / "train.txt").write_text("a/one.mp4 1\nb/two.webm 0\nmissing.mp4 0\n")
    out = tmp_path / "o"
    C.convert_split(src, out, "list", annotations=src / "train.txt", split="train", short_side=320,
                    copy=True, workers=2, progress=False)  # fmt: skip
    m = _manifest(out)
    assert m["classes"] == ["first", "second"]
    assert m["splits"]["train"]["skipped"] == [{"path": "missing.mp4", "reason": "missing file"}]
    assert (m["splits"]["train"]["copied"], m["splits"]["train"]["reencoded"]) == (1, 1)
    samples = {json.loads(s["json"])["source"]: s for s in _samples(out, "train").values()}
    # H.264 mp4 with --copy: the very bytes; VP9 webm: re-encoded, never upscaled (64x48 stays)
    assert samples["a/one.mp4"]["mp4"] == (src / "a/one.mp4").read_bytes()
    assert samples["a/one.mp4"]["cls"] == b"1" and samples["b/two.webm"]["cls"] == b"0"
    meta = json.loads(samples["b/two.webm"]["json"])
    assert meta["note"].startswith("copy: vp9") and (meta["width"], meta["height"]) == (64, 48)
    for rel, ref in frames.items():
        got = decode_all(samples[rel]["mp4"]).astype(int)
        assert got.shape == ref.shape and np.abs(got - ref).mean() < 6, rel
    _check_shards_against_manifest(out, "train")


def test_kinetics_csv(tmp_path):
    k = make_kinetics(tmp_path)
    out = tmp_path / "o"
    entry = C.convert_split(k["src"], out, "kinetics", annotations=k["csv"], split="train", short_side=32,
                            workers=1, progress=False)  # fmt: skip
    m = _manifest(out)
    assert m["classes"] == ["abseiling", "zumba"]  # sorted names of the split's rows
    assert entry["num_samples"] == 2
    assert entry["skipped"] == [{"path": "ccccccccccc_000005_000015.mp4", "reason": "missing file"}]
    got = {json.loads(s["json"])["source"]: int(s["cls"]) for s in _samples(out, "train").values()}
    assert got == {"aaaaaaaaaaa_000000_000010.mp4": 0, "zumba/bbbbbbbbbbb_000012_000022.mp4": 1}
    _check_shards_against_manifest(out, "train")
    # the "val" rows of the same CSV make the val split, with the train split's classes
    C.convert_split(k["src"], out, "kinetics", annotations=k["csv"], split="val", short_side=32, workers=1,
                    progress=False)  # fmt: skip
    val = _samples(out, "val")
    assert [int(s["cls"]) for s in val.values()] == [1] and _manifest(out)["classes"] == [
        "abseiling",
        "zumba",
    ]


def test_ssv2_json(tmp_path):
    s = make_ssv2(tmp_path)
    out = tmp_path / "o"
    C.convert_split(s["src"], out, "ssv2", annotations=s["annotations"], labels=s["labels"], split="train",
                    short_side=32, workers=1, progress=False)  # fmt: skip
    m = _manifest(out)
    assert m["classes"] == ["Holding something", "Pushing something from left to right"]  # the file's indices
    got = {
        json.loads(x["json"])["source"]: (int(x["cls"]), json.loads(x["json"]))
        for x in _samples(out, "train").values()
    }
    assert got["101.webm"][0] == 1 and got["102.webm"][0] == 0
    assert got["101.webm"][1]["source_codec"] == "vp9" and got["101.webm"][1]["frames"] == 14
    s["labels"].unlink()  # no --labels and no labels.json beside the annotations: refused, naming where
    with pytest.raises(C.ConvertError, match="needs --labels") as e:
        C.convert_split(s["src"], out, "ssv2", annotations=s["annotations"], split="x", progress=False)
    assert str(s["labels"]) in str(e.value) and isinstance(e.value, InputError)


def test_ssv2_finds_labels_beside_annotations(tmp_path):
    """SSv2's download keeps labels/labels.json beside labels/train.json: --labels may be left out."""
    s = make_ssv2(tmp_path, official_layout=True)
    assert s["labels"].parent == s["annotations"].parent == tmp_path / "labels"
    out = tmp_path / "o"
    rc = main(["convert", str(s["src"]), str(out), "--format", "ssv2", "--annotations", str(s["annotations"]),
               "--short-side", "32", "--workers", "1"])  # fmt: skip
    assert rc == 0
    m = _manifest(out)
    assert m["classes"] == ["Holding something", "Pushing something from left to right"]
    assert m["splits"]["train"]["source"]["labels"] == str(s["labels"])
    got = {json.loads(x["json"])["source"]: int(x["cls"]) for x in _samples(out, "train").values()}
    assert got == {"101.webm": 1, "102.webm": 0}


def test_classes_must_agree_across_splits(tmp_path, capsys):
    for cls in ("cat", "dog"):
        write_video(tmp_path / f"train/{cls}/v.mp4", 8)
    write_video(tmp_path / "val/cow/v.mp4", 8)
    out = tmp_path / "o"
    C.convert_split(
        tmp_path / "train", out, "folder", split="train", short_side=32, workers=1, progress=False
    )
    rc = main(["convert", str(tmp_path / "val"), str(out), "--format", "folder", "--split", "val",
               "--short-side", "32", "--workers", "1"])  # fmt: skip
    assert rc == 2 and "['cow']" in capsys.readouterr().err
    assert set(_manifest(out)["splits"]) == {"train"}
    with pytest.raises(C.ConvertError, match="split='bad-name'"):
        C.convert_split(tmp_path / "train", out, "folder", split="bad-name", progress=False)


def _list_source(root: Path, n: int = 9) -> Path:
    lines = []
    for i in range(n):
        write_video(root / f"v{i}.mp4", 8 + i, seed=100 + i)
        lines.append(f"v{i}.mp4 {i % 3}")
        if i == 4:
            (root / "bad.mp4").write_bytes(b"junk" * 10)
            lines.append("bad.mp4 0")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


def test_resume_after_interruption(tmp_path, monkeypatch):
    lst = _list_source(tmp_path / "src")
    kw = dict(
        fmt="list", annotations=lst, split="train", short_side=32, shard_size=2, workers=1, progress=False
    )
    clean = tmp_path / "clean"
    C.convert_split(tmp_path / "src", clean, **kw)

    out = tmp_path / "o"
    (out).mkdir()
    (out / "train-000007.tar").write_bytes(b"left over from an older run")
    real_add, calls = C.ShardWriter.add, {"n": 0}

    def add_then_die(self, *a, **k):
        if calls["n"] == 5:  # two shards complete, the third half written
            raise KeyboardInterrupt
        calls["n"] += 1
        real_add(self, *a, **k)

    monkeypatch.setattr(C.ShardWriter, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        C.convert_split(tmp_path / "src", out, **kw)
    # the half-written shard under its temporary name, unique per process (NAME.PID-TOKEN.tmp; issue 23)
    assert list(out.glob("train-*.tar.*.tmp")) and not (out / "manifest.json").exists()
    kept = {n: (out / n).stat().st_mtime_ns for n in ("train-000000.tar", "train-000001.tar")}
    monkeypatch.setattr(C.ShardWriter, "add", real_add)

    C.convert_split(tmp_path / "src", out, **kw)
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # complete shards were kept, not redone
    assert not (out / "train-000007.tar").exists()
    _check_shards_against_manifest(out, "train")
    a, b = _samples(out, "train"), _samples(clean, "train")
    assert list(a) == list(b) and len(a) == 9  # the same samples in the same order, none twice
    assert all(a[k]["cls"] == b[k]["cls"] and a[k]["json"] == b[k]["json"] for k in a)
    ma, mb = _manifest(out)["splits"]["train"], _manifest(clean)["splits"]["train"]
    assert ma["skipped"] == mb["skipped"] == [{"path": "bad.mp4", "reason": ma["skipped"][0]["reason"]}]
    # windows of 2 positions, one holding the bad file (issue 21); the resumed shards are the clean ones
    assert ma["shards"] == mb["shards"] and sorted(s["samples"] for s in ma["shards"]) == [1, 2, 2, 2, 2]

    # a finished split is not converted again
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    C.convert_split(tmp_path / "src", out, **kw)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before


def test_verify_catches_damage(tmp_path, capsys):
    lst = _list_source(tmp_path / "src", n=5)
    out = tmp_path / "o"
    kw = dict(annotations=lst, split="train", short_side=32, shard_size=2, workers=1, progress=False)
    C.convert_split(tmp_path / "src", out, "list", **kw)
    assert C.verify(str(out), as_json=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["splits"]["train"] == {
        "shards": 3,
        "samples": 5,
        "videos": 5,
        "problems": 0,
    }

    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    start = data.index(b"mdat") + 64  # inside the first video's coded frames
    data[start : start + 200] = bytes(200)
    shard.write_bytes(bytes(data))
    assert C.verify(str(out), as_json=True) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"]
    assert any("train-000001.tar: sha256" in p for p in report["problems"])
    assert report["splits"]["train"]["problems"] >= 1

    (out / "train-000002.tar").unlink()
    assert C.verify(str(out)) == 1
    text = capsys.readouterr().out
    assert "train-000002.tar: missing" in text and "train-000001.tar: sha256" in text


def test_shuffled_order_mixes_classes_and_resumes(tmp_path, monkeypatch):
    """A class-sorted listing of 32 labels comes out with every shard mixing classes; an interrupted run
    resumes to the same order as an uninterrupted one, every sample exactly once."""
    src = make_class_sorted_list(tmp_path / "src", labels=32, per_label=3)
    kw = dict(fmt="list", annotations=src["list"], split="train", short_side=32, shard_size=16, copy=True,
              workers=1, progress=False, seed=7)  # fmt: skip
    clean = tmp_path / "clean"
    C.convert_split(tmp_path / "src", clean, **kw)
    m = _manifest(clean)
    assert m["classes"] == src["classes"]
    entry = m["splits"]["train"]
    assert entry["order"]["seed"] == 7 and len(entry["order"]["sha256"]) == 64
    shards = [read_shard(clean / s["name"]) for s in entry["shards"]]
    assert [len(sh) for sh in shards] == [16] * 6
    for sh in shards:
        labels = {json.loads(x["json"])["label"] for x in sh.values()}
        assert len(labels) >= min(32, len(sh)) / 2, sorted(labels)
    written = [json.loads(x["json"])["source"] for sh in shards for x in sh.values()]
    assert sorted(written) == sorted(src["sources"]) and written != src["sources"]  # all, once, shuffled

    # interrupted after two complete shards and part of the third, then resumed
    out = tmp_path / "o"
    real_add, calls = C.ShardWriter.add, {"n": 0}

    def add_then_die(self, *a, **k):
        if calls["n"] == 40:
            raise KeyboardInterrupt
        calls["n"] += 1
        real_add(self, *a, **k)

    monkeypatch.setattr(C.ShardWriter, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        C.convert_split(tmp_path / "src", out, **kw)
    monkeypatch.setattr(C.ShardWriter, "add", real_add)
    kept = {n: (out / n).stat().st_mtime_ns for n in ("train-000000.tar", "train-000001.tar")}
    C.convert_split(tmp_path / "src", out, **kw)
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept
    a, b = _samples(out, "train"), _samples(clean, "train")
    assert list(a) == list(b) and len(a) == 96
    assert all(a[k]["json"] == b[k]["json"] and a[k]["cls"] == b[k]["cls"] for k in a)
    _check_shards_against_manifest(out, "train")

    # another seed, another order (and digest) of the same samples
    other = tmp_path / "other"
    C.convert_split(tmp_path / "src", other, **{**kw, "seed": 8})
    c = _samples(other, "train")
    assert sorted(c) == sorted(b) and list(c) != list(b)
    assert _manifest(other)["splits"]["train"]["order"]["sha256"] != entry["order"]["sha256"]


def test_short_clips_flagged_kept_or_skipped(tmp_path, capsys):
    src = tmp_path / "src"
    for name, n in (("one", 1), ("eight", 8), ("twenty", 20)):
        write_video(src / f"{name}.mp4", n, seed=n)
    (src / "train.txt").write_text("one.mp4 0\neight.mp4 1\ntwenty.mp4 0\n")
    out = tmp_path / "keep"
    rc = main(["convert", str(src), str(out), "--format", "list", "--annotations", str(src / "train.txt"),
               "--short-side", "32", "--workers", "1"])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning" in err and "one.mp4 (1)" in err and "eight.mp4 (8)" in err and "twenty" not in err
    e = _manifest(out)["splits"]["train"]
    assert e["num_samples"] == 3 and e["skipped"] == []
    assert e["short"]["min_frames"] == 16 and e["short"]["policy"] == "keep" and e["short"]["count"] == 2
    assert sorted((c["path"], c["frames"]) for c in e["short"]["clips"]) == [("eight.mp4", 8), ("one.mp4", 1)]
    frames = {
        json.loads(x["json"])["source"]: len(decode_all(x["mp4"])) for x in _samples(out, "train").values()
    }
    assert frames == {"one.mp4": 1, "eight.mp4": 8, "twenty.mp4": 20}

    out = tmp_path / "skip"
    rc = main(["convert", str(src), str(out), "--format", "list", "--annotations", str(src / "train.txt"),
               "--short-side", "32", "--workers", "1", "--min-frames", "8", "--short", "skip"])  # fmt: skip
    assert rc == 0 and "one.mp4 (1)" in capsys.readouterr().err
    e = _manifest(out)["splits"]["train"]
    assert e["num_samples"] == 2 and e["short"] == {"min_frames": 8, "policy": "skip", "count": 1,
                                                    "clips": [{"path": "one.mp4", "frames": 1}]}  # fmt: skip
    assert [s["path"] for s in e["skipped"]] == ["one.mp4"] and "short" in e["skipped"][0]["reason"]
    sources = {json.loads(x["json"])["source"] for x in _samples(out, "train").values()}
    assert sources == {"eight.mp4", "twenty.mp4"}


def test_bad_inputs_name_the_file(tmp_path, capsys):
    """Each bad input: an InputError naming the file; through the CLI one line on stderr and exit 2."""
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    csv_ = tmp_path / "bad.csv"
    csv_.write_text("a,b\n1,2\n")
    lst = tmp_path / "bad.txt"
    lst.write_text("video.mp4 cat\n")
    cases = [
        (["convert", str(tmp_path / "nope"), str(tmp_path / "o"), "--format", "folder"], "nope"),
        (["convert", str(empty), str(tmp_path / "o"), "--format", "folder"], str(empty)),
        (["convert", str(empty), str(tmp_path / "o"), "--format", "kinetics", "--annotations",
          str(tmp_path / "missing.csv")], "missing.csv"),
        (["convert", str(empty), str(tmp_path / "o"), "--format", "ssv2", "--annotations", str(junk),
          "--labels", str(junk)], str(junk)),
        (["convert", str(empty), str(tmp_path / "o"), "--format", "kinetics", "--annotations", str(csv_)],
         str(csv_)),
        (["convert", str(empty), str(tmp_path / "o"), "--format", "list", "--annotations", str(lst)], str(lst)),
        (["convert", str(empty), str(tmp_path / "o"), "--format", "folder", "--gop", "0"], "gop=0"),
        (["verify", str(tmp_path / "nope")], "nope"),
        (["verify", str(empty)], str(empty)),
        (["bench", "pipeline", "--shards", str(tmp_path / "nope")], "nope"),
        (["bench", "pipeline", "--shards", str(empty)], str(empty)),
    ]  # fmt: skip
    for argv, name in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert name in err and "Traceback" not in err and len(err.splitlines()) == 1, (argv, err)
    with pytest.raises(InputError, match="nope"):
        C.convert_split(tmp_path / "nope", tmp_path / "o", "folder", progress=False)
    with pytest.raises(InputError, match="empty"):
        C.verify_dir(empty)


def test_encoding_options_round_trip(tmp_path, capsys):
    """--gop 4, --all-intra and --no-fastdecode reach the stream (keyframes, x264's own settings string),
    the manifest and each sample's keyint; verify passes and both loaders read batches of it."""
    src = tmp_path / "src"
    for c, name in enumerate(("a", "b", "c")):
        for k in range(2):
            write_video(src / name / f"v{k}.mp4", 20, seed=10 * c + k)
    runs = {"gop4": ["--gop", "4"], "intra": ["--all-intra"], "plain": ["--gop", "8", "--no-fastdecode"]}
    want_gop = {"gop4": 4, "intra": 1, "plain": 8}
    for name, opts in runs.items():
        out = tmp_path / name
        rc = main(["convert", str(src), str(out), "--format", "folder", "--short-side", "32", "--workers", "1",
                   "--shard-size", "4", *opts])  # fmt: skip
        assert rc == 0
        capsys.readouterr()
        g = want_gop[name]
        fmt = _manifest(out)["splits"]["train"]["format"]
        assert (fmt["gop"], fmt["all_intra"], fmt["fastdecode"]) == (g, g == 1, name != "plain")
        for x in _samples(out, "train").values():
            facts = stream_facts(x["mp4"])
            assert facts["keyframes"] == list(range(0, 20, g)) and facts["in_order"]
            assert json.loads(x["json"])["keyint"] == g
            settings = x264_settings(x["mp4"])
            assert f"keyint={g}" in settings
            fast = name != "plain"
            assert ("cabac=0" in settings) == fast and ("deblock=0" in settings) == fast, settings
        assert main(["verify", str(out), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["ok"]
        _loader_round_trip(out)


def _loader_round_trip(root: Path) -> None:
    from marvit.config import DataConfig
    from marvit.pipeline import build_loader
    from marvit.pipeline.dali_loader import dali_available

    labels = {}  # video_id (position in the split) -> class, read from the shards with tarfile
    for s in _manifest(root)["splits"]["train"]["shards"]:
        for x in read_shard(root / s["name"]).values():
            labels[len(labels)] = int(x["cls"])
    cfg = DataConfig(root=str(root), num_frames=8, sampling_rate=2, img_size=32, test_short_side=32, test_clips=1,
                     test_crops=1, batch_size=2, num_workers=0, reprob=0.0)  # fmt: skip
    for backend in ["pyav"] + (["dali"] if dali_available() else []):
        train = build_loader(dataclasses.replace(cfg, backend=backend), "train", train=True)
        batch = next(iter(train))
        assert batch["video"].shape == (2, 3, 8, 32, 32) and torch.isfinite(batch["video"]).all(), backend
        seen = {}
        for b in build_loader(dataclasses.replace(cfg, backend=backend), "train", train=False):
            assert torch.isfinite(b["video"]).all()
            seen.update(zip(b["video_id"].tolist(), b["label"].tolist()))
        assert seen == labels, backend


def test_decode_work_rules_and_skipping_decoder():
    """The decoded-frame rules on hand-worked cases (GOP 8 over 40 frames), and the GOP-skipping decoder:
    the pixels of a plain full decode, with the count the skip_gops rule gives."""
    from marvit.pipeline.video import decode_sampled, decoded_frames, keyframes

    key = [0, 8, 16, 24, 32]
    cases = {  # indices: (from_start, seek_once, skip_gops, dali)
        (0, 4, 8, 12): (13, 13, 10, 13),
        (17, 21, 25, 29, 33): (34, 18, 14, 18),  # seek to 16; skip_gops jumps to 24 and 32
        (9, 9, 9, 30): (31, 23, 9, 17),  # dali: 0..9 (a gap of 9 is decoded through), then seeks to 24
        (33, 36, 39, 42): (40, 8, 8, 8),  # past the end: clamped to 39
    }
    for idx, want in cases.items():
        got = tuple(decoded_frames(idx, key, 40, r) for r in ("from_start", "seek_once", "skip_gops", "dali"))
        assert got == want, idx
    frames = np.stack([np.full((16, 16, 3), 6 * i, np.uint8) for i in range(40)])
    from _data_util import encode_closed_gop

    data = encode_closed_gop(frames, gop=8)
    assert keyframes(data) == key
    full = decode_all(data)
    for idx in ((0, 4, 8, 12), (17, 21, 25, 29, 33), (38, 5, 20, 5), (9, 9, 9, 30)):
        out, n = decode_sampled(data, idx)
        np.testing.assert_array_equal(out, full[np.minimum(idx, 39)])
        assert n == decoded_frames(idx, key, 40, "skip_gops")
