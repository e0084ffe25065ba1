"""The demo end to end in its reduced form (seconds), and the embedded default against configs/demo.yaml."""

from __future__ import annotations

import json
from pathlib import Path

from marvit.cli import main
from marvit.config import load_config
from marvit.demo import DEMO_YAML, demo_config

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_default_is_configs_demo_yaml():
    assert (ROOT / "configs" / "demo.yaml").read_text() == DEMO_YAML
    assert load_config(ROOT / "configs" / "demo.yaml") == demo_config()


def test_every_shipped_config_loads():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    res = json.loads((out / "results.json").read_text())
    for scheme in ("standard", "mar"):
        r = res[scheme]
        assert 0.0 <= r["top1"] <= 100.0 and r["steps"] > 0 and r["gflops"] > 0
    # MAR at 50% with a bridging head: fewer inference FLOPs than all tokens with a linear head
    assert res["mar"]["gflops"] < res["standard"]["gflops"]
    assert res["mar_vs_standard"]["gflops_ratio"] == res["mar"]["gflops"] / res["standard"]["gflops"]
    for png in res["plots"].values():
        assert (out / png).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| scheme |" in report and "MAR uses" in report
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val"}
