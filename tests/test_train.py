"""The training loop on the CPU: DDP equivalence, exact resume, crash recovery under torchrun, loss that
falls for every scheme, multi-view averaging, the optimizer's groups and schedule, and config refusals."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_util import tiny_config
from safetensors.torch import load_file

from marvit.cli import main as cli
from marvit.config import ConfigError, ModelConfig, TrainConfig, load_config
from marvit.model import build_model
from marvit.train.checkpoint import latest_checkpoint
from marvit.train.evaluate import evaluate
from marvit.train.loop import train
from marvit.train.optim import cosine_lr, param_groups

_cfg = tiny_config


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def _torchrun(tmp_path, config: Path, overrides: list[str], nproc: int, extra_env=None, restarts: int = 0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--max-restarts={restarts}",
           "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", "-m", "marvit", "train", str(config), *overrides]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    config, _ = _cfg(tmp_path)
    common = ["train.scheme=standard", "train.max_steps=4", "train.seed=3"]
    one = _torchrun(tmp_path, config, [*common, f"train.out_dir={tmp_path / 'one'}", "data.batch_size=8"], 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(tmp_path, config, [*common, f"train.out_dir={tmp_path / 'two'}", "data.batch_size=4"], 2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    init = build_model(load_config(config, common).model).state_dict()
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
        moved += int(not torch.allclose(a[k], init[k]))
    assert moved > len(a) // 2  # training really changed the weights
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    _, cfg = _cfg(tmp_path, "train.save_interval=2", "train.max_steps=6", "data.mixup=0.8", "data.cutmix=1.0",
                  "model.drop_path=0.1", "model.head_dropout=0.1")  # fmt: skip
    cfg.train.out_dir = str(tmp_path / "straight")
    assert train(cfg) == 0
    cfg.train.out_dir = str(tmp_path / "broken")
    monkeypatch.setenv("MARVIT_FAULT_STEP", "4")
    with pytest.raises(RuntimeError, match="injected fault at step 4"):
        train(cfg)
    assert latest_checkpoint(tmp_path / "broken").name == "step_00000004"
    monkeypatch.delenv("MARVIT_FAULT_STEP")
    cfg.train.resume = "auto"
    assert train(cfg) == 0
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "broken")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps[-1] == 6


@pytest.mark.slow
def test_crashed_worker_is_survived_with_max_restarts(tmp_path):
    config, _ = _cfg(tmp_path)
    run = tmp_path / "elastic"
    res = _torchrun(
        tmp_path, config, [f"train.out_dir={run}", "train.max_steps=6", "train.save_interval=2", "train.resume=auto"],
        nproc=2, extra_env={"MARVIT_FAULT_STEP": "3", "MARVIT_FAULT_RANK": "1"}, restarts=1,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "injected fault at step 3" in res.stderr
    assert "resumed from" in res.stdout
    result = json.loads((run / "results.json").read_text())
    assert result["steps"] == 6 and result["world_size"] == 2


@pytest.mark.parametrize("scheme", ["standard", "mar", "pretrain"])
def test_loss_falls_for_every_scheme(tmp_path, scheme):
    epochs = 12 if scheme == "pretrain" else 6  # reconstruction learns slower than classification
    _, cfg = _cfg(tmp_path, f"train.scheme={scheme}", f"train.epochs={epochs}", "train.log_interval=4")
    assert train(cfg) == 0
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) >= 4 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < 0.92 * sum(losses[:2]), losses
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["steps"] == epochs * 32 // 4
    if scheme != "pretrain":
        assert "top1" in result


class _FixedLogits(torch.nn.Module):
    """Returns given logits per (video_id, view), whatever the clip: a model with known answers."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, video, visible_idx=None):
        return {"logits": torch.stack([self.table[int(v)] for v in video[:, 0, 0, 0, 0]])}


def test_multiview_scores_are_averaged_after_softmax():
    # video 0 (class 2): one strong view and two weak ones, all for class 2.
    # video 1 (class 3): two views weakly prefer class 1, one strongly prefers class 3: a majority vote over
    # the views' argmaxes says 1, the average of the softmax scores says 3.
    rows = {0: [1, 0, 9, 0], 1: [0, 0, 0.5, 0], 2: [0, 0, 0.5, 0], 3: [0, 1.0, 0, 0.9], 4: [0, 1.0, 0, 0.9],
            5: [0, 0, 0, 8]}  # fmt: skip
    table = {k: torch.tensor(v, dtype=torch.float) for k, v in rows.items()}
    row_ids = torch.arange(6, dtype=torch.float)
    video = row_ids.view(6, 1, 1, 1, 1).expand(6, 3, 2, 2, 2).clone()
    batch = {"video": video, "label": torch.tensor([2, 2, 2, 3, 3, 3]),
             "video_id": torch.tensor([0, 0, 0, 1, 1, 1]), "view": torch.tensor([0, 1, 2, 0, 1, 2])}  # fmt: skip
    res = evaluate(_FixedLogits(table), [batch], None, torch.device("cpu"))
    # the independent reference: average softmax per video by hand
    p0 = sum(torch.softmax(table[i], 0) for i in (0, 1, 2)) / 3
    p1 = sum(torch.softmax(table[i], 0) for i in (3, 4, 5)) / 3
    expect = [int(p0.argmax() == 2), int(p1.argmax() == 3)]
    assert res["num_videos"] == 2
    assert res["top1"] == pytest.approx(100 * sum(expect) / 2)
    assert p0.argmax() == 2 and p1.argmax() == 3 and res["top1"] == 100.0
    assert [int(table[i].argmax()) for i in (3, 4, 5)] == [1, 1, 3]  # the vote would be wrong
    assert res["top5"] == 100.0


