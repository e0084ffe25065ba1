"""`marvit profile CONFIG`: torch.profiler over a few training steps of the standard scheme and of MAR.

Both schemes are derived from one config with ``marvit.train.scheme.resolve``: standard = every token, the
linear head, no decoder; MAR = the config's mask (cell running at 50% when it has none) and the bridging
head, with the reconstruction branch at ``train.recon_weight``. Batches come from the config's loader
(``data.backend=synthetic`` needs no files); each step is what ``marvit train`` runs (the masks and decoder
targets and loss of ``marvit.train.step.forward_loss``, AdamW), without mixup. One step per scheme runs before the
profiler starts (warm-up), then ``--steps`` steps are recorded.

Output in ``--out``: a Chrome trace per scheme (``trace_standard.json``, ``trace_mar.json``; open them in
chrome://tracing or Perfetto), ``profile.json`` and ``profile.md``: the top operators by self time and the
share of the time in attention, matmuls, patch embedding, data loading and the rest, standard beside MAR.

How time is classified: every profiler event's self time (CPU self time on a CPU, device self time on
CUDA) goes to exactly one class, so the shares sum to 100%. An event inside the ``data_loading`` or
``patch_embed`` label (``record_function`` around the loader call here and around the patch embedding in
the encoder) belongs to that class; otherwise to the class of the nearest enclosing event (itself
included) whose name is an attention op (SDPA, xformers, softmax) or a matmul (mm, addmm, bmm, linear,
convolution...); the rest is "other" (norms, GELU, elementwise, copies, the optimizer, Python). The patch
embedding's backward runs outside its forward label and is counted with the matmuls.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from marvit.bench.step import train_step
from marvit.config import Config
from marvit.errors import InputError
from marvit.model import build_model
from marvit.pipeline.manifest import atomic_write_bytes, atomic_write_json
from marvit.train.optim import build_optimizer
from marvit.train.scheme import Scheme, resolve
from marvit.train.setup import build_data_loader, check_data, compile_blocks, pick_device

CLASSES = ("attention", "matmul", "patch_embed", "data_loading", "other")
LABELS = ("data_loading", "patch_embed")  # record_function labels that claim everything inside them
ATTENTION_MARKERS = ("scaled_dot_product", "attention", "aten::_softmax", "aten::softmax", "xformers")
MATMUL_OPS = {
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "aten::einsum",
    "aten::addmv", "aten::mv", "aten::dot", "aten::conv3d", "aten::convolution", "aten::_convolution",
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::_addmm_activation",
}  # fmt: skip
TOP_K = 12


def derive_scheme(cfg: Config, scheme: str) -> tuple[Config, Scheme]:
    """``cfg`` as the ``scheme`` ("standard" or "mar") to profile: MAR gets cell running at 50% when the
    config masks nothing, and the bridging head; then :func:`marvit.train.scheme.resolve`."""
    c = copy.deepcopy(cfg)
    c.train.scheme = scheme
    if scheme == "mar":
        if c.mask.strategy == "none" or c.mask.ratio == 0:
            c.mask.strategy, c.mask.ratio = "cell_running", 0.5
        c.model.head = "bridging"
    return resolve(c)


def classify(name: str) -> str | None:
    """The class an op's name alone implies (None: decided by the enclosing events)."""
    if name in LABELS:
        return name
    if any(m in name for m in ATTENTION_MARKERS):
        return "attention"
    if name in MATMUL_OPS:
        return "matmul"
    return None


def _event_class(event: Any) -> str:
    nearest = None
    e = event
    while e is not None:
        cls = classify(e.name)
        if cls in LABELS:
            return cls
        if nearest is None and cls is not None:
            nearest = cls
        e = e.cpu_parent
    return nearest or "other"


def class_times(events: Any, device_time: bool) -> dict[str, float]:
    """Self time (ms) of every event, summed per class of :data:`CLASSES`."""
    out = dict.fromkeys(CLASSES, 0.0)
    for e in events:
        t = e.self_device_time_total if device_time else e.self_cpu_time_total  # microseconds
        if t:
            out[_event_class(e)] += t / 1e3
    return out


def _batches(loader):
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader.iter_from(0)
        epoch += 1


