"""``marvit doctor``: every fast path run once on this machine against its plain twin.

marvit's fast paths (the compiled Triton patch embedding, xformers, DALI's GPU decoder, bf16 autocast,
NCCL, inductor) are held to their twins by the test suite, but a CPU-only CI cannot run most of them. The
doctor is the one command to run first wherever a GPU appears: each row runs a fast path once on a small
problem, next to the twin the tests use, and reports pass/fail, the maximum error against the twin (relative
to the twin's largest magnitude, or in uint8 levels for decoded pixels) and the wall time, first call
included (Triton autotuning, inductor compilation). A row that cannot run here is skipped and says why.

Rows (device in brackets where it matters):
- ``triton patch embed``: the masked patch embedding kernel (forward and the video/weight/bias gradients)
  vs ``masked_patch_embed_reference`` in higher precision. CUDA: compiled, bf16 at ViT-B size; CPU: only
  in the Triton interpreter (``TRITON_INTERPRET=1`` set before marvit is imported), fp32 at a tiny size.
- ``xformers attention`` [CUDA] vs SDPA; ``sdpa attention`` vs the plain-math reference.
- ``dali decode cpu`` / ``dali decode gpu`` [CUDA]: DALI's video decoder on a clip encoded here with
  ``encode_h264`` vs PyAV's decode of the same file.
- ``train step <scheme> fp32`` and ``train step <scheme> bf16`` [CUDA] for standard, mar and pretrain: one
  ``forward_loss`` + backward of a tiny model (finite loss, finite gradient for every trainable parameter);
  the bf16 autocast step is held to the fp32 step's loss on the same weights, clip and mask.
- ``ddp gloo`` / ``ddp nccl`` [CUDA]: a one-process group (file store in a temporary directory), one
  all-reduce and one DDP backward, then destroyed.
- ``compiled block``: one encoder block under ``torch.compile`` (inductor, ``fullgraph=True``) vs eager,
  output and gradients.

On CUDA the doctor also measures the data path (``data path``, :mod:`marvit.bench.datapath`): DALI loader
clips/s and decoded frames/s with 1, 2, 4 and 7 pipelines on a clip set written on the spot, beside a ViT-B
MAR training step, and whether data keeps up; a measurement, not a row of the exit status.

The table goes to stdout (or one JSON object with ``as_json``) and ``doctor.json`` is written atomically to
``out``. Exit status 0 when no row failed, 1 otherwise.
"""

from __future__ import annotations

import json as jsonlib
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marvit.bench.timing import sync
from marvit.errors import InputError
from marvit.kernels import (
    attention,
    attention_reference,
    dispatch,
    masked_patch_embed,
    masked_patch_embed_reference,
)

DEFAULT_OUT = "doctor_out"
DATA_PATH = "data path"  # the GPU data path measurement (a section of its own, not a pass/fail row)
SCHEMES = ("standard", "mar", "pretrain")


class Skip(Exception):
    """This check cannot run on this machine; the message says why."""


@dataclass
class Row:
    check: str
    device: str
    status: str  # "pass" | "fail" | "skip"
    max_err: float | None  # against the twin (relative, or uint8 levels for decoded pixels)
    tol: float | None
    ms: float | None  # wall time of the check, first call (compilation, autotuning) included
    detail: str


@dataclass
class Result:
    """What a check measured: the worst error and its tolerance (None: a pass/fail check only)."""

    max_err: float | None = None
    tol: float | None = None
    detail: str = ""
    ok: bool = True


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(1, max |expected|), in fp64 on the host."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if e.numel() == 0:
        return 0.0
    return (a - e).abs().max().item() / max(1.0, e.abs().max().item())


def _errors(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], tols: dict[str, float]) -> Result:
    """Relative errors of each named pair against its own tolerance; max_err/tol of the worst ratio."""
    errs = {k: _rel_err(a, e) for k, (a, e) in pairs.items()}
    worst = max(errs, key=lambda k: errs[k] / tols[k])
    ok = all(math.isfinite(errs[k]) and errs[k] <= tols[k] for k in errs)
    detail = ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
    return Result(errs[worst], tols[worst], detail, ok)


def _eval_mask(grid: tuple[int, int, int], batch: int, device: torch.device) -> torch.Tensor:
    from marvit.model.masking import eval_visible

    return eval_visible("cell_running", 0.5, grid, batch, device=device)  # (B, N_vis)


