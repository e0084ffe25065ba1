"""``marvit convert`` / ``marvit verify`` on small data sets the tests write (see ``_data_util``).

Everything is checked from the outside: shards are read back with ``tarfile``, videos decoded with plain
PyAV, checksums recomputed with ``hashlib``, DALI index entries compared with the tar's own offsets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from _data_util import (
    decode_all,
    make_folder_tree,
    make_kinetics,
    make_ssv2,
    read_shard,
    stream_facts,
    tar_offsets,
    write_video,
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
                            progress=False)  # fmt: skip
    m = _manifest(out)
    assert m["classes"] == expect["classes"]
    assert entry["num_samples"] == len(expect["good"]) == 4
    assert [s["samples"] for s in entry["shards"]] == [3, 1]
    assert {s["name"] for s in entry["shards"]} == {"train-000000.tar", "train-000001.tar"}
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
    assert (out / "train-000002.tar.tmp").exists() and not (out / "manifest.json").exists()
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
    assert [s["samples"] for s in ma["shards"]] == [s["samples"] for s in mb["shards"]] == [2, 2, 2, 2, 1]

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