def test_param_groups_layer_decay_and_no_decay():
    cfg = ModelConfig(embed_dim=32, depth=3, num_heads=2, img_size=32, num_frames=4, num_classes=4,
                      decoder_dim=16, decoder_heads=2, decoder_depth=1, bridge_dim=16, bridge_heads=2)  # fmt: skip
    model = build_model(cfg)
    groups = param_groups(model, 0.05, 0.75)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.75**4)
    assert by_name["encoder.blocks.1.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.75**2)
    assert by_name["head.fc.weight"]["lr_scale"] == 1.0 and by_name["decoder.head.weight"]["lr_scale"] == 1.0
    for name in [
        "encoder.blocks.0.norm1.weight",
        "encoder.blocks.0.attn.q_bias",
        "mask_token",
        "head.fc.bias",
    ]:
        assert by_name[name]["weight_decay"] == 0.0, name
    assert by_name["encoder.blocks.0.mlp.fc1.weight"]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("scheme", ["pretrain", "mar", "standard"])
def test_only_fine_tuning_decays_lr_by_layer(tmp_path, scheme):
    from marvit.train.optim import build_optimizer
    from marvit.train.scheme import resolve

    cfg, sch = resolve(tiny_config(tmp_path, f"train.scheme={scheme}", "train.layer_decay=0.75")[1])
    model = build_model(cfg.model, with_decoder=sch.recon_weight > 0)
    scales = {g["lr_scale"] for g in build_optimizer(model, cfg.train, 1e-3).param_groups}
    # VideoMAE pretrains every layer at the full rate; fine-tuning decays the rate from the head down
    if scheme == "pretrain":
        assert scales == {1.0} and cfg.train.layer_decay == 1.0
    else:
        assert min(scales) == pytest.approx(0.75 ** (cfg.model.depth + 1)) and cfg.train.layer_decay == 0.75


def test_cosine_schedule():
    assert cosine_lr(0, 100, 10, 1.0, 0.0) == 0.0
    assert cosine_lr(5, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine_lr(10, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_bad_configs_fail_before_any_work(tmp_path, capsys):
    p, _ = _cfg(tmp_path)
    assert cli(["train", str(p), "data.backend=pyav", f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert cli(["train", str(p), "train.layer_decay=1.5"]) == 2
    assert "train.layer_decay=1.5: must be in (0, 1]" in capsys.readouterr().err
    assert cli(["train", str(p), "mask.ratio=0.6"]) == 2
    assert not (tmp_path / "run").exists()  # nothing was started
    with pytest.raises(ConfigError, match="accum_steps"):
        _, cfg = _cfg(tmp_path, "train.accum_steps=100")
        train(cfg)
    assert TrainConfig().recon_weight == 0.1


def test_a_run_ends_evaluated_whatever_the_eval_interval(tmp_path):
    # 32 samples / batch 4 = 8 steps per epoch, 2 epochs: an interval of 5 epochs never falls due, so the
    # last step (16, an epoch end, already checkpointed) must still be evaluated and reported
    _, cfg = _cfg(tmp_path, "train.eval_interval=5", "train.scheme=standard")
    assert train(cfg) == 0
    run = tmp_path / "run"
    res = json.loads((run / "results.json").read_text())
    assert res["steps"] == 16 and res["top1"] is not None and res["num_videos"] == 16
    evals = [
        json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"val_top1"' in line
    ]
    assert [e["step"] for e in evals] == [16]
    assert evals[-1]["val_top1"] == res["top1"]


def test_warm_up_starts_from_warmup_lr():
    # official MAR _BASE: WARMUP_START_LR 1e-6 -> BASE_LR over the warm-up, linearly
    assert cosine_lr(0, 100, 10, 1e-3, 1e-6, start=1e-6) == 1e-6
    assert cosine_lr(5, 100, 10, 1e-3, 1e-6, start=1e-6) == pytest.approx((1e-6 + 1e-3) / 2)
    assert cosine_lr(10, 100, 10, 1e-3, 1e-6, start=1e-6) == pytest.approx(1e-3)
    assert load_config(None, ["train.warmup_lr=1e-6"]).train.warmup_lr == 1e-6
    with pytest.raises(ConfigError, match="train.warmup_lr=-1.0"):
        load_config(None, ["train.warmup_lr=-1"])
