"""FLOPs as counted by the model against an analytic multiply-add formula written from the architecture."""

from __future__ import annotations

import json

import pytest

from marvit.bench.flops import count_flops
from marvit.cli import main
from marvit.config import ModelConfig


def _block(n: int, d: int, mlp: float = 4.0) -> float:
    # qkv + proj (4 d^2), MLP (2 mlp d^2) per token; QK^T and AV (2 n d) per token
    return n * (4 * d * d + 2 * mlp * d * d) + 2 * n * n * d


def _analytic(cfg: ModelConfig, n_vis: int, head: str) -> float:
    d = cfg.embed_dim
    patch = n_vis * d * cfg.in_chans * cfg.tubelet_size * cfg.patch_size**2
    enc = patch + cfg.depth * _block(n_vis, d)
    if head == "linear":
        return enc + d * cfg.num_classes
    w = cfg.bridge_dim
    return (
        enc + n_vis * d * w + cfg.bridge_depth * _block(n_vis, w, cfg.bridge_mlp_ratio) + w * cfg.num_classes
    )


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("head", ["linear", "bridging"])
def test_vit_b_counts_match_the_formula(ratio, head):
    cfg = ModelConfig.from_name("vit_b", head=head)
    res = count_flops(cfg, "cell_running", ratio)
    n_vis = round(1568 * (1 - ratio))
    assert res["visible_tokens"] == n_vis
    assert res["gflops"] * 1e9 == pytest.approx(_analytic(cfg, n_vis, head), rel=1e-6)


def test_standard_vit_b_is_about_180_gflops_and_mar_about_half():
    std = count_flops(ModelConfig.from_name("vit_b", head="linear"), "none", 0.0)
    assert 175 < std["gflops"] < 185
    mar = count_flops(ModelConfig.from_name("vit_b"), "cell_running", 0.5)
    assert 0.42 < mar["encoder_gflops"] / std["gflops"] < 0.46  # the spec's ~44%
    assert 0.46 < mar["gflops"] / std["gflops"] < 0.50  # ~48% with the bridging classifier


def test_decoder_counted_in_training(capsys):
    assert (
        main(["bench", "flops", "--preset", "vit_s", "--frames", "8", "--size", "128", "--train", "--json"])
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    cfg = ModelConfig.from_name("vit_s", num_frames=8, img_size=128)
    n_vis, n_dec = res["visible_tokens"], res["tokens"]  # decoder sees visible + masked tokens
    dd = cfg.decoder_dim
    dec = n_vis * cfg.embed_dim * dd + cfg.decoder_depth * _block(n_dec, dd) + (n_dec - n_vis) * dd * 1536
    assert res["decoder_gflops"] * 1e9 == pytest.approx(dec, rel=1e-6)
    assert res["train_gflops"] == pytest.approx(res["gflops"] + res["decoder_gflops"])


def test_standard_layout_parameters_and_pretraining_has_no_head():
    # the standard scheme is VideoMAE's fine-tuning ViT-B: no per-token final norm, fc_norm + classifier
    d = 768
    std = count_flops(ModelConfig.from_name("vit_b", head="linear", num_classes=400), "none", 0.0)
    blocks = 12 * (4 * d + 3 * d * d + 2 * d + d * d + d + 8 * d * d + 5 * d)
    assert std["params_m"] * 1e6 == pytest.approx((d * 1536 + d) + blocks + 2 * d + d * 400 + 400, abs=0.5)
    assert std["head_gflops"] * 1e9 == pytest.approx(d * 400, rel=1e-6)  # pooled, then one linear
    cfg = ModelConfig.from_name("vit_s", head="none", num_frames=8, img_size=128)
    pre = count_flops(cfg, "tube", 0.9, train=True)
    assert pre["head_gflops"] == 0 and pre["gflops"] == pre["encoder_gflops"]
    assert pre["train_gflops"] == pytest.approx(pre["encoder_gflops"] + pre["decoder_gflops"])


def test_large_cell_counts_its_visible_tokens():
    res = count_flops(ModelConfig.from_name("vit_b"), "cell_running", 0.5, cell=(7, 7))
    assert res["visible_tokens"] == 1568 - 8 * 4 * 25  # 25 of every 49 masked