def profile_scheme(cfg: Config, scheme: Scheme, steps: int, trace: Path, compile: bool = False) -> dict:
    """Profile ``steps`` training steps of a resolved config; write its Chrome trace to ``trace``."""
    check_data(cfg)
    dev = pick_device(cfg.train.device, 0)
    amp_dtype = torch.bfloat16 if (cfg.train.amp and dev.type == "cuda") else None
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, with_decoder=scheme.with_decoder, device=dev).train()
    if compile:
        compile_blocks(model)
    optimizer = build_optimizer(model, cfg.train, cfg.train.base_lr)
    loader = build_data_loader(cfg, "train", True, 0, 1, dev)
    if len(loader) == 0:
        raise ValueError("the training split has fewer clips than one batch")
    gen = torch.Generator(device=dev).manual_seed(cfg.train.seed)
    batches = _batches(loader)

    def step() -> None:
        with record_function("data_loading"):
            batch = next(batches)
        train_step(model, optimizer, scheme, batch["video"], batch["label"], gen, amp_dtype)

    step()  # warm-up: allocator, optimizer state, kernel selection (and compilation)
    if compile:
        step()  # a possible recompilation with dynamic shapes
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        wall = time.perf_counter() - t0
    prof.export_chrome_trace(str(trace))

    device_time = dev.type == "cuda"
    times = class_times(prof.events(), device_time)
    total = sum(times.values())
    attr = "self_device_time_total" if device_time else "self_cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda a: getattr(a, attr), reverse=True)
    top = [{"op": a.key, "ms": getattr(a, attr) / 1e3, "share": getattr(a, attr) / 1e3 / total,
            "calls": a.count} for a in ops[:TOP_K]]  # fmt: skip
    return {
        "mask": f"{cfg.mask.strategy}@{cfg.mask.ratio:g}",
        "head": cfg.model.head,
        "recon_weight": scheme.recon_weight,
        "compiled": compile,
        "decoder_keep": cfg.train.decoder_keep,
        "batch": cfg.data.batch_size,
        "steps": steps,
        "step_ms": wall / steps * 1e3,  # under the profiler (its overhead included)
        "time_basis": "device self time" if device_time else "CPU self time",
        "total_ms": total,
        "class_ms": times,
        "shares": {k: v / total for k, v in times.items()},
        "top_ops": top,
        "trace": trace.name,
    }


def markdown(res: dict) -> str:
    s, m = res["standard"], res["mar"]
    lines = [
        f"# marvit profile: {res['model']} {res['frames']}x{res['size']}, {res['device']}",
        "",
        f"{s['steps']} training steps per scheme after one warm-up step; {s['time_basis']}. "
        f"Standard: all tokens, {s['head']} head. MAR: {m['mask']}, {m['head']} head, "
        f"lambda {m['recon_weight']:g}, decoder_keep {m['decoder_keep']:g}.",
        "",
        "| | standard | MAR |",
        "|---|---:|---:|",
        f"| step (ms, under the profiler) | {s['step_ms']:.1f} | {m['step_ms']:.1f} |",
        f"| profiled self time (ms) | {s['total_ms']:.1f} | {m['total_ms']:.1f} |",
    ]
    for c in CLASSES:
        lines.append(f"| {c} | {100 * s['shares'][c]:.1f}% ({s['class_ms'][c]:.1f} ms) "
                     f"| {100 * m['shares'][c]:.1f}% ({m['class_ms'][c]:.1f} ms) |")  # fmt: skip
    lines += ["", "## Top operators by self time", "", "| # | standard | ms | % | MAR | ms | % |",
              "|---:|---|---:|---:|---|---:|---:|"]  # fmt: skip
    for i in range(max(len(s["top_ops"]), len(m["top_ops"]))):
        cells = []
        for r in (s, m):
            if i < len(r["top_ops"]):
                o = r["top_ops"][i]
                cells += [f"`{o['op'][:60]}`", f"{o['ms']:.1f}", f"{100 * o['share']:.1f}"]
            else:
                cells += ["", "", ""]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += ["", f"Chrome traces: `{s['trace']}`, `{m['trace']}`.", ""]
    return "\n".join(lines)


def main(cfg: Config, steps: int, out: str | None, compile: bool = False) -> int:
    if steps < 1:
        raise InputError(f"--steps={steps}: must be at least 1")
    out_dir = Path(out or "profile_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"model": cfg.model.name, "frames": cfg.model.num_frames, "size": cfg.model.img_size,
                           "device": str(pick_device(cfg.train.device, 0))}  # fmt: skip
    for scheme in ("standard", "mar"):
        print(f"profiling {scheme} ({steps} steps) ...", flush=True)
        c, sch = derive_scheme(cfg, scheme)
        res[scheme] = profile_scheme(c, sch, steps, out_dir / f"trace_{scheme}.json", compile=compile)
    atomic_write_json(out_dir / "profile.json", res, indent=2)
    md = markdown(res)
    atomic_write_bytes(out_dir / "profile.md", md.encode())
    print(md)
    print(f"wrote {out_dir / 'profile.json'}, {out_dir / 'profile.md'} and the traces")
    return 0