# --------------------------------------------------------------------------------------------------------
# the checks: each returns a Result or raises Skip
# --------------------------------------------------------------------------------------------------------
def check_patch_embed(device: torch.device) -> Result:
    if device.type == "cuda":
        if dispatch.interpreter_enabled():
            raise Skip(
                "TRITON_INTERPRET=1 was set at import: the kernels run interpreted; unset it to check them"
            )
        dtype, (B, T, S, D, p), tol = torch.bfloat16, (2, 16, 224, 768, 16), 4e-2
    else:
        if not dispatch.interpreter_enabled():
            raise Skip(
                "the compiled kernel needs a CUDA GPU; on a CPU it runs only in the Triton interpreter: "
                "TRITON_INTERPRET=1 marvit doctor"
            )
        dtype, (B, T, S, D, p), tol = torch.float32, (2, 4, 32, 48, 8), 1e-4
    dispatch.patch_embed_path(device, dtype, "triton")  # raises BackendUnavailable with the reason
    gen = torch.Generator().manual_seed(0)
    grid = (T // 2, S // p, S // p)
    idx = _eval_mask(grid, B, device)
    K = 3 * 2 * p * p
    inputs = {
        "video": torch.randn(B, 3, T, S, S, generator=gen),
        "weight": torch.randn(D, 3, 2, p, p, generator=gen) / K**0.5,
        "bias": torch.randn(D, generator=gen),
    }
    pos = torch.randn(math.prod(grid), D, generator=gen).to(device)  # fp32 buffer, as the model keeps it
    fast = {k: v.to(device, dtype).requires_grad_() for k, v in inputs.items()}
    ref_dtype = torch.float64 if device.type == "cpu" else torch.float32
    ref = {k: v.detach().to(ref_dtype).requires_grad_() for k, v in fast.items()}  # the same rounded inputs
    out = masked_patch_embed(fast["video"], idx, fast["weight"], fast["bias"], pos, backend="triton")
    want = masked_patch_embed_reference(ref["video"], idx, ref["weight"], ref["bias"], pos.to(ref_dtype))
    gout = torch.randn(out.shape, generator=gen).to(device)
    out.backward(gout.to(dtype))
    want.backward(gout.to(ref_dtype))
    pairs = {"out": (out, want), **{f"grad {k}": (fast[k].grad, ref[k].grad) for k in fast}}
    tols = {k: tol if k == "out" else 4 * tol for k in pairs}
    res = _errors(pairs, tols)
    res.detail = (
        f"{str(dtype).removeprefix('torch.')} B={B} {T}x{S}x{S} D={D} N_vis={idx.shape[1]}: " + res.detail
    )
    return res


def _qkv(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int, int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=gen).to(device, dtype).requires_grad_() for _ in range(3)]


def _attention_pairs(fast: str, twin: str, device: torch.device, dtype: torch.dtype, shape: tuple) -> dict:
    q, k, v = _qkv(device, dtype, shape)
    tq, tk, tv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = attention(q, k, v, backend=fast)
    want = attention(tq, tk, tv, backend=twin) if twin != "reference" else attention_reference(tq, tk, tv)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device, out.dtype)
    out.backward(gout)
    want.backward(gout.to(want.dtype))
    return {
        "out": (out, want),
        "grad q": (q.grad, tq.grad),
        "grad k": (k.grad, tk.grad),
        "grad v": (v.grad, tv.grad),
    }


def check_xformers(device: torch.device) -> Result:
    if device.type != "cuda":
        raise Skip("xformers has no CPU kernels (GPU only)")
    if dispatch.xformers_version() is None:
        raise Skip("xformers is not installed: pip install 'marvit[gpu]'")
    pairs = _attention_pairs("xformers", "sdpa", device, torch.bfloat16, (2, 784, 12, 64))
    res = _errors(pairs, dict.fromkeys(pairs, 3e-2))
    res.detail = "bf16 (B, N, H, Dh)=(2, 784, 12, 64) vs SDPA: " + res.detail
    return res


def check_sdpa(device: torch.device) -> Result:
    # the reference on fp64 (CPU) / fp32 (CUDA) copies of the same inputs
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = (2, 784, 12, 64) if device.type == "cuda" else (2, 97, 3, 16)
    q, k, v = _qkv(device, dtype, shape)
    ref_dtype = torch.float64 if device.type == "cpu" else torch.float32
    tq, tk, tv = (x.detach().to(ref_dtype).requires_grad_() for x in (q, k, v))
    out = attention(q, k, v, backend="sdpa")
    want = attention_reference(tq, tk, tv)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device)
    out.backward(gout.to(dtype))
    want.backward(gout.to(ref_dtype))
    pairs = {
        "out": (out, want),
        "grad q": (q.grad, tq.grad),
        "grad k": (k.grad, tk.grad),
        "grad v": (v.grad, tv.grad),
    }
    res = _errors(pairs, dict.fromkeys(pairs, 3e-2 if dtype == torch.bfloat16 else 1e-5))
    res.detail = f"{str(dtype).removeprefix('torch.')} (B, N, H, Dh)={shape} vs plain math: " + res.detail
    return res


