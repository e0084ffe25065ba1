"""The demo end to end in its reduced form (seconds), and its packaged config."""

from __future__ import annotations

import json
import math
from pathlib import Path

from marvit.cli import main
from marvit.config import load_config
from marvit.demo import demo_config, demo_config_text, std_error

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_reads_its_packaged_config():
    packaged = ROOT / "marvit" / "configs" / "demo.yaml"
    assert demo_config_text() == packaged.read_text()
    assert load_config(packaged).to_dict() == demo_config().to_dict()


def test_every_shipped_config_loads():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_every_packaged_config_loads():
    for path in sorted((ROOT / "marvit" / "configs").glob("*.yaml")):
        load_config(path)


def test_standard_error_of_a_top1():
    # 90% on 400 videos: sqrt(0.9 * 0.1 / 400) = 0.015 -> 1.5 points; 0 and 100% have none
    assert math.isclose(std_error(90.0, 400), 1.5)
    assert std_error(100.0, 50) == 0.0 and std_error(None, 10) is None


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    res = json.loads((out / "results.json").read_text())
    for scheme in ("standard", "mar"):
        r = res[scheme]
        assert 0.0 <= r["top1"] <= 100.0 and r["steps"] > 0 and r["gflops"] > 0
        assert math.isclose(r["top1_se"], std_error(r["top1"], r["val_videos"]))
    # MAR at 50% with a bridging head: fewer inference FLOPs than all tokens with a linear head
    assert res["mar"]["gflops"] < res["standard"]["gflops"]
    assert res["mar_vs_standard"]["gflops_ratio"] == res["mar"]["gflops"] / res["standard"]["gflops"]
    assert res["chance_top1"] == 100 / 3 and set(res["targets"]) >= {"train_speedup", "top1_drop", "top1_se"}
    # the dots have no redundancy (about 2: unrelated patterns), the textures have
    red = res["redundancy"]
    # the demo's data set is the random dots (test_synth holds the textures' redundancy against them)
    assert res["data"]["style"] == "dots" and red["interpolation_mse_dots"] > 1.0
    assert abs(red["interpolation_mse"] - red["interpolation_mse_dots"]) < 0.5
    for key in ("pretrained_decoder_mse", "pretrained_decoder_mse_tube", "mar_decoder_mse"):
        assert 0.0 < red[key] < 5.0
    for png in res["plots"].values():
        assert (out / png).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| scheme |" in report and "MAR uses" in report and "Chance is 33.3%" in report
    assert f"{res['mar']['top1']:.1f} ± {res['mar']['top1_se']:.1f}" in report and "Seeds:" in report
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val"}
    # both schemes start from the same place: the random init of one seed (pretraining is measured, not used)
    runs = [load_config(out / name / "config.yaml") for name in ("standard", "mar")]
    assert [c.model.pretrained for c in runs] == [None, None] and runs[0].train.seed == runs[1].train.seed
    assert res["pretrain"]["fine_tuning_starts_from_it"] is False and "random initialization" in report
