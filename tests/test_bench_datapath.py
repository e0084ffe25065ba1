"""The data-path measurements: the clip set written on the spot, ``marvit bench pipeline``'s sweep over DALI
pipeline counts (on the CPU graph here), the doctor's data path section (skipped without CUDA), and
``bench step``'s options as one dataclass."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from collections import Counter

import pytest
import torch

from marvit.config import DataConfig
from marvit.errors import InputError
from marvit.pipeline import build_loader
from marvit.pipeline.dali_loader import dali_available

NEEDS_DALI = pytest.mark.skipif(not dali_available(), reason="no DALI decoder")


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory):
    from marvit.bench.clipset import write_clip_set

    return write_clip_set(tmp_path_factory.mktemp("clips"), clips=12, frames=24, height=48, width=64,
                          per_shard=5)  # fmt: skip


def test_clip_set_is_a_valid_shard_set(clip_root) -> None:
    from marvit.pipeline import check_shards

    assert check_shards(clip_root, "train") == {"split": "train", "shards": 3, "samples": 12, "checksums": True,
                                                "incomplete": 0, "bytes": check_shards(clip_root, "train")["bytes"]}  # fmt: skip
    with tarfile.open(clip_root / "train-000000.tar") as tf:
        names = tf.getnames()
        meta = json.loads(tf.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert meta["frames"] == 24 and (meta["width"], meta["height"]) == (64, 48)
    cfg = DataConfig(root=str(clip_root), backend="pyav", num_frames=4, sampling_rate=2, img_size=32,
                     test_short_side=32, test_clips=1, test_crops=1, batch_size=3, num_workers=0)  # fmt: skip
    ev = build_loader(cfg, "train", train=False)
    labels = {int(i): int(lab) for b in ev for i, lab in zip(b["video_id"], b["label"])}
    assert labels == {i: i % 4 for i in range(12)} and ev.skipped()["count"] == 0


@NEEDS_DALI
def test_bench_pipeline_sweeps_dali_pipeline_counts(clip_root, tmp_path, capsys) -> None:
    from marvit.bench.pipeline import main

    rc = main(str(clip_root), backend="dali", batch=3, clips=3, workers=1, frames=4, size=32, out=str(tmp_path),
              pipelines="1,2,7")  # fmt: skip
    assert rc == 0
    report = json.loads((tmp_path / "pipeline.json").read_text())
    rows = {r["pipelines"]: r for r in report["pipelines"]}
    assert list(rows) == [1, 2, 7]
    for p in (1, 2):
        r = rows[p]
        assert r["clips"] >= 3 and r["clips_per_s"] > 0
        dec = report["results"][0]["decoded_frames_per_clip"]
        assert r["decoded_frames_per_s"] == pytest.approx(r["clips_per_s"] * dec)
    assert "too few samples" in rows[7]["skipped"]  # 12 samples over 7 parts: no part fills a batch of 3
    out = capsys.readouterr().out
    assert "DALI pipelines" in out and "decoded frames/s" in out


def test_bench_pipeline_refuses_bad_counts(clip_root) -> None:
    from marvit.bench.pipeline import main

    with pytest.raises(InputError, match="--pipelines '0,2'"):
        main(str(clip_root), backend="dali", pipelines="0,2")


@NEEDS_DALI
def test_pipeline_sweep_reads_each_sample_once_per_pass(clip_root) -> None:
    """What the sweep times is a normal loader pass: with 3 pipelines every sample once (labels: i % 4)."""
    cfg = DataConfig(root=str(clip_root), backend="dali", num_frames=4, sampling_rate=2, img_size=32,
                     test_short_side=32, batch_size=2, num_workers=1, dali_pipelines=3, rand_augment=False,
                     flip=False, reprob=0.0)  # fmt: skip
    loader = build_loader(cfg, "train")
    seen = Counter(x for b in loader for x in b["label"].tolist())
    assert len(loader) == 6 and seen == Counter(i % 4 for i in range(12))


def test_doctor_data_path_needs_cuda() -> None:
    from marvit.bench import datapath, doctor

    rep = datapath.measure(torch.device("cpu"))
    assert "CUDA" in rep["skipped"]
    assert "data path: skipped" in datapath.format_report(rep)
    res = doctor.run(torch.device("cpu"), only=["sdpa attention", doctor.DATA_PATH])
    assert [r["check"] for r in res["rows"]] == ["sdpa attention"] and "CUDA" in res["data_path"]["skipped"]


def test_bench_step_options_are_one_dataclass() -> None:
    from marvit.bench.step import SWEEP_RATIOS, StepOptions

    names = {f.name for f in dataclasses.fields(StepOptions)}
    from marvit.cli import build_parser

    step = build_parser()._subparsers._group_actions[0].choices["bench"]._subparsers._group_actions[0]
    flags = {a.dest for a in step.choices["step"]._actions} - {"help", "out", "as_json"}
    assert flags <= names  # every flag of the command is a field
    assert StepOptions(sweep=True).ratios() == list(SWEEP_RATIOS)
    assert StepOptions(variants=True).pairs() == [(1.0, False), (0.5, False), (1.0, True), (0.5, True)]
    assert StepOptions(decoder_keep=0.25, checkpoint_heads=True).pairs() == [(0.25, True)]
