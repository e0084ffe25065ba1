"""Masked patch embedding: the Triton kernels against the PyTorch reference (on CPU tensors through the
Triton interpreter, on CUDA tensors compiled), the reference against the standard Conv3d-then-gather path,
argument errors, the dispatch, and an ahead-of-time compile of every kernel and autotune config for
sm_80 / sm_90.

The kernels are `@triton.jit` functions defined when marvit.kernels is imported; tests/conftest.py sets
TRITON_INTERPRET=1 before that on a machine without CUDA, so `dispatch.interpreter_enabled()` is true
here. The GPU compile runs in a subprocess with the interpreter off (tests/_triton_compile.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _kernel_util import KERNEL_DEVICE, needs_kernels
from _kernel_util import assert_close as _assert_close

from marvit.kernels import (
    BackendUnavailable,
    dispatch,
    masked_patch_embed,
    masked_patch_embed_reference,
    standard_patch_embed,
)
from marvit.kernels import patch_embed as pe
from marvit.kernels.patch_embed import (
    CONFIGS,
    _check_args,
    _forward_triton,
    _grad_video_triton,
    _grad_weight_triton,
)

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.float64: 1e-12, torch.bfloat16: 3e-2}


def _random_idx(B: int, N: int, n_vis: int, gen: torch.Generator) -> torch.Tensor:
    return torch.stack(
        [torch.randperm(N, generator=gen)[:n_vis].sort().values for _ in range(B)]
    )  # (B, N_vis)


def _cell_running_idx(grid: tuple[int, int, int], ratio: float, phase: int) -> torch.Tensor:
    """Visible indices of a 2x2 cell running mask on `grid`, starting at `phase` (independent of marvit)."""
    k = round(4 * ratio)
    base = [1] * k + [0] * (4 - k)
    keep = []
    Tn, Hn, Wn = grid
    for t in range(Tn):
        s = (t + phase) % 4
        state = base[4 - s :] + base[: 4 - s]
        for h in range(Hn):
            for w in range(Wn):
                if not state[(h % 2) * 2 + (w % 2)]:
                    keep.append((t * Hn + h) * Wn + w)
    return torch.tensor(keep)


# (name, B, C, T, H, W, t, ph, pw, D, visible): visible is "all", an int (random N_vis) or "cell"
CASES = [
    ("tiny_4x32x32_p16", 2, 3, 4, 32, 32, 2, 16, 16, 37, 5),
    ("nonsquare_clip_b1", 1, 3, 4, 12, 20, 2, 4, 4, 24, 17),
    ("nonsquare_patch_all", 3, 2, 6, 8, 12, 3, 2, 4, 33, "all"),
    ("cell_running_50", 2, 3, 8, 16, 16, 2, 4, 4, 40, "cell"),
    ("one_token_wide_D", 2, 1, 2, 6, 6, 1, 3, 3, 70, 1),
    ("every_token_explicit", 1, 3, 2, 8, 8, 2, 4, 4, 19, 8),
]


def _make_case(case: tuple, dtype: torch.dtype, seed: int = 0, device: str | None = "cpu") -> dict:
    name, B, C, T, H, W, t, ph, pw, D, visible = case
    gen = torch.Generator().manual_seed(seed)
    Tn, Hn, Wn = T // t, H // ph, W // pw
    N, K = Tn * Hn * Wn, C * t * ph * pw
    if visible == "all":
        idx = None
    elif visible == "cell":  # a different starting phase per clip
        idx = torch.stack([_cell_running_idx((Tn, Hn, Wn), 0.5, b) for b in range(B)])
    else:
        idx = _random_idx(B, N, visible, gen)
    # The HF layout (B, T, C, H, W) permuted to (B, C, T, H, W): the kernel must honour the strides.
    video = torch.randn(B, T, C, H, W, generator=gen).to(dtype).permute(0, 2, 1, 3, 4)
    weight = (torch.randn(D, C, t, ph, pw, generator=gen) / K**0.5).to(dtype)
    bias = torch.randn(D, generator=gen).to(dtype)
    # An fp32 buffer, as the model keeps it, fp64 in an fp64 run (the model casts it to the video's dtype).
    pos = torch.randn(N, D, generator=gen).to(torch.float64 if dtype == torch.float64 else torch.float32)
    d = dict(video=video, idx=idx, weight=weight, bias=bias, pos=pos)
    return {k: v if v is None else v.to(device) for k, v in d.items()}  # .to keeps the permuted strides


def _kernel_dtypes() -> list:
    """fp32/fp16 everywhere; fp64 only in the interpreter (no fp64 GPU path); bf16 only on CUDA (the
    interpreter computes bf16 wrong, so dispatch refuses it there)."""
    on_cpu = KERNEL_DEVICE == "cpu"
    return [
        pytest.param(torch.float32, id="fp32"),
        pytest.param(torch.float16, id="fp16"),
        pytest.param(
            torch.float64, id="fp64", marks=pytest.mark.skipif(not on_cpu, reason="interpreter only")
        ),
        pytest.param(
            torch.bfloat16, id="bf16", marks=pytest.mark.skipif(on_cpu, reason="wrong in the interpreter")
        ),
    ]


@needs_kernels
@pytest.mark.parametrize("dtype", _kernel_dtypes())
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_matches_reference_output_and_grads(case: tuple, dtype: torch.dtype) -> None:
    # fp64 holds every gradient to 4e-12: the bias and position sums must accumulate in fp64, not fp32.
    d = _make_case(case, dtype, device=KERNEL_DEVICE)
    leaves = {k: d[k].detach().clone().requires_grad_() for k in ("video", "weight", "bias", "pos")}
    lv = leaves
    out = masked_patch_embed(lv["video"], d["idx"], lv["weight"], lv["bias"], lv["pos"], backend="triton")
    n_vis = d["pos"].shape[0] if d["idx"] is None else d["idx"].shape[1]
    assert out.dtype == dtype and out.shape == (case[1], n_vis, case[9])
    gen = torch.Generator().manual_seed(1)
    gout = torch.randn(out.shape, generator=gen).to(KERNEL_DEVICE, dtype)
    out.backward(gout)

    # The reference in fp64 (for fp32 and fp64) or fp32 (for fp16, bf16) on the same, already rounded inputs.
    ref_dtype = torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
    ref_leaves = {k: d[k].detach().to(ref_dtype).requires_grad_() for k in ("video", "weight", "bias", "pos")}
    r = ref_leaves
    ref = masked_patch_embed_reference(r["video"], d["idx"], r["weight"], r["bias"], r["pos"])
    ref.backward(gout.to(ref_dtype))
    tol = TOL[dtype]
    _assert_close(out, ref, tol, "output")
    for k in ("video", "weight", "bias", "pos"):
        assert leaves[k].grad is not None and leaves[k].grad.dtype == leaves[k].dtype, k
        _assert_close(leaves[k].grad, ref_leaves[k].grad, tol * 4, f"grad {k}")


@pytest.mark.skipif(KERNEL_DEVICE != "cpu", reason="fp64 runs only in the Triton interpreter")
def test_float64_bias_and_position_gradients_keep_float64_precision() -> None:
    # 192 rows of fp64 grad_out: summed in fp32 the bias gradient is off by ~1e-7 relative (issue 11).
    gen = torch.Generator().manual_seed(7)
    B, N_vis, D, N = 3, 64, 5, 4 * 8 * 8
    video = torch.randn(B, 1, 4, 16, 16, generator=gen, dtype=torch.float64)
    weight = torch.randn(D, 1, 1, 2, 2, generator=gen, dtype=torch.float64)
    bias = torch.randn(D, generator=gen, dtype=torch.float64)
    pos = torch.randn(N, D, generator=gen, dtype=torch.float64)
    idx = torch.stack([torch.randperm(N, generator=gen)[:N_vis].sort().values for _ in range(B)])
    gout = torch.randn(B, N_vis, D, generator=gen, dtype=torch.float64)
    grads = {}
    for backend in ("triton", "torch"):
        leaves = [x.clone().requires_grad_() for x in (video, weight, bias, pos)]
        masked_patch_embed(leaves[0], idx, *leaves[1:], backend=backend).backward(gout)
        grads[backend] = [x.grad for x in leaves]
    for name, got, want in zip(("video", "weight", "bias", "pos"), grads["triton"], grads["torch"]):
        assert got.dtype == torch.float64, name
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13, msg=lambda m, n=name: f"grad {n}: {m}")


@needs_kernels
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_gpu_config_is_numerically_right_in_the_interpreter(name: str) -> None:
    # The GPU configs' blocks are larger than this problem, so every tail mask is exercised.
    case = ("cfg", 2, 3, 4, 16, 24, 2, 8, 8, 45, 7)
    d = _make_case(case, torch.float32, seed=3, device=KERNEL_DEVICE)
    _, pos = _check_args(d["video"], d["idx"], d["weight"], d["bias"], d["pos"], True)
    video64, w64 = d["video"].double().requires_grad_(), d["weight"].double().requires_grad_()
    ref = masked_patch_embed_reference(video64, d["idx"], w64, d["bias"].double(), pos.double())
    gout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5)).to(KERNEL_DEVICE)
    ref.backward(gout.double())
    for config in CONFIGS[name]:
        if name == "fwd":
            got = _forward_triton(d["video"], d["idx"], d["weight"], d["bias"], pos, config=config)
            _assert_close(got, ref, TOL[torch.float32], f"fwd {config}")
        elif name == "grad_weight":
            got = _grad_weight_triton(d["video"], d["idx"], gout, d["weight"].shape, config=config)
            _assert_close(got.view_as(w64), w64.grad, TOL[torch.float32] * 4, f"grad_weight {config}")
        else:
            got = _grad_video_triton(gout, d["idx"], d["weight"], d["video"].shape, config=config)
            _assert_close(got, video64.grad, TOL[torch.float32] * 4, f"grad_video {config}")


@pytest.mark.skipif(KERNEL_DEVICE != "cpu", reason="fp64 runs only in the Triton interpreter")
def test_gradcheck_float64_tiny() -> None:
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(1, 2, 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 1, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 3, 4, 6, 7]])
    fn = lambda v, w, b, p: masked_patch_embed(v, idx, w, b, p, backend="triton")
    assert torch.autograd.gradcheck(fn, (video, weight, bias, pos), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_reference_matches_standard_conv_path(case: tuple) -> None:
    d = _make_case(case, torch.float64)
    a = {k: d[k].detach().clone().requires_grad_() for k in ("video", "weight", "bias")}
    b = {k: d[k].detach().clone().requires_grad_() for k in ("video", "weight", "bias")}
    ref = masked_patch_embed_reference(a["video"], d["idx"], a["weight"], a["bias"], d["pos"])
    std = standard_patch_embed(b["video"], d["idx"], b["weight"], b["bias"], d["pos"].unsqueeze(0))
    _assert_close(ref, std, 1e-12, "output")
    gout = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref.backward(gout)
    std.backward(gout)
    for k in a:
        _assert_close(a[k].grad, b[k].grad, 1e-12, f"grad {k}")


def test_reference_without_bias_or_pos_is_a_plain_projection() -> None:
    d = _make_case(CASES[1], torch.float64)
    ref = masked_patch_embed_reference(d["video"], d["idx"], d["weight"], None, None)
    std = standard_patch_embed(d["video"], d["idx"], d["weight"], None, None)
    _assert_close(ref, std, 1e-12, "output")
    # Hand-computed first visible token of clip 0: one dot product per channel.
    _, _, _, _, _, _, t, ph, pw, _, _ = CASES[1]
    n = int(d["idx"][0, 0])
    Hn, Wn = 12 // ph, 20 // pw
    ti, hi, wi = n // (Hn * Wn), (n // Wn) % Hn, n % Wn
    tube = d["video"][0, :, ti * t : (ti + 1) * t, hi * ph : (hi + 1) * ph, wi * pw : (wi + 1) * pw]
    manual = (d["weight"] * tube).flatten(1).sum(1)
    _assert_close(ref[0, 0], manual, 1e-12, "token 0")


def test_conftest_built_the_kernels_for_the_interpreter_without_cuda() -> None:
    if not torch.cuda.is_available():
        assert pe.INTERPRETED and dispatch.interpreter_enabled()
        assert type(pe.KERNELS["fwd"]).__name__ == "InterpretedFunction"


def test_auto_is_torch_on_cpu_and_forced_triton_needs_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `auto` never picks the interpreter: it is for numerics, far slower than the reference.
    for built_interpreted in (False, True):
        monkeypatch.setattr(pe, "INTERPRETED", built_interpreted)  # dispatch only; no kernel launches
        assert dispatch.patch_embed_path("cpu", torch.float32) == "torch"
        assert dispatch.patch_embed_path("cpu", torch.float64) == "torch"
        assert dispatch.patch_embed_path("cpu", torch.float32, "torch") == "torch"
    monkeypatch.setattr(pe, "INTERPRETED", False)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
        dispatch.patch_embed_path("cpu", torch.float32, "triton")
    monkeypatch.setattr(pe, "INTERPRETED", True)
    assert dispatch.patch_embed_path("cpu", torch.float32, "triton") == "triton-interpreter"
    assert dispatch.patch_embed_path("cpu", torch.float64, "triton") == "triton-interpreter"
    assert dispatch.patch_embed_path("cpu", torch.bfloat16) == "torch"  # the interpreter gets bf16 wrong
    with pytest.raises(BackendUnavailable, match="bfloat16"):
        dispatch.patch_embed_path("cpu", torch.bfloat16, "triton")
    assert dispatch.patch_embed_path("cuda", torch.float64) == "torch"
    with pytest.raises(BackendUnavailable, match="float64"):
        dispatch.patch_embed_path("cuda", torch.float64, "triton")
    if dispatch.triton_version() is not None and not torch.cuda.is_available():
        assert dispatch.patch_embed_path("cuda", torch.bfloat16) == "triton"
    with pytest.raises(ValueError, match="backend"):
        dispatch.patch_embed_path("cpu", torch.float32, "cuda")


def test_describe_reports_versions_and_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pe, "INTERPRETED", True)
    info = dispatch.describe()
    json.dumps(info)  # `marvit info --json` prints it
    assert info["triton_interpret"] is True
    assert info["triton"] == dispatch.triton_version()
    assert info["patch_embed"]["cpu_fp32"] == "torch"
    assert info["patch_embed"]["cpu_fp32_forced_triton"] == "triton-interpreter"
    assert info["attention"]["cpu"] == "sdpa"
    monkeypatch.setattr(pe, "INTERPRETED", False)
    info = dispatch.describe()
    assert info["triton_interpret"] is False
    assert info["patch_embed"]["cpu_fp32_forced_triton"].startswith("unavailable: ")


def _good() -> dict:
    d = _make_case(CASES[0], torch.float32)
    return dict(
        video=d["video"], visible_idx=d["idx"], weight=d["weight"], bias=d["bias"], pos_embed=d["pos"]
    )


BAD = [
    ("video 4-D", lambda a: a.update(video=a["video"][:, 0]), "video: expected a (B, C, T, H, W)"),
    (
        "video int",
        lambda a: a.update(video=a["video"].long(), weight=a["weight"].long()),
        "video: expected a floating",
    ),
    ("dtype mismatch", lambda a: a.update(weight=a["weight"].half()), "weight: dtype"),
    ("channels", lambda a: a.update(weight=a["weight"][:, :2]), "input channels"),
    ("T not divisible", lambda a: a.update(video=a["video"][:, :, :3]), "not divisible"),
    ("W not divisible", lambda a: a.update(video=a["video"][..., :31]), "not divisible"),
    ("idx batch", lambda a: a.update(visible_idx=a["visible_idx"][:1]), "visible_idx: batch"),
    ("idx float", lambda a: a.update(visible_idx=a["visible_idx"].float()), "visible_idx: expected"),
    ("idx 1-D", lambda a: a.update(visible_idx=a["visible_idx"][0]), "visible_idx: expected"),
    ("idx too many", lambda a: a.update(visible_idx=torch.arange(9).expand(2, 9)), "only N=8"),
    ("idx out of range", lambda a: a.update(visible_idx=torch.tensor([[0, 8], [1, 2]])), "[0, 8)"),
    ("idx negative", lambda a: a.update(visible_idx=torch.tensor([[-1, 2], [1, 2]])), "[0, 8)"),
    ("idx unsorted", lambda a: a.update(visible_idx=torch.tensor([[3, 2], [1, 2]])), "strictly increasing"),
    ("idx repeated", lambda a: a.update(visible_idx=torch.tensor([[2, 2], [1, 2]])), "strictly increasing"),
    ("bias shape", lambda a: a.update(bias=a["bias"][:-1]), "bias: expected"),
    ("pos shape", lambda a: a.update(pos_embed=a["pos_embed"][:-1]), "pos_embed: expected"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mutate, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_arguments_are_refused_before_any_kernel(backend: str, mutate, match: str) -> None:
    args = _good()
    mutate(args)
    with pytest.raises(ValueError, match=re.escape(match)):
        masked_patch_embed(**args, backend=backend)
    with pytest.raises(ValueError, match=re.escape(match)):
        standard_patch_embed(**args)


def test_check_indices_false_skips_value_checks() -> None:
    args = _good()
    args["visible_idx"] = torch.tensor([[3, 1], [0, 5]])  # unsorted: refused by default on CPU
    with pytest.raises(ValueError, match="strictly increasing"):
        masked_patch_embed(**args, backend="torch")
    out = masked_patch_embed(**args, backend="torch", check_indices=False)
    std = _good()
    full = standard_patch_embed(std["video"], None, std["weight"], std["bias"], std["pos_embed"])
    _assert_close(out, torch.stack([full[0, [3, 1]], full[1, [0, 5]]]), 1e-5, "unchecked gather")


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend"):
        masked_patch_embed(**_good(), backend="cuda")


def test_forcing_triton_without_interpreter_on_cpu_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pe, "INTERPRETED", False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # too late: the kernels were defined at import
    with pytest.raises(
        BackendUnavailable, match=r"TRITON_INTERPRET=1 before importing marvit \(it is set now"
    ):
        masked_patch_embed(**_good(), backend="triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        masked_patch_embed(**_good(), backend="triton")


# Largest dynamic shared memory per block (bytes): A100 (sm_80) and H100 (sm_90).
_SMEM_LIMIT = {80: 166912, 90: 232448}


@pytest.mark.slow  # cold Triton cache: ~150 CPU-seconds of compiling; warm cache: ~5
def test_every_kernel_and_config_compiles_for_sm80_and_sm90() -> None:
    script = Path(__file__).with_name("_triton_compile.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real JITFunctions in the child
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["interpreted"] is False
    results = report["results"]
    expected = sum(len(c) for c in CONFIGS.values()) * 3 * 2 + len(CONFIGS) * 2
    assert len(results) == expected
    failures = [r for r in results if r[5] is not None]
    assert not failures, "\n".join(f"{n} {c} {d} sm_{a}: {err}" for n, c, d, a, _, err in failures)
    too_big = [r for r in results if r[4] > _SMEM_LIMIT[r[3]]]
    assert not too_big, f"configs needing more shared memory than the GPU has: {too_big}"


# ---------------------------------------------------------------------------------------------------
# On a GPU: the compiled kernel at model sizes (skipped without CUDA)
# ---------------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
@pytest.mark.parametrize("D, ratio", [(768, 0.5), (1024, 0.75), (200, 0.25)])
def test_cuda_kernel_matches_reference(dtype: torch.dtype, D: int, ratio: float) -> None:
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    B, N = 2, 1568
    idx = torch.stack([_cell_running_idx((8, 14, 14), ratio, b) for b in range(B)]).to(dev)
    video = torch.randn(B, 3, 16, 224, 224, generator=gen).to(dev, dtype).requires_grad_()
    weight = (torch.randn(D, 3, 2, 16, 16, generator=gen) / 1536**0.5).to(dev, dtype).requires_grad_()
    bias = torch.randn(D, generator=gen).to(dev, dtype).requires_grad_()
    pos = torch.randn(N, D, generator=gen).to(dev)
    assert dispatch.patch_embed_path(dev, dtype) == "triton"
    out = masked_patch_embed(video, idx, weight, bias, pos)
    gout = torch.randn(out.shape, generator=gen).to(dev, dtype)
    out.backward(gout)
    leaves = [x.detach().double().requires_grad_() for x in (video, weight, bias)]
    ref = masked_patch_embed_reference(leaves[0], idx, leaves[1], leaves[2], pos.double())
    ref.backward(gout.double())
    tol = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]  # fp32 may use tf32
    _assert_close(out, ref, tol, "output")
    for got, want, k in zip((video, weight, bias), leaves, ("video", "weight", "bias")):
        _assert_close(got.grad, want.grad, tol * 4, f"grad {k}")


@pytest.mark.gpu
@gpu
def test_cuda_kernel_under_autocast_matches_conv() -> None:
    dev = torch.device("cuda")
    conv = torch.nn.Conv3d(3, 64, (2, 16, 16), (2, 16, 16)).to(dev)
    video = torch.randn(2, 3, 4, 64, 96, device=dev)
    idx = torch.stack([torch.arange(0, 48, 2), torch.arange(1, 48, 2)]).to(dev)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = masked_patch_embed(video, idx, conv.weight, conv.bias, None)
        std = standard_patch_embed(video.bfloat16(), idx, conv.weight.bfloat16(), conv.bias, None)
    assert out.dtype == torch.bfloat16
    _assert_close(out, std, 4e-2, "autocast output")


# ---------------------------------------------------------------------------------------------------
# The benchmark's own helpers (its timings are never asserted)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio, n_vis", [(0.25, 1176), (0.5, 784), (0.75, 392)])
def test_bench_eval_mask_matches_an_independent_construction(ratio: float, n_vis: int) -> None:
    from marvit.model.masking import eval_visible  # what `bench kernels` times under

    idx = eval_visible("cell_running", ratio, (8, 14, 14), 2)  # (B, N_vis)
    assert idx.shape == (2, n_vis) and torch.equal(idx[0], idx[1])
    idx = idx[0]
    torch.testing.assert_close(idx, _cell_running_idx((8, 14, 14), ratio, 0))


def test_bench_bytes_formula_orders_the_paths() -> None:
    from marvit.bench.kernels import bytes_moved

    B, N, K, D = 2, 1568, 1536, 768
    fused, ref, std = (bytes_moved(p, B, N, 784, K, D, 2) for p in ("fused", "reference", "standard"))
    assert fused < ref < std
    # The fused path reads each visible pixel once and writes each visible token once, nothing else big.
    assert fused == B * 784 * K * 2 + (D * K + D) * 2 + B * 784 * 8 + B * 784 * D * 4 + B * 784 * D * 2
    with pytest.raises(ValueError, match="path"):
        bytes_moved("conv", B, N, 784, K, D, 2)