def _test_clip(tmp: Path) -> Path:
    """16 frames of 64x64 smooth colour ramps drifting over time, H.264-encoded as the pipeline encodes.

    Smooth on purpose: the two decoders agree on the H.264 stream and differ only in the YUV -> RGB
    conversion (rounding, chroma upsampling), which costs a few uint8 levels on ramps but tens at sharp
    colour edges."""
    from marvit.pipeline.video import encode_h264

    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    ramps = [np.stack([xx * 3 + 2 * t, yy * 3 + t, (xx + yy) * 1.5 + 3 * t], -1) for t in range(16)]
    frames = [f.clip(0, 255).astype(np.uint8) for f in ramps]  # (64, 64, 3) each
    path = tmp / "doctor_clip.mp4"
    path.write_bytes(encode_h264(frames, fps=25))
    return path


# Measured on this content with DALI 2.1's CPU decoder against PyAV: max 5, mean 1.2 levels.
DECODE_TOL_LEVELS = 10.0  # the largest difference of one pixel
DECODE_MEAN_LEVELS = 3.0  # the mean difference


def check_dali_decode(device: torch.device, gpu: bool) -> Result:
    if gpu and device.type != "cuda":
        raise Skip("DALI's GPU video decoder (NVDEC) needs a CUDA GPU")
    try:
        from nvidia.dali import fn, pipeline_def
    except Exception as e:
        raise Skip(f"DALI is not importable ({type(e).__name__}): pip install nvidia-dali-cuda130") from e
    from marvit.pipeline.video import decode_frames

    with tempfile.TemporaryDirectory() as tmp:
        path = _test_clip(Path(tmp))
        want = decode_frames(path)  # (F, H, W, 3) uint8, PyAV
        data = np.frombuffer(path.read_bytes(), np.uint8)

        device_id = (device.index or 0) if gpu else None

        @pipeline_def(batch_size=1, num_threads=1, device_id=device_id)
        def decode():
            encoded = fn.external_source(source=lambda: [data], batch=True)
            return fn.decoders.video(encoded, device="mixed" if gpu else "cpu")

        pipe = decode()
        pipe.build()
        (out,) = pipe.run()
        got = np.asarray((out.as_cpu() if gpu else out)[0])  # (F, H, W, 3) uint8
        del pipe
    if got.shape != want.shape:
        return Result(None, None, f"DALI decoded shape {got.shape}, PyAV {want.shape}", ok=False)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    err = float(diff.max())
    size = f"{got.shape[0]} frames {got.shape[2]}x{got.shape[1]}"
    detail = f"{size}: max {err:.0f}, mean {diff.mean():.2f} uint8 levels vs PyAV"
    return Result(
        err, DECODE_TOL_LEVELS, detail, err <= DECODE_TOL_LEVELS and diff.mean() <= DECODE_MEAN_LEVELS
    )


def _tiny_config(scheme: str):
    """A tiny run of `scheme`: 4 frames of 32x32 (2x2x2 tokens), two blocks, deterministic (no dropout)."""
    from marvit.config import Config, DataConfig, MaskConfig, ModelConfig, TrainConfig
    from marvit.train.scheme import resolve

    model = ModelConfig.from_name(
        "vit_s", embed_dim=64, depth=2, num_heads=2, num_classes=5, drop_path=0.0, head_dropout=0.0,
        bridge_dim=32, bridge_depth=1, bridge_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2,
    )  # fmt: skip
    cfg = Config(
        model=model,
        mask=MaskConfig(strategy="cell_running", ratio=0.5),
        data=DataConfig(num_frames=4, img_size=32, batch_size=2, mixup=0.0, cutmix=0.0),
        train=TrainConfig(scheme=scheme, pretrain_mask_ratio=0.75),
    )
    return resolve(cfg)


