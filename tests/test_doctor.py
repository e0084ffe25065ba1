"""``marvit doctor`` on this machine: every row that can run on a CPU passes against its twin, every GPU row
is skipped with a reason, the report is written as JSON, and a failing check fails the exit status."""

from __future__ import annotations

import json

import pytest
import torch

from marvit.bench import doctor
from marvit.errors import InputError

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a CPU-only machine reports")

# What a CPU-only machine must skip, and a word each reason must contain.
GPU_ROWS = {
    "xformers attention": "GPU",
    "dali decode gpu": "CUDA",
    "train step standard bf16": "CUDA",
    "train step mar bf16": "CUDA",
    "train step pretrain bf16": "CUDA",
    "ddp nccl": "CUDA",
}
SLOW_ROWS = (
    "compiled block",
)  # a cold inductor compile takes ~35 s on 2 CPU cores: test_doctor_compiled_block


@cpu_only
def test_doctor_cpu_rows_pass_gpu_rows_skip_and_json_is_written(tmp_path, capsys) -> None:
    names = [name for name, _ in doctor.checks(torch.device("cpu")) if name not in SLOW_ROWS]
    assert doctor.main(out=str(tmp_path), only=names) == 0
    table = capsys.readouterr().out
    res = json.loads((tmp_path / "doctor.json").read_text())
    rows = {r["check"]: r for r in res["rows"]}
    assert list(rows) == names
    for name, word in GPU_ROWS.items():
        assert rows[name]["status"] == "skip" and word in rows[name]["detail"], rows[name]
    # the conftest builds the kernels for the interpreter, so the Triton row runs here
    must_pass = [n for n in names if n not in GPU_ROWS and n != "dali decode cpu"]
    assert "triton patch embed" in must_pass
    for name in must_pass:
        r = rows[name]
        assert r["status"] == "pass", r
        assert r["ms"] is not None and r["ms"] >= 0
        if r["max_err"] is not None:
            assert 0 <= r["max_err"] <= r["tol"], r
    from marvit.pipeline.dali_loader import dali_available

    assert rows["dali decode cpu"]["status"] == ("pass" if dali_available() else "skip"), rows[
        "dali decode cpu"
    ]
    assert res["summary"] == {"pass": len(names) - len(GPU_ROWS) - (not dali_available()), "fail": 0,
                              "skip": len(GPU_ROWS) + (not dali_available())}  # fmt: skip
    for name in names:
        assert name in table
    assert "skip" in table and "NCCL needs CUDA GPUs" in table


@pytest.mark.slow
def test_doctor_compiled_block_matches_eager(tmp_path) -> None:
    assert doctor.main(out=str(tmp_path), only=list(SLOW_ROWS), as_json=True) == 0
    (row,) = json.loads((tmp_path / "doctor.json").read_text())["rows"]
    assert row["status"] == "pass" and row["max_err"] <= row["tol"], row


def test_a_failing_check_fails_the_exit_status_and_an_error_becomes_a_row(tmp_path, monkeypatch) -> None:
    def wrong(device: torch.device) -> doctor.Result:  # a fast path 1e-2 off its twin
        return doctor._errors({"out": (torch.ones(3) * 1.01, torch.ones(3))}, {"out": 1e-4})

    def broken(device: torch.device) -> doctor.Result:
        raise RuntimeError("kernel launch failed")

    monkeypatch.setattr(doctor, "check_sdpa", wrong)
    monkeypatch.setattr(doctor, "check_patch_embed", broken)
    assert doctor.main(out=str(tmp_path), only=["sdpa attention", "triton patch embed", "ddp nccl"]) == 1
    rows = {r["check"]: r for r in json.loads((tmp_path / "doctor.json").read_text())["rows"]}
    assert rows["sdpa attention"]["status"] == "fail"
    assert rows["sdpa attention"]["max_err"] == pytest.approx(1e-2, rel=1e-6)
    assert rows["triton patch embed"]["status"] == "fail"
    assert "RuntimeError: kernel launch failed" in rows["triton patch embed"]["detail"]


def test_unknown_check_is_refused() -> None:
    with pytest.raises(InputError, match="unknown check"):
        doctor.run(only=["warp drive"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_doctor_on_cuda_no_row_fails(tmp_path) -> None:
    assert doctor.main(out=str(tmp_path)) == 0
    rows = {r["check"]: r for r in json.loads((tmp_path / "doctor.json").read_text())["rows"]}
    for name in ("triton patch embed", "sdpa attention", "train step mar bf16", "ddp nccl", "compiled block"):
        assert rows[name]["status"] == "pass", rows[name]
