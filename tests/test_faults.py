"""What a cluster does to a run (issue 23): divergence, preemption, exact resume, OS errors on every write,
configs from strangers, and `eval`'s output. Each test is a row of the issue's fault table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _train_util import tiny_config
from safetensors.torch import load_file, save_file

from marvit.cli import main as cli
from marvit.config import ConfigError, load_config
from marvit.errors import InputError
from marvit.model import build_model, load_pretrained
from marvit.train import guard
from marvit.train.checkpoint import latest_checkpoint, list_checkpoints
from marvit.train.loop import train

_cfg = tiny_config


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def _finite(ckpt: Path) -> bool:
    return all(bool(v.isfinite().all()) for v in _weights(ckpt).values())


def _files(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted((run / "checkpoints").rglob("*")) if p.is_file()}


def _env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _one_line(err: str) -> str:
    """The message a command ended with: one line, no traceback (tqdm's bar may share stderr)."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln[ln.index("marvit ") :] for ln in err.replace("\r", "\n").splitlines() if "marvit " in ln]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# ---- divergence ------------------------------------------------------------------------------------------
def test_a_diverging_run_stops_nonzero_and_writes_no_nonfinite_checkpoint(tmp_path, capsys):
    config, _ = _cfg(tmp_path)
    run = tmp_path / "run"
    args = ["train", str(config), f"train.out_dir={run}", "train.save_interval=2", "train.log_interval=1",
            "train.eval_interval=1", "train.scheme=standard"]  # fmt: skip
    assert cli([*args, "train.base_lr=1000000"]) == guard.EXIT_DIVERGED
    line = _one_line(capsys.readouterr().err)
    ckpts = list_checkpoints(run)
    assert ckpts, "a finite checkpoint came before the loss went NaN"
    assert "diverged" in line and f"the last good checkpoint is {ckpts[-1]}" in line
    step = int(line.split(" at step ")[1].split()[0])
    assert int(ckpts[-1].name.split("_")[1]) < step
    for ckpt in [*ckpts, run / "checkpoints" / "best"]:
        assert not ckpt.exists() or _finite(ckpt), ckpt
    assert not (run / "results.json").exists() and not (run / "run.lock").exists()


def test_resuming_a_good_run_with_a_diverging_change_keeps_its_checkpoints(tmp_path, capsys):
    config, _ = _cfg(tmp_path)
    run = tmp_path / "run"
    args = ["train", str(config), f"train.out_dir={run}", "train.save_interval=2", "train.max_steps=8",
            "train.scheme=standard", "train.log_interval=1"]  # fmt: skip
    assert cli([*args, "train.max_steps=4"]) == 0
    before = _files(run)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004"]
    # goes NaN before its first save (step 8): nothing may replace or prune the good checkpoints
    rc = cli([*args, "train.resume=auto", "train.allow_config_change=true", "train.base_lr=1000000",
              "train.save_interval=4"])  # fmt: skip
    assert rc == guard.EXIT_DIVERGED
    assert (
        "the last good checkpoint is " + str(run / "checkpoints" / "step_00000004") in capsys.readouterr().err
    )
    assert _files(run) == before  # pruning kept both good ones; nothing NaN was written
    assert latest_checkpoint(run).name == "step_00000004"


def _nan_after(monkeypatch, first: int, last: int = 10**9) -> None:
    """Make the loss of micro-steps first..last (1-based) NaN, as a bf16 overflow would."""
    import marvit.train.loop as loop

    real, calls = loop.forward_loss, [0]

    def forward_loss(*a, **k):
        out = real(*a, **k)
        calls[0] += 1
        if first <= calls[0] <= last:
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    monkeypatch.setattr(loop, "forward_loss", forward_loss)


def test_skip_nonfinite_skips_and_counts_updates_and_stops_after_k_in_a_row(tmp_path, monkeypatch):
    _, cfg = _cfg(tmp_path, "train.max_steps=6", "train.scheme=standard", "train.skip_nonfinite=3",
                  "train.log_interval=1")  # fmt: skip
    _nan_after(monkeypatch, 3, 4)  # steps 3 and 4: two in a row, fewer than 3
    assert train(cfg) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["steps"] == 6 and res["skipped_updates"] == 2
    assert _finite(latest_checkpoint(tmp_path / "run"))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_updates"] for r in rows if "loss" in r] == [0, 0, 1, 2, 2, 2]

    _, cfg = _cfg(tmp_path, "train.max_steps=8", "train.scheme=standard", "train.skip_nonfinite=3",
                  f"train.out_dir={tmp_path / 'run2'}")  # fmt: skip
    _nan_after(monkeypatch, 2)
    with pytest.raises(guard.Diverged, match=r"3 updates in a row with non-finite gradients up to step 4"):
        train(cfg)
    assert list_checkpoints(tmp_path / "run2") == []


def test_pretrained_weights_with_a_nan_tensor_are_refused_by_name(tmp_path, capsys):
    _, cfg = _cfg(tmp_path)
    sd = {k: v.clone() for k, v in build_model(cfg.model).state_dict().items()}
    sd["encoder.blocks.1.attn.proj.weight"][0, 0] = float("nan")
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(InputError, match=r"non-finite values .* \['encoder.blocks.1.attn.proj.weight'\]"):
        load_pretrained(build_model(cfg.model), path)
    config, _ = _cfg(tmp_path)
    assert cli(["train", str(config), f"model.pretrained={path}", "train.max_steps=1"]) == 2
    assert "encoder.blocks.1.attn.proj.weight" in _one_line(capsys.readouterr().err)


# ---- configs from strangers ------------------------------------------------------------------------------
def _bomb(levels: int = 9) -> str:
    out = ["  a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    out += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "train:\n  out_dir: r\nmodel:\n  name: vit_s\nbomb:\n" + "\n".join(out) + "\n"


@pytest.mark.parametrize(
    "content, expected",
    [
        (_bomb(), "YAML aliases expand to more than 100000 values"),
        ("data: &a {mean: *a}\n", "a YAML alias refers to itself"),
        ("model: [1, 2]\n", "model: expected a mapping of keys, got list [1, 2]"),
        ("train: {out_dir: caf\xe9}\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 20)"),
        ("train: {base_lr: .inf}\n", "train.base_lr=inf: expected a finite number"),
        ("data: {mean: [.nan, 0.5, 0.5]}\n", "data.mean[0]=nan: expected a finite number"),
        (None, "is a directory; expected a YAML file"),
    ],
)
def test_a_bad_config_file_gets_its_own_one_line_message(tmp_path, capsys, content, expected):
    path = tmp_path / "c.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    t0 = time.perf_counter()
    assert cli(["train", str(path)]) == 2
    assert expected in _one_line(capsys.readouterr().err)
    assert time.perf_counter() - t0 < 30  # not a 45 s walk into a MemoryError (generous: a shared CPU)


def test_an_override_with_nan_or_inf_is_refused(tmp_path):
    config, _ = _cfg(tmp_path)
    with pytest.raises(ConfigError, match=r"train.clip_grad=-?inf: expected a finite number"):
        load_config(config, ["train.clip_grad=-.inf"])


# ---- OS errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "where, code",
    [("state.pt", "ENOSPC"), ("run.lock", "ENOSPC"), ("config.yaml", "EROFS"), ("metrics.jsonl", "EACCES"),
     ("results.json", "ENOSPC"), ("best", "ENOSPC")],
)  # fmt: skip
def test_an_os_error_ends_train_with_one_line_and_leaves_nothing_trusted(tmp_path, capsys, monkeypatch, where,
                                                                          code):  # fmt: skip
    config, _ = _cfg(tmp_path)
    run = tmp_path / "run"
    args = ["train", str(config), f"train.out_dir={run}", "train.max_steps=2", "train.save_interval=1"]
    monkeypatch.setenv("MARVIT_FAULT_WRITE", f"{where}:{code}")
    assert cli(args) == 2
    line = _one_line(capsys.readouterr().err)
    assert where in line and f", {code})" in line, line
    assert not (run / "run.lock").exists()  # released, or never half-written
    assert not list((run / "checkpoints").glob(".tmp_*")) if (run / "checkpoints").is_dir() else True
    assert not list(run.glob(".*.tmp"))
    for ckpt in list_checkpoints(run):  # what a resume would trust is complete
        assert _finite(ckpt) and (ckpt / "config.yaml").is_file()
    monkeypatch.delenv("MARVIT_FAULT_WRITE")  # space freed: the next run goes on
    resume = ["train.resume=auto"] if list_checkpoints(run) else []
    assert cli([*args, *resume]) == 0


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs the /dev/full device")
def test_a_real_enospc_from_the_kernel_names_the_file(tmp_path, capsys):
    # no injection: metrics.jsonl is /dev/full, whose every write fails with ENOSPC
    config, _ = _cfg(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    assert cli(["train", str(config), f"train.out_dir={run}", "train.max_steps=2"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{run / 'metrics.jsonl'}: No space left on device (errno 28, ENOSPC)" in line
    assert not (run / "run.lock").exists()


def test_an_empty_lock_left_by_a_failed_write_is_taken_over(tmp_path, capsys):
    _, cfg = _cfg(tmp_path, "train.max_steps=1", "train.scheme=standard")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_bytes(b"")
    os.utime(run / "run.lock", (time.time() - 60, time.time() - 60))
    assert train(cfg) == 0
    assert "taking over an empty or unreadable lock" in capsys.readouterr().out


def test_eval_prints_before_writing_and_writes_outside_the_checkpoint(tmp_path, capsys, monkeypatch):
    config, cfg = _cfg(tmp_path, "train.max_steps=2", "train.scheme=standard")
    assert train(cfg) == 0
    ckpt = latest_checkpoint(tmp_path / "run")
    before = sorted(p.name for p in ckpt.iterdir())
    args = ["eval", str(config), "--checkpoint", str(ckpt), "--views", "1x1", "train.scheme=standard",
            "data.synthetic_samples=[32,4]", "--out", str(tmp_path / "ev")]  # fmt: skip
    capsys.readouterr()
    monkeypatch.setenv("MARVIT_FAULT_WRITE", "eval.json:ENOSPC")
    assert cli(args) == 2
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["num_videos"] == 4  # the result survives the full disk
    assert "eval.json: No space left on device (errno 28, ENOSPC)" in _one_line(err)
    monkeypatch.delenv("MARVIT_FAULT_WRITE")
    assert cli(args) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["num_videos"] == 4
    assert sorted(p.name for p in ckpt.iterdir()) == before  # nothing written into the checkpoint


def test_eval_views_are_bounded_by_memory(tmp_path, capsys, monkeypatch):
    import marvit.train.evaluate as ev

    config, _ = _cfg(tmp_path)
    monkeypatch.setattr(ev, "available_memory", lambda: 8 * 2**30)
    assert cli(["eval", str(config), "--checkpoint", str(tmp_path), "--views", "1000x100"]) == 2
    line = _one_line(capsys.readouterr().err)
    # batch 4 x 100000 views x 3 x 4 x 32 x 32 x (1 + 4) B + 1000 clips x 4 x 224^2 x 3 x 2 B = 24.0 GiB;
    # half of 8 GiB over the 245760 + 12042 bytes one view costs: 16659 views
    assert "--views 1000x100: 100000 views of 4x32x32 in batches of 4 need 24.0 GiB" in line
    assert "more than half of the 8.0 GiB available; at most about 16659 views fit" in line


# ---- exact resume ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    import _loader_util as U

    samples = [{"key": f"s{i:03d}", "mp4": U.encode_mp4(U.make_frames(12, 40, 40, bar=1 + i % 4), gop=4),
                "label": i % 4, "frames": 12, "width": 40, "height": 40} for i in range(16)]  # fmt: skip
    return U.write_shards(tmp_path_factory.mktemp("shards"), samples, per_shard=8,
                          classes=["a", "b", "c", "d"])  # fmt: skip


def test_a_pyav_run_resumed_mid_epoch_with_drop_path_equals_the_straight_run(tmp_path, monkeypatch, shards):
    # 16 clips / batch 4: 4 steps an epoch; saved at step 2 (mid-epoch), killed at 3, resumed from 2. The
    # resumed DataLoader iterator seeds its workers from torch's generator at step 3, the straight one did
    # at step 1: drop path drew different numbers after the resume (issue 23: 0.088 apart after 1200 steps)
    _, cfg = _cfg(tmp_path, "data.backend=pyav", f"data.root={shards}", "data.num_workers=0", "train.max_steps=6",
                  "train.save_interval=2", "model.drop_path=0.2", "data.sampling_rate=2",
                  "train.scheme=standard")  # fmt: skip
    cfg.train.out_dir = str(tmp_path / "straight")
    assert train(cfg) == 0
    cfg.train.out_dir = str(tmp_path / "broken")
    monkeypatch.setenv("MARVIT_FAULT_STEP", "3")
    with pytest.raises(RuntimeError, match="injected fault at step 3"):
        train(cfg)
    monkeypatch.delenv("MARVIT_FAULT_STEP")
    cfg.train.resume = "auto"
    assert train(cfg) == 0
    a, b = (
        _weights(latest_checkpoint(tmp_path / "straight")),
        _weights(latest_checkpoint(tmp_path / "broken")),
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)


# ---- preemption -------------------------------------------------------------------------------------------
def _wait_rows(run: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while True:
        f = run / "metrics.jsonl"
        if f.is_file() and sum(1 for x in f.read_text().splitlines() if '"loss"' in x) >= n:
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the run never got there"
        time.sleep(0.1)


def _signal_when_held(run: Path, rows: int, hold: Path, sig: int) -> threading.Thread:
    """A thread that waits for ``rows`` logged steps, signals this process, then lets the held run go on."""

    def go() -> None:
        deadline = time.time() + 300
        f = run / "metrics.jsonl"
        while time.time() < deadline and not (
            f.is_file() and sum('"loss"' in x for x in f.read_text().splitlines()) >= rows
        ):
            time.sleep(0.05)
        os.kill(os.getpid(), sig)
        time.sleep(0.2)
        hold.unlink()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_a_signal_saves_at_the_step_and_exits_75_and_the_resume_equals_the_straight_run(tmp_path, capsys,
                                                                                       monkeypatch, sig):  # fmt: skip
    config, _ = _cfg(tmp_path)
    # one process, 32 clips / batch 4: 8 steps an epoch; held before step 4, signalled there: mid-epoch
    common = ["train", str(config), "train.max_steps=8", "train.log_interval=1", "model.drop_path=0.1",
              "train.scheme=standard", "data.mixup=0.8"]  # fmt: skip
    run, straight, hold = tmp_path / "run", tmp_path / "straight", tmp_path / "hold"
    hold.write_text("")
    monkeypatch.setenv("MARVIT_HOLD_STEP", "3")
    monkeypatch.setenv("MARVIT_HOLD_FILE", str(hold))
    t = _signal_when_held(run, 3, hold, getattr(signal, sig))
    assert cli([*common, f"train.out_dir={run}"]) == guard.EXIT_PREEMPTED
    t.join()
    assert f"stopped by {sig} after step 4" in _one_line(capsys.readouterr().err)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004"]
    assert json.loads((run / guard.PREEMPTED).read_text())["step"] == 4
    assert not (run / "run.lock").exists() and not (run / "results.json").exists()
    if sig != "SIGTERM":  # the same path from here on: one resume check is enough
        return
    monkeypatch.delenv("MARVIT_HOLD_STEP")
    assert cli([*common, f"train.out_dir={run}", "train.resume=auto"]) == 0
    assert "resumed from" in capsys.readouterr().out and not (run / guard.PREEMPTED).exists()
    assert cli([*common, f"train.out_dir={straight}"]) == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 8
    a, b = _weights(latest_checkpoint(straight)), _weights(latest_checkpoint(run))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_signal_stops_at_once(tmp_path):
    # a user's second Ctrl-C (or a second SIGTERM) is not asked to wait for the save
    config, _ = _cfg(tmp_path)
    hold = tmp_path / "hold"
    hold.write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "marvit", "train", str(config), f"train.out_dir={tmp_path / 'r'}",
                             "train.log_interval=1"],
                            env=_env(MARVIT_HOLD_STEP="1", MARVIT_HOLD_FILE=str(hold)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_rows(tmp_path / "r", 1, proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM
    assert list_checkpoints(tmp_path / "r") == []


@pytest.mark.slow
def test_sigterm_to_a_two_rank_torchrun_saves_once_and_resumes_equal_to_the_straight_run(tmp_path):
    config, _ = _cfg(tmp_path)
    common = ["train", str(config), "train.max_steps=8", "train.log_interval=2", "model.drop_path=0.1",
              "train.scheme=standard"]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--rdzv-backend=c10d",
                "--rdzv-endpoint=localhost:0", "-m", "marvit"]  # fmt: skip
    run, straight, hold = tmp_path / "run", tmp_path / "straight", tmp_path / "hold"
    hold.write_text("")
    # 32 clips / (2 ranks x 4): 4 steps an epoch; both ranks hold before step 5, the agent is signalled (as
    # Slurm signals the launcher) and forwards SIGTERM to the workers; they agree at step 6's log all-reduce
    proc = subprocess.Popen([*torchrun, *common, f"train.out_dir={run}"], cwd=tmp_path,
                            env=_env(MARVIT_HOLD_STEP="4", MARVIT_HOLD_FILE=str(hold)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_rows(run, 2, proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        hold.unlink()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "stopped by SIGTERM after step 6" in err, err[-3000:]
    assert list_checkpoints(run)[-1].name == "step_00000006"  # (and step 4's, the end of epoch 1)
    marker = json.loads((run / guard.PREEMPTED).read_text())
    assert marker["step"] == 6 and marker["status"] == guard.EXIT_PREEMPTED
    assert not (run / "run.lock").exists()
    res = subprocess.run([*torchrun, *common, f"train.out_dir={run}", "train.resume=auto"], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout and "at step 6" in res.stdout
    ref = subprocess.run([*torchrun, *common, f"train.out_dir={straight}"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["steps"] == 8
    a, b = _weights(latest_checkpoint(straight)), _weights(latest_checkpoint(run))
    assert all(torch.equal(a[k], b[k]) for k in a)
