"""`marvit bench step` and `marvit profile` on tiny models: the JSON, the accounting and the files they write.

Nothing here asserts a time: only that the numbers are consistent with each other and with independent
counts (the saved-tensor bytes of a toy module, the FLOP counter, the class shares summing to 100%).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marvit.bench.flops import count_flops
from marvit.bench.profile import classify
from marvit.bench.profile import main as profile_main
from marvit.bench.step import SavedTensorMeter, scheme_config
from marvit.cli import main
from marvit.config import load_config

TINY = ["--preset", "vit_s", "--frames", "4", "--size", "32", "--batch", "2"]  # 2x2x2 = 8 tokens


# ---- saved-tensor accounting against hand counts ----------------------------------------------------------
def test_saved_tensors_of_linear_gelu_match_a_hand_count():
    torch.manual_seed(0)
    lin = nn.Linear(4, 8)
    x = torch.randn(3, 4)  # an input that needs no gradient
    meter = SavedTensorMeter(lin.parameters())
    with meter:
        y = F.gelu(lin(x))  # addmm saves x (for grad W); GELU saves its input (3, 8); W is a parameter
    y.sum().backward()
    assert meter.bytes == x.nbytes + 3 * 8 * 4


def test_saved_tensors_count_each_storage_once():
    t = torch.randn(10, 6, requires_grad=True)
    u = t * 1.0  # (10, 6), one storage
    meter = SavedTensorMeter([t])
    with meter:
        a = u * u  # saves u twice
        b = u[:5] * u[5:]  # two views of the same storage
    (a.sum() + b.sum()).backward()
    assert meter.bytes == u.untyped_storage().nbytes() == 10 * 6 * 4


def test_parameters_are_not_activations():
    lin = nn.Linear(5, 5)
    x = torch.randn(2, 5, requires_grad=True)
    meter = SavedTensorMeter(lin.parameters())
    with meter:
        lin(x).sum().backward()  # addmm saves x and W^T (a view of the parameter)
    assert meter.bytes == x.nbytes


# ---- the step benchmark -----------------------------------------------------------------------------------
def test_step_json_is_consistent(tmp_path, capsys):
    rc = main(["bench", "step", *TINY, "--mask-ratio", "0.5", "--iters", "2", "--warmup", "0",
               "--out", str(tmp_path), "--json"])  # fmt: skip
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads((tmp_path / "step.json").read_text())
    assert (tmp_path / "step.md").is_file()
    assert res["results"][0]["tokens"] == 8
    assert res["visible_tokens"] == 4 and res["decoder_tokens"] == 4
    for phase in ("train", "infer"):
        r = res[phase]
        assert r["standard_ms"] > 0 and r["mar_ms"] > 0
        assert r["speedup"] == pytest.approx(r["standard_ms"] / r["mar_ms"])
        assert len(r["standard_times_ms"]) == len(r["mar_times_ms"]) == 2
        for who in ("standard", "mar"):
            s = r[f"{who}_spread_ms"]
            assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
            assert r[f"{who}_clips_per_s"] == pytest.approx(2 / (r[f"{who}_ms"] / 1e3))
    # FLOPs: training = 3 x the forward count with the decoder; inference = the forward count
    mar_cfg = scheme_config("mar", "vit_s", 4, 32, 2, 0.5)
    fl = count_flops(mar_cfg.model, "cell_running", 0.5, train=True)
    assert res["train"]["mar_gflops"] == pytest.approx(3 * fl["train_gflops"])
    assert res["infer"]["mar_gflops"] == pytest.approx(fl["gflops"])
    std_cfg = scheme_config("standard", "vit_s", 4, 32, 2)
    assert res["infer"]["standard_gflops"] == pytest.approx(count_flops(std_cfg.model, "none", 0.0)["gflops"])
    act = res["activation_mb"]
    assert act["standard"] > 0 and act["mar"] > 0
    assert act["ratio"] == pytest.approx(act["mar"] / act["standard"])
    assert act["mar"] < act["standard"]  # half the tokens through the encoder


def test_sweep_writes_png_and_json(tmp_path, capsys):
    rc = main(["bench", "step", *TINY, "--sweep", "--iters", "1", "--warmup", "0", "--out", str(tmp_path)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "act MAR/std" in table
    png = tmp_path / "step_sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((tmp_path / "step.json").read_text())
    rows = res["results"]
    assert [r["mask_ratio"] for r in rows] == [0.0, 0.25, 0.5, 0.75]
    assert [r["visible_tokens"] for r in rows] == [8, 6, 4, 2]
    assert rows[0]["decoder_tokens"] == 0  # nothing masked: no reconstruction
    assert len({r["train"]["standard_ms"] for r in rows}) == 1  # one standard model, timed once per iteration
    mar_act = [r["activation_mb"]["mar"] for r in rows]
    assert mar_act[3] < mar_act[0]


def test_variants_time_the_training_options_beside_the_paper_setting(tmp_path):
    rc = main(["bench", "step", *TINY, "--variants", "--iters", "1", "--warmup", "0", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "step.json").read_text())["results"]
    assert [(r["decoder_keep"], r["checkpoint_heads"]) for r in rows] == [
        (1.0, False),
        (0.5, False),
        (1.0, True),
        (0.5, True),
    ]
    assert len({r["train"]["standard_ms"] for r in rows}) == 1  # one standard run for all four
    # the decoder option reconstructs half the masked tokens: fewer decoder FLOPs, same inference FLOPs
    assert [r["decoder_tokens"] for r in rows] == [4, 2, 4, 2]
    assert rows[1]["train"]["mar_gflops"] < rows[0]["train"]["mar_gflops"]
    assert rows[1]["infer"]["mar_gflops"] == rows[0]["infer"]["mar_gflops"]
    # checkpointed heads keep only their block inputs, counted by the hand formula the report states
    m = scheme_config("mar", "vit_s", 4, 32, 2, 0.5).model
    kept = m.bridge_depth * 4 * m.bridge_dim + m.decoder_depth * (4 + 4) * m.decoder_dim
    assert rows[2]["activation_mb"]["mar_checkpointed_inputs_mb"] == pytest.approx(2 * kept * 4 / 2**20)
    assert rows[0]["activation_mb"]["mar_checkpointed_inputs_mb"] == 0.0
    assert rows[2]["activation_mb"]["mar"] < rows[0]["activation_mb"]["mar"]


# ---- the profiler -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, cls",
    [("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("aten::_scaled_dot_product_flash_attention_for_cpu",
     "attention"), ("patch_embed", "patch_embed"), ("data_loading", "data_loading"), ("aten::gelu", None),
     ("AddmmBackward0", None)],
)  # fmt: skip
def test_classify(name, cls):
    assert classify(name) == cls


def test_profile_writes_traces_and_shares(tmp_path, capsys):
    cfg = load_config(None, ["model.name=vit_s",
                             "data.num_frames=4", "data.img_size=32", "data.backend=synthetic",
                             "data.batch_size=2", "data.synthetic_samples=[4,2]", "train.device=cpu"])  # fmt: skip
    assert profile_main(cfg, steps=1, out=str(tmp_path)) == 0
    for scheme in ("standard", "mar"):
        trace = json.loads((tmp_path / f"trace_{scheme}.json").read_text())
        assert trace["traceEvents"]
    res = json.loads((tmp_path / "profile.json").read_text())
    for scheme in ("standard", "mar"):
        r = res[scheme]
        assert sum(r["shares"].values()) == pytest.approx(1.0)
        assert sum(r["class_ms"].values()) == pytest.approx(r["total_ms"])
        assert r["shares"]["matmul"] > 0 and r["shares"]["attention"] > 0
        assert r["shares"]["patch_embed"] > 0 and r["shares"]["data_loading"] > 0
        assert r["top_ops"]
    assert res["mar"]["mask"] == "cell_running@0.5" and res["mar"]["head"] == "bridging"
    assert res["standard"]["head"] == "linear"
    md = (tmp_path / "profile.md").read_text()
    assert "attention" in md and "Top operators" in md


# ---- the reconstruction figure's images ---------------------------------------------------------------------
def test_reconstruction_images_undo_the_data_normalization():
    from marvit.bench.visualize import reconstruct
    from marvit.config import ModelConfig
    from marvit.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("vit_s", embed_dim=32, depth=1, num_heads=2, img_size=32, num_frames=4,
                                decoder_dim=16, decoder_depth=1, decoder_heads=2)  # fmt: skip
    model = build_model(cfg).eval()
    raw = torch.rand(3, 4, 32, 32)  # pixels in [0, 1]
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.1, 0.3)  # not ImageNet's
    video = (raw - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)
    with torch.no_grad():
        images = reconstruct(model, video, 0.5, mean, std)
    torch.testing.assert_close(images["original"], raw)
    # 2x2x2 tubelets: half are masked (grey), the visible half are the original pixels in both other images
    tubes = images["masked"].unfold(1, 2, 2).unfold(2, 16, 16).unfold(3, 16, 16)  # (3, 2, 2, 2, 2, 16, 16)
    grey = (tubes == 0.5).flatten(4).all(-1).all(0)  # (2, 2, 2)
    assert grey.sum() == 4
    keep = ~grey.repeat_interleave(2, 0).repeat_interleave(16, 1).repeat_interleave(16, 2)  # (4, 32, 32)
    torch.testing.assert_close(images["masked"][:, keep], raw[:, keep])
    torch.testing.assert_close(images["reconstruction"][:, keep], raw[:, keep])
