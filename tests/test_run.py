"""A run owns its out_dir and refuses what would silently change or lose it; the recipe's learning-rate
convention; MAR with nothing masked under DDP; compiled blocks against eager ones."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_util import tiny_config

from marvit.cli import main as cli
from marvit.config import ConfigError, load_config
from marvit.errors import InputError
from marvit.model import build_model
from marvit.train.loop import train
from marvit.train.scheme import resolve
from marvit.train.setup import compile_blocks
from marvit.train.step import forward_loss

_cfg = tiny_config


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


# ---- one run per out_dir -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_on_the_same_out_dir_is_refused_and_the_first_keeps_its_files(tmp_path):
    config, _ = _cfg(tmp_path)
    run = tmp_path / "run"
    hold = tmp_path / "hold"  # the first run waits at step 5 while this file exists
    hold.write_text("")
    first = subprocess.Popen(
        [sys.executable, "-m", "marvit", "train", str(config), f"train.out_dir={run}", "train.scheme=standard"],
        env={**_env(), "MARVIT_HOLD_STEP": "5", "MARVIT_HOLD_FILE": str(hold)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").is_file() or len(_rows(run)) < 2:  # rows of steps 2 and 4
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() < deadline, "the first run never reached step 4"
            time.sleep(0.2)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        second = subprocess.run(
            [sys.executable, "-m", "marvit", "train", str(config), f"train.out_dir={run}", "train.epochs=1"],
            env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        assert first.poll() is None  # the first run was alive all along
        hold.unlink()
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr[-2000:]
    assert "another run is using it" in second.stderr and str(run) in second.stderr
    assert "Traceback" not in second.stderr
    assert after == before  # the refused run wrote nothing
    assert first.returncode == 0, err[-2000:]
    res = json.loads((run / "results.json").read_text())
    assert res["steps"] == 16 and res["scheme"] == "standard"
    train_steps = [r["step"] for r in _rows(run) if "loss" in r]
    assert train_steps == [2, 4, 6, 8, 10, 12, 14, 16]  # one run's rows, in order
    assert not (run / "run.lock").exists()  # released at the end


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _, cfg = _cfg(tmp_path, "train.max_steps=2", "train.scheme=standard")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    assert train(cfg) == 0
    assert f"taking over the stale lock of pid {dead.pid}" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["steps"] == 2


def test_a_live_lock_of_another_host_is_not_taken(tmp_path):
    _, cfg = _cfg(tmp_path, "train.max_steps=2")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_text(json.dumps({"pid": 1, "host": "node-elsewhere", "started": 0}))
    with pytest.raises(InputError, match="another run is using it .pid 1 on node-elsewhere"):
        train(cfg)
    assert (run / "run.lock").exists() and not (run / "results.json").exists()


def test_a_fresh_run_refuses_an_out_dir_with_checkpoints(tmp_path):
    _, cfg = _cfg(tmp_path, "train.max_steps=2", "train.scheme=standard")
    assert train(cfg) == 0
    before = (tmp_path / "run" / "results.json").read_bytes()
    with pytest.raises(
        InputError, match="holds checkpoints of an earlier run; continue it with train.resume=auto"
    ):
        train(cfg)
    assert (tmp_path / "run" / "results.json").read_bytes() == before


def test_out_dir_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    config, _ = _cfg(tmp_path)
    assert cli(["train", str(config), "train.out_dir=/proc/marvit_run"]) == 2
    err = capsys.readouterr().err
    assert "train.out_dir='/proc/marvit_run': cannot write there" in err and "Traceback" not in err


def test_an_empty_config_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert cli(["train", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: the config is empty" in err
    with pytest.raises(ConfigError, match="the config is empty"):
        load_config(empty)


# ---- resume ---------------------------------------------------------------------------------------------
def test_resume_drops_the_killed_runs_rows_past_the_checkpoint_and_its_temporaries(tmp_path, monkeypatch):
    _, cfg = _cfg(tmp_path, "train.save_interval=4", "train.log_interval=1", "train.max_steps=8",
                  "train.scheme=standard")  # fmt: skip
    run = tmp_path / "run"
    monkeypatch.setenv("MARVIT_FAULT_STEP", "6")  # steps 5 and 6 are logged, the checkpoint is at 4
    with pytest.raises(RuntimeError, match="injected fault at step 6"):
        train(cfg)
    assert [r["step"] for r in _rows(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    leftover = run / "checkpoints" / ".tmp_killed_save"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half a file")
    monkeypatch.delenv("MARVIT_FAULT_STEP")
    cfg.train.resume = "auto"
    assert train(cfg) == 0
    assert [r["step"] for r in _rows(run) if "loss" in r] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert not leftover.exists()


def test_resume_refuses_a_config_that_changes_the_run_unless_told(tmp_path):
    _, cfg = _cfg(tmp_path, "train.save_interval=2", "train.max_steps=4", "train.scheme=standard")
    assert train(cfg) == 0
    cfg.train.resume, cfg.train.max_steps = "auto", 8
    with pytest.raises(ConfigError, match=r"train\.max_steps: 4 in the checkpoint, 8 now"):
        train(cfg)
    cfg.train.log_interval = 1  # bookkeeping may change; the schedule may not
    cfg.train.allow_config_change = True
    assert train(cfg) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 8


# ---- the recipe ------------------------------------------------------------------------------------------
def test_learning_rate_scales_with_videos_not_repeated_views(tmp_path):
    # VideoMAE: lr = base_lr * batch_size * update_freq * world / 256; repeated augmentation's second view of
    # the same videos is not counted (batch 4, 2 repeats, accumulation 2, one process)
    _, cfg = _cfg(tmp_path, "train.scale_lr=true", "train.base_lr=0.001", "data.repeated_aug=2",
                  "train.accum_steps=2", "train.max_steps=1", "train.scheme=standard")  # fmt: skip
    assert train(cfg) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["global_batch"] == 4 * 2 * 2  # clips, repeats counted (Table I's count)
    assert res["videos_per_step"] == 4 * 2 * 1
    assert res["peak_lr"] == pytest.approx(0.001 * 8 / 256)


@pytest.mark.slow
def test_mar_with_nothing_masked_trains_under_two_gloo_ranks(tmp_path):
    # the paper's 0% column: no masked token, so no decoder may be built (DDP refuses unused parameters)
    config, _ = _cfg(tmp_path)
    run = tmp_path / "zero"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--rdzv-backend=c10d",
           "--rdzv-endpoint=localhost:0", "-m", "marvit", "train", str(config), f"train.out_dir={run}",
           "train.scheme=mar", "mask.ratio=0", "train.max_steps=3"]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((run / "results.json").read_text())
    assert result["steps"] == 3 and result["world_size"] == 2
    from safetensors.torch import load_file

    from marvit.train.checkpoint import latest_checkpoint

    keys = load_file(str(latest_checkpoint(run) / "model.safetensors")).keys()
    assert not any(k.startswith("decoder.") for k in keys) and any(k.startswith("head.") for k in keys)


# ---- compiled blocks ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["standard", "mar"])
def test_compiled_blocks_match_eager_and_do_not_recompile(tmp_path, scheme):
    from torch._dynamo.utils import counters

    _, cfg = _cfg(tmp_path, f"train.scheme={scheme}")
    cfg, sch = resolve(cfg)
    torch.manual_seed(0)
    eager = build_model(cfg.model, with_decoder=sch.with_decoder)
    compiled = build_model(cfg.model, with_decoder=sch.with_decoder)
    compiled.load_state_dict(eager.state_dict())
    assert compile_blocks(compiled) == cfg.model.depth + (cfg.model.bridge_depth if scheme == "mar" else 0) + (
        cfg.model.decoder_depth if sch.with_decoder else 0)  # fmt: skip
    torch._dynamo.reset()
    counters.clear()
    video = torch.randn(4, 3, 4, 32, 32)
    label = torch.tensor([0, 1, 2, 3])
    graphs = []
    for step in range(4):
        per = {}
        for name, model in (("eager", eager), ("compiled", compiled)):
            model.zero_grad(set_to_none=True)
            gen = torch.Generator().manual_seed(step)  # the same masks for both
            losses = forward_loss(model, sch, video, label, gen)
            losses["loss"].backward()
            per[name] = (losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        (le, ge), (lc, gc) = per["eager"], per["compiled"]
        for k in le:
            torch.testing.assert_close(lc[k], le[k], atol=1e-5, rtol=1e-4)
        assert ge.keys() == gc.keys()
        for n in ge:
            torch.testing.assert_close(gc[n], ge[n], atol=1e-5, rtol=1e-4)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0  # something was compiled
    assert graphs[1] == graphs[2] == graphs[3], graphs  # no recompilation after the first steps


def test_eval_takes_a_run_directory_and_overrides_after_its_options(tmp_path, capsys):
    config, cfg = _cfg(tmp_path, "train.max_steps=4", "train.scheme=standard", "train.eval_interval=2")
    assert train(cfg) == 0
    run = tmp_path / "run"
    capsys.readouterr()
    # the run directory, not a checkpoint: its best checkpoint is used; overrides may follow the options
    assert cli(["eval", str(config), "--checkpoint", str(run), "--views", "1x1", "train.scheme=standard",
                "data.synthetic_samples=[32,8]", "--out", str(tmp_path / "ev")]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["checkpoint"] == str(run / "checkpoints" / "best") and res["num_videos"] == 8
    assert res["views"] == "1x1" and res["mask"] is None
