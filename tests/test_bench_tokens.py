"""``bench tokens`` (kept-token fractions on converted data), ``bench step --variants --shards`` (MAR + static
beside MAR and standard on real clips) and ``demo --static --quick``, on tiny converted synthetic sets."""

from __future__ import annotations

import json

import pytest
import torch

from marvit.bench.tokens import load_clips
from marvit.cli import main
from marvit.model.static import keep_moving_reference, tubelet_motion_reference
from marvit.pipeline.convert import convert_split
from marvit.pipeline.synth import make_synthetic

STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """Two tiny converted sets of 32 px, 16-frame videos: random dots moving everywhere, and objects over a
    still background."""
    out = {}
    for background in ("moving", "static"):
        style = "dots" if background == "moving" else "textures"
        root = tmp_path_factory.mktemp(background)
        make_synthetic(root / "data", classes=2, per_class=3, frames=16, size=32, val_fraction=0.5, workers=1,
                       progress=False, background=background, style=style)  # fmt: skip
        for split in ("train", "val"):
            convert_split(root / "data", root / "shards", "list", annotations=root / "data" / f"{split}.csv",
                          split=split, short_side=32, copy=True, workers=1)  # fmt: skip
        out[background] = str(root / "shards")
    return out


ARGS = ["--frames", "8", "--size", "32", "--sampling-rate", "1", "--clips", "8"]


def test_bench_tokens_counts_what_the_reference_counts(shards, tmp_path, capsys):
    res = {}
    for background, path in shards.items():
        assert main(["bench", "tokens", "--shards", path, *ARGS, "--thresholds", "0.02,0.1,0.3", "--json",
                     "--out", str(tmp_path / background)]) == 0  # fmt: skip
        res[background] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (tmp_path / background / "tokens.json").is_file() and (
            tmp_path / background / "tokens.md"
        ).is_file()
        r = res[background]
        assert r["clips"] == 4 and r["grid"] == [4, 2, 2] and r["mar_visible"] == 8  # 4 val videos
        means = [row["static_alone"]["mean"] for row in r["results"]]
        assert all(0.0 < m <= 1.0 for m in means) and means == sorted(means, reverse=True)
        # the same clips through the loop references: per-clip kept counts agree
        video, _ = load_clips(path, "val", 8, 32, 1, 8, "pyav")
        motion = tubelet_motion_reference(video, 2, 16, STD)
        for row in r["results"]:
            ref = keep_moving_reference(motion, None, row["threshold"], r["min_keep"])
            assert row["per_clip_static_alone"] == pytest.approx([len(k) / 16 for k in ref])
    at = {b: next(row for row in r["results"] if row["threshold"] == 0.1) for b, r in res.items()}
    assert at["static"]["static_alone"]["mean"] < at["moving"]["static_alone"]["mean"]


def test_bench_tokens_refuses_bad_thresholds(shards, capsys):
    assert main(["bench", "tokens", "--shards", shards["static"], "--thresholds", "a,b"]) == 2
    assert "--thresholds" in capsys.readouterr().err


def test_bench_step_variants_add_mar_plus_static_on_real_clips(shards, tmp_path):
    rc = main(["bench", "step", "--preset", "vit_s", "--frames", "8", "--size", "32", "--batch", "3", "--variants",
               "--shards", shards["static"], "--static-threshold", "0.05", "--iters", "1", "--warmup", "0",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "step.json").read_text())
    rows = res["results"]
    assert [r["static_threshold"] for r in rows] == [None] * 4 + [0.05]
    mar, static = rows[0], rows[-1]
    assert static["visible_tokens"] <= mar["visible_tokens"] == 8
    assert static["train"]["mar_gflops"] <= mar["train"]["mar_gflops"]
    assert static["infer"]["mar_gflops"] <= mar["infer"]["mar_gflops"]
    assert len({r["train"]["standard_ms"] for r in rows}) == 1  # one standard run for all
    assert "+static@0.05" in (tmp_path / "step.md").read_text()


@pytest.mark.slow  # about 90 s on 2 cores: three tiny fine-tuning runs
def test_quick_static_demo_end_to_end(tmp_path):
    assert main(["demo", "--static", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "static" / "results.json").read_text())
    for phase in ("standard", "mar", "mar_static"):
        assert 0.0 <= res[phase]["top1"] <= 100.0 and res[phase]["steps"] > 0 and res[phase]["gflops"] > 0
    assert (
        res["mar_static"]["visible_tokens"]
        <= res["mar"]["visible_tokens"]
        < res["standard"]["visible_tokens"]
    )
    assert res["mar_static"]["gflops"] <= res["mar"]["gflops"] < res["standard"]["gflops"]
    assert res["data"]["background"] == "static"
    cfg = (tmp_path / "static" / "mar_static" / "config.yaml").read_text()
    assert "drop_static: true" in cfg
    assert "| mar_static |" in (tmp_path / "static" / "report.md").read_text()
    assert torch.isfinite(torch.tensor(res["mar_static_vs_mar"]["step_speedup"]))


def test_demo_epochs_only_with_static(tmp_path, capsys):
    assert main(["demo", "--epochs", "3", "--out", str(tmp_path)]) == 2
    assert "--epochs" in capsys.readouterr().err