def _train_step(model: torch.nn.Module, scheme: Any, video: torch.Tensor, label: torch.Tensor,
                amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    from marvit.train.step import forward_loss

    model.zero_grad(set_to_none=True)
    gen = torch.Generator(device=video.device).manual_seed(0)  # the same masks in every call
    loss = forward_loss(model, scheme, video, label, gen, amp_dtype)["loss"]
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach().float(), grads


def check_train_step(device: torch.device, scheme_name: str, bf16: bool) -> Result:
    if bf16 and device.type != "cuda":
        raise Skip("bf16 autocast is checked on CUDA (this CPU trains in fp32)")
    from marvit.model import build_model

    cfg, scheme = _tiny_config(scheme_name)
    torch.manual_seed(0)
    model = build_model(cfg.model, with_decoder=scheme.with_decoder, device=device).train()
    gen = torch.Generator().manual_seed(3)
    video = torch.randn(2, 3, cfg.data.num_frames, cfg.data.img_size, cfg.data.img_size, generator=gen).to(
        device
    )
    label = torch.tensor([1, 3], device=device)
    loss, grads = _train_step(model, scheme, video, label, torch.bfloat16 if bf16 else None)
    missing = sorted(n for n, g in grads.items() if g is None)
    bad = sorted(n for n, g in grads.items() if g is not None and not bool(torch.isfinite(g).all()))
    what = f"{len(grads)} parameters, loss {loss.item():.4f}"
    if not bool(torch.isfinite(loss)) or missing or bad:
        return Result(None, None, f"{what}; no gradient: {missing[:3]}; non-finite: {bad[:3]}", ok=False)
    if not bf16:
        return Result(None, None, f"{what}: finite loss and gradients")
    loss32, _ = _train_step(model, scheme, video, label, None)  # the twin: the same step in fp32
    err = abs(loss.item() - loss32.item()) / max(1.0, abs(loss32.item()))
    return Result(err, 5e-2, f"{what} vs fp32 {loss32.item():.4f}", err <= 5e-2)


def check_ddp(device: torch.device, backend: str) -> Result:
    import torch.distributed as dist

    if backend == "nccl":
        if device.type != "cuda":
            raise Skip("NCCL needs CUDA GPUs")
        if not dist.is_nccl_available():
            raise Skip("this torch build has no NCCL")
    elif not dist.is_gloo_available():
        raise Skip("this torch build has no gloo")
    if dist.is_initialized():
        raise Skip("a process group is already initialized in this process")
    dev = device if backend == "nccl" else torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(str(Path(tmp) / "store"), 1)
        dist.init_process_group(backend, store=store, rank=0, world_size=1)
        try:
            x = torch.full((4,), 3.0, device=dev)
            dist.all_reduce(x)
            torch.manual_seed(0)
            net = torch.nn.Linear(8, 4).to(dev)
            ddp = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[dev.index or 0] if dev.type == "cuda" else None
            )
            inp = torch.randn(5, 8, device=dev)
            ddp(inp).square().sum().backward()
            with torch.no_grad():
                want = 2 * (inp @ net.weight.T + net.bias).T @ inp  # d/dW sum((x W^T + b)^2)
            err = _rel_err(net.weight.grad, want)
            ok = bool((x == 3.0).all()) and err <= 1e-5
            return Result(
                err, 1e-5, f"one process: all_reduce {x[0].item():g} (want 3), DDP backward vs plain", ok
            )
        finally:
            dist.destroy_process_group()


def check_compiled_block(device: torch.device) -> Result:
    from marvit.model.layers import Block

    torch.manual_seed(0)
    eager = Block(64, 4).to(device)
    compiled = Block(64, 4).to(device)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(backend="inductor", fullgraph=True)
    x = torch.randn(2, 13, 64, generator=torch.Generator().manual_seed(1)).to(device)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    out_c, out_e = compiled(xs[0]), eager(xs[1])
    gout = torch.randn(out_e.shape, generator=torch.Generator().manual_seed(2)).to(device)
    out_c.backward(gout)
    out_e.backward(gout)
    pairs = {"out": (out_c, out_e), "grad x": (xs[0].grad, xs[1].grad)}
    params = zip(compiled.named_parameters(), eager.parameters())
    pairs.update(
        {f"grad {n}": (p.grad, q.grad) for (n, p), q in params if n in ("attn.qkv.weight", "mlp.fc2.weight")}
    )
    res = _errors(pairs, dict.fromkeys(pairs, 1e-4))
    res.detail = "fp32 Block(64, 4) on (2, 13, 64), inductor fullgraph vs eager: " + res.detail
    return res


