"""`marvit bench kernels`: the fused masked patch embedding against its reference and the standard path.

Three ways to get the visible tokens of a 16x224x224 clip at ViT-B (D=768) and ViT-L (D=1024) width,
under the 50% and 75% cell running evaluation masks:
  fused     - the Triton kernel (reads only visible tubelets; needs a CUDA device),
  reference - gather the visible tubelets with PyTorch, then one matmul (the CPU path),
  standard  - Conv3d over the whole clip, add positions, then gather the visible rows.
Each is timed forward and forward+backward (weight and bias gradients, as in training), with warm-up
and the median over `iters`; the first call (autotuning on a GPU) is reported apart. Bytes moved come
from `bytes_moved` below, a count of each path's unavoidable global-memory reads and writes, and give
the gain a memory-bound GPU should see. No numbers are asserted anywhere.
"""

from __future__ import annotations

import json as jsonlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from marvit.bench.timing import spread, timed_ms
from marvit.kernels import dispatch, masked_patch_embed, masked_patch_embed_reference, standard_patch_embed
from marvit.model.masking import eval_visible
from marvit.pipeline.manifest import atomic_write_bytes, atomic_write_json

WIDTHS = {"vit_b": 768, "vit_l": 1024}
RATIOS = (0.5, 0.75)
CLIP = (16, 224, 224)  # (T, H, W)
TUBELET = (2, 16, 16)
GRID = tuple(c // t for c, t in zip(CLIP, TUBELET))  # (8, 14, 14) token grid
BATCH = 2


def bytes_moved(path: str, B: int, N: int, N_vis: int, K: int, D: int, elt: int, pos_elt: int = 4) -> int:
    """Global-memory bytes each path must read and write at least (int64 indices, `elt`-byte data).

    fused: visible pixels, weight, bias, indices, gathered pos rows in; tokens out.
    reference: the gather reads visible pixels and writes the patch matrix; the GEMM reads it back with
      the weight and writes tokens; the pos add reads tokens and pos rows and writes tokens.
    standard: the conv reads the whole clip and the weight and writes all N tokens; the pos add reads and
      writes all N tokens; the gather reads the visible rows and writes them.
    """
    idx, w = B * N_vis * 8, D * K * elt + D * elt
    vis_pix, vis_tok = B * N_vis * K * elt, B * N_vis * D * elt
    if path == "fused":
        return vis_pix + w + idx + B * N_vis * D * pos_elt + vis_tok
    if path == "reference":
        return (
            (vis_pix + idx + vis_pix)
            + (vis_pix + w + vis_tok)
            + (vis_tok + B * N_vis * D * pos_elt + idx + vis_tok)
        )
    if path == "standard":
        all_tok = B * N * D * elt
        return (
            (B * N * K * elt + w + all_tok)
            + (all_tok + N * D * pos_elt + all_tok)
            + (vis_tok + idx + vis_tok)
        )
    raise ValueError(f"path: expected fused/reference/standard, got {path!r}")


def _time(fn: Callable[[], Any], iters: int, device: torch.device) -> tuple[float, float]:
    """(first call ms, median of `iters` steady-state calls ms), each timed with the device synced."""
    first = timed_ms(fn, device)
    timed_ms(fn, device)  # one more warm-up call
    return first, spread([timed_ms(fn, device) for _ in range(max(iters, 1))])["median"]


def _case(
    fn: Callable[..., torch.Tensor], *args: torch.Tensor
) -> tuple[Callable[[], torch.Tensor], Callable[[], None]]:
    """Forward (no grad) and forward+backward closures of `fn` over fixed (video, idx, weight, bias, pos)."""
    weight, bias = args[2], args[3]

    def fwd() -> torch.Tensor:
        with torch.no_grad():
            return fn(*args)

    def fwd_bwd() -> None:
        fn(*args).float().square().mean().backward()
        weight.grad = bias.grad = None

    return fwd, fwd_bwd


def run(iters: int = 5, device: torch.device | None = None) -> dict[str, Any]:
    """Time every (width, ratio, path) case; returns the JSON-ready result."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    fused_ok = dispatch.patch_embed_path(device, dtype) == "triton"
    T, H, W = CLIP
    t, p, _ = TUBELET
    N = (T // t) * (H // p) * (W // p)
    K = 3 * t * p * p
    elt = torch.finfo(dtype).bits // 8
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(BATCH, 3, T, H, W, generator=gen).to(device, dtype)  # (B, C, T, H, W)
    paths: dict[str, Callable[..., torch.Tensor]] = {"reference": masked_patch_embed_reference,
                                                    "standard": standard_patch_embed}  # fmt: skip
    if fused_ok:
        paths = {"fused": lambda *a: masked_patch_embed(*a, backend="triton"), **paths}
    rows = []
    for name, D in WIDTHS.items():
        weight = (torch.randn(D, 3, t, p, p, generator=gen) * 0.02).to(device, dtype).requires_grad_()
        bias = torch.zeros(D, device=device, dtype=dtype, requires_grad=True)
        pos = torch.randn(N, D, generator=gen).to(device)  # fp32 buffer, as the model keeps it
        for ratio in RATIOS:
            idx = eval_visible("cell_running", ratio, GRID, BATCH, device=device)  # (B, N_vis)
            n_vis = idx.shape[1]
            ref_out = masked_patch_embed_reference(video, idx, weight, bias, pos).detach().float()
            for path, fn in paths.items():
                print(f"  {name} mask {ratio:.0%} {path} ...", file=sys.stderr, flush=True)

                fwd, fwd_bwd = _case(fn, video, idx, weight, bias, pos)
                first, fwd_ms = _time(fwd, iters, device)
                _, train_ms = _time(fwd_bwd, iters, device)
                nbytes = bytes_moved(path, BATCH, N, n_vis, K, D, elt)
                err = (fwd().float() - ref_out).abs().max().item()
                flop = 2 * BATCH * (N if path == "standard" else n_vis) * K * D
                row = {"model": name, "D": D, "mask_ratio": ratio, "n_vis": n_vis, "path": path}
                row.update(
                    first_call_ms=round(first, 3), fwd_ms=round(fwd_ms, 3), fwd_bwd_ms=round(train_ms, 3)
                )
                row.update(bytes=nbytes, gflop=round(flop / 1e9, 3), max_abs_diff_vs_reference=err)
                rows.append(row)
    # The fused kernel's expected gain on a GPU, from the byte counts alone (it is timed only on CUDA).
    gains = []
    for name, D in WIDTHS.items():
        for ratio in RATIOS:
            n_vis = eval_visible("cell_running", ratio, GRID, 1).shape[1]
            b = {p: bytes_moved(p, BATCH, N, n_vis, K, D, 2) for p in ("fused", "reference", "standard")}
            gains.append({
                "model": name, "mask_ratio": ratio,
                "bf16_bytes_fused": b["fused"], "bf16_bytes_reference": b["reference"],
                "bf16_bytes_standard": b["standard"],
                "expected_gain_vs_standard": round(b["standard"] / b["fused"], 2),
                "expected_gain_vs_reference": round(b["reference"] / b["fused"], 2),
                "flop_ratio_vs_standard": round(N / n_vis, 2),
            })  # fmt: skip
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "batch": BATCH, "clip": list(CLIP), "tubelet": list(TUBELET), "iters": iters,
        "fused_timed": fused_ok,
        "note": None if fused_ok else "Triton timings need a CUDA GPU; this run timed the PyTorch paths only",
        "dispatch": dispatch.describe(),
        "rows": rows, "expected_gpu_gain": gains,
    }  # fmt: skip


def format_table(res: dict[str, Any]) -> str:
    lines = [f"marvit bench kernels: {res['device']} {res['dtype']}, batch {res['batch']}, clip "
             f"{'x'.join(map(str, res['clip']))}, tubelet {'x'.join(map(str, res['tubelet']))}, "
             f"median of {res['iters']}"]  # fmt: skip
    if res["note"]:
        lines.append(f"note: {res['note']}")
    cols = ("model", "mask", "path", "fwd ms", "fwd+bwd ms", "first ms", "MB moved", "GFLOP", "max|diff|")
    widths = (6, 5, 10, 9, 11, 9, 9, 7, 10)
    head = " ".join(f"{c:<{w}}" if i < 3 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cols, widths)))
    lines += [head, "-" * len(head)]
    for r in res["rows"]:
        cells = (f"{r['model']:6}", f"{r['mask_ratio']:>5.0%}", f"{r['path']:10}", f"{r['fwd_ms']:>9.2f}",
                 f"{r['fwd_bwd_ms']:>11.2f}", f"{r['first_call_ms']:>9.2f}", f"{r['bytes'] / 1e6:>9.1f}",
                 f"{r['gflop']:>7.2f}", f"{r['max_abs_diff_vs_reference']:>10.2e}")  # fmt: skip
        lines.append(" ".join(cells))
    lines.append("")
    lines.append(
        "expected GPU gain of the fused kernel from bytes moved (bf16; = standard bytes / fused bytes):"
    )
    for g in res["expected_gpu_gain"]:
        mb = {k: g[f"bf16_bytes_{k}"] / 1e6 for k in ("fused", "reference", "standard")}
        lines.append(
            f"  {g['model']} mask {g['mask_ratio']:.0%}: fused {mb['fused']:.1f} MB, reference "
            f"{mb['reference']:.1f} MB, standard {mb['standard']:.1f} MB -> "
            f"{g['expected_gain_vs_standard']:.2f}x vs standard, {g['expected_gain_vs_reference']:.2f}x vs "
            f"reference (and {g['flop_ratio_vs_standard']:.2f}x fewer FLOPs than standard)"
        )
    return "\n".join(lines)


def main(iters: int = 5, out: str | None = None, as_json: bool = False) -> int:
    """CLI entry: `marvit bench kernels [--iters N] [--out DIR] [--json]`."""
    if iters < 1:
        print(f"marvit bench kernels: --iters must be >= 1, got {iters}", file=sys.stderr)
        return 2
    res = run(iters)
    print(jsonlib.dumps(res, indent=2) if as_json else format_table(res))
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / "kernels.json", res, indent=2)
        atomic_write_bytes(path / "kernels.txt", (format_table(res) + "\n").encode())
        print(f"wrote {path / 'kernels.json'}", file=sys.stderr)
    return 0