def checks(device: torch.device) -> list[tuple[str, Callable[[], Result]]]:
    """Every row in order: (name, a zero-argument check)."""
    rows: list[tuple[str, Callable[[], Result]]] = [
        ("triton patch embed", lambda: check_patch_embed(device)),
        ("xformers attention", lambda: check_xformers(device)),
        ("sdpa attention", lambda: check_sdpa(device)),
        ("dali decode cpu", lambda: check_dali_decode(device, gpu=False)),
        ("dali decode gpu", lambda: check_dali_decode(device, gpu=True)),
    ]
    for name in SCHEMES:
        for bf16 in (False, True):
            rows.append((f"train step {name} {'bf16' if bf16 else 'fp32'}",
                         lambda n=name, b=bf16: check_train_step(device, n, b)))  # fmt: skip
    rows += [
        ("ddp gloo", lambda: check_ddp(device, "gloo")),
        ("ddp nccl", lambda: check_ddp(device, "nccl")),
        ("compiled block", lambda: check_compiled_block(device)),
    ]
    return rows


def _row_device(name: str, device: torch.device) -> str:
    if name in ("dali decode cpu", "ddp gloo"):
        return "cpu"
    return str(device)


def run_check(name: str, device: torch.device, fn: Callable[[], Result]) -> Row:
    """Run one check; a Skip is a skip, any other exception a failure with its message."""
    where = _row_device(name, device)
    t0 = time.perf_counter()
    try:
        res = fn()
        sync(device)
    except Skip as e:
        return Row(name, where, "skip", None, None, None, str(e))
    except Exception as e:
        last = traceback.extract_tb(e.__traceback__)[-1]
        msg = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
        return Row(name, where, "fail", None, None, round((time.perf_counter() - t0) * 1e3, 1),
                   f"{msg} ({Path(last.filename).name}:{last.lineno})")  # fmt: skip
    ms = round((time.perf_counter() - t0) * 1e3, 1)
    return Row(name, where, "pass" if res.ok else "fail", res.max_err, res.tol, ms, res.detail)


def run(device: torch.device | None = None, only: Collection[str] | None = None) -> dict[str, Any]:
    """The checks (all, or those named in `only`) on `device` (default: the first CUDA device, else the
    CPU), and on CUDA the data path measurement (``DATA_PATH``, :mod:`marvit.bench.datapath`); returns the
    JSON-ready report."""
    from marvit.bench import datapath

    device = device or torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    todo = checks(device)
    want_data = only is None or DATA_PATH in only
    if only is not None:
        only = set(only) - {DATA_PATH}
        unknown = sorted(only - {name for name, _ in todo})
        if unknown:
            raise InputError(f"doctor: unknown check(s) {unknown}; known: {[name for name, _ in todo]}")
        todo = [(name, fn) for name, fn in todo if name in only]
    t0 = time.perf_counter()
    rows = [run_check(name, device, fn) for name, fn in todo]
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "skip")}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "kernels": dispatch.describe(),
        "rows": [asdict(r) for r in rows],
        "summary": counts,
        "data_path": datapath.measure(device) if want_data else {"skipped": "not asked for (--only)"},
        "total_s": round(time.perf_counter() - t0, 2),
    }


def format_table(res: dict[str, Any]) -> str:
    lines = [f"marvit doctor: {res['device']} (torch {res['torch']}, cuda {res['cuda']})"]
    head = f"{'check':<28} {'device':<8} {'status':<6} {'max err':>9} {'tol':>8} {'time ms':>9}  detail"
    lines += [head, "-" * len(head)]
    for r in res["rows"]:
        err = "" if r["max_err"] is None else f"{r['max_err']:.2e}"
        tol = "" if r["tol"] is None else f"{r['tol']:.0e}"
        ms = "" if r["ms"] is None else f"{r['ms']:.0f}"
        lines.append(
            f"{r['check']:<28} {r['device']:<8} {r['status']:<6} {err:>9} {tol:>8} {ms:>9}  {r['detail']}"
        )
    if "data_path" in res:
        from marvit.bench.datapath import format_report

        lines.append(format_report(res["data_path"]))
    s = res["summary"]
    lines.append(f"{s['pass']} passed, {s['fail']} failed, {s['skip']} skipped in {res['total_s']:.1f} s")
    return "\n".join(lines)


def main(out: str | None = None, as_json: bool = False, only: Collection[str] | None = None) -> int:
    """CLI entry: ``marvit doctor [--out DIR] [--json]``; ``out`` defaults to ``doctor_out``, ``only``
    names a subset of the checks.

    Returns 0 when no check failed, 1 when one did (skips do not count)."""
    from marvit.pipeline.manifest import atomic_write_json, writable_dir

    path = writable_dir(out if out is not None else DEFAULT_OUT, "--out")  # before the checks run
    res = run(only=only)
    print(jsonlib.dumps(res, indent=2) if as_json else format_table(res), flush=True)
    atomic_write_json(path / "doctor.json", res, indent=2)
    print(f"wrote {path / 'doctor.json'}", file=sys.stderr)
    return 1 if res["summary"]["fail"] else 0
