"""``marvit demo --static``: standard, MAR and MAR + static-tubelet dropping on a static-background data set.

Not part of the default demo (it adds three fine-tuning runs). The data are ``marvit synth --background
static`` videos (textured objects moving with the class's motion over a still textured background), at the
default demo's sizes; the model, schedule, seeds and data path are the default demo's
(``marvit/configs/demo.yaml``), fine-tuned from the same random initialization. The three runs differ only in
the scheme: the standard scheme (every token), MAR (cell running 50%), and MAR with ``mask.drop_static=true``
(the cell running visible set minus the static tubelets, in training and evaluation). Reported: top-1 with
its standard error, GFLOPs per clip (counted on validation clips, as the kept tokens depend on the
content), training time per step, and the kept-token fractions (``marvit bench tokens``'s measure).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import torch

from marvit.config import Config

STATIC_DATA = {"classes": 6, "per_class": 148, "frames": 32, "size": 64, "seed": 0, "val_fraction": 100 / 148,
               "style": "textures", "background": "static"}  # fmt: skip
PHASES = ("standard", "mar", "mar_static")


def _phase_config(cfg: Config, phase: str) -> Config:
    c = copy.deepcopy(cfg)
    if phase == "mar_static":
        c.mask.drop_static = True
    return c


def _entry(res: dict, gflops: float, train_gflops: float, tokens: float) -> dict:
    from marvit.demo import std_error

    top1, n = res.get("top1"), res.get("num_videos")
    return {"top1": top1, "top1_se": std_error(top1, n), "val_videos": n, "gflops": gflops,
            "train_gflops": train_gflops, "visible_tokens": tokens, "steps": res["steps"],
            "train_time_s": res["train_time_s"], "ms_per_step": 1e3 * res["train_time_s"] / max(1, res["steps"])}  # fmt: skip


def run(out_dir: Path, quick: bool = False, epochs: int | None = None) -> dict:
    from marvit.bench.static import measured_flops
    from marvit.bench.tokens import measure
    from marvit.demo import _quick, _run_phase, _val_clips, demo_config, make_shards
    from marvit.model import build_model
    from marvit.pipeline.manifest import atomic_write_bytes, atomic_write_json, writable_dir
    from marvit.train.checkpoint import latest_checkpoint, load_checkpoint
    from marvit.train.scheme import resolve

    writable_dir(out_dir, "--out")
    cfg, data = demo_config(), dict(STATIC_DATA)
    if quick:
        cfg, data, _ = _quick(cfg, data)
    if epochs is not None:
        if epochs < 1:
            from marvit.errors import InputError

            raise InputError(f"--epochs={epochs}: must be >= 1")
        cfg.train.epochs = epochs
    t_start = time.perf_counter()
    print(f"[demo --static 1/3] static-background data set -> {out_dir / 'data'}")
    manifest = make_shards(out_dir, cfg, data, progress=False)

    runs = {}
    for i, phase in enumerate(PHASES):
        print(f"[demo --static 2/3] fine-tuning {i + 1}/3: {phase}")
        if (out_dir / phase).exists():
            shutil.rmtree(out_dir / phase)
        scheme = "standard" if phase == "standard" else "mar"
        runs[phase] = _run_phase(_phase_config(cfg, phase), scheme, out_dir / phase, None, cfg.train.epochs)

    print("[demo --static 3/3] FLOPs on validation clips, kept tokens, report")
    clips = _val_clips(cfg, 8 if quick else 64)
    results: dict = {"data": {**data, "class_names": manifest["classes"]}, "quick": quick, "epochs": cfg.train.epochs,
                     "chance_top1": 100 / cfg.model.num_classes}  # fmt: skip
    for phase in PHASES:
        c, scheme = resolve(_phase_config(cfg, phase) if phase != "standard" else _std(cfg))
        model = build_model(c.model, with_decoder=scheme.with_decoder)
        load_checkpoint(latest_checkpoint(out_dir / phase), model)
        inf = measured_flops(model, scheme, clips, train=False)
        tr = measured_flops(model, scheme, clips, train=True)
        results[phase] = _entry(runs[phase], inf["gflops"], tr["gflops"], tr["visible_tokens"])
    tokens = measure(clips, tuple(cfg.data.std), [cfg.mask.static_threshold], patch=cfg.model.patch_size,
                     tubelet=cfg.model.tubelet_size)["results"][0]  # fmt: skip
    results["kept_tokens"] = {k: tokens[k] for k in ("threshold", "static_alone", "mar_static")}
    m, s, st = results["mar"], results["mar_static"], results["standard"]
    results["mar_static_vs_mar"] = {
        "step_speedup": m["ms_per_step"] / s["ms_per_step"],
        "gflops_ratio": s["gflops"] / m["gflops"],
        "train_gflops_ratio": s["train_gflops"] / m["train_gflops"],
        "top1_diff": (s["top1"] or 0.0) - (m["top1"] or 0.0),
    }
    results["mar_vs_standard_step_speedup"] = st["ms_per_step"] / m["ms_per_step"]
    results["total_s"] = time.perf_counter() - t_start
    atomic_write_json(out_dir / "results.json", results, indent=2)
    atomic_write_bytes(out_dir / "report.md", _report(results).encode())
    return results


def _std(cfg: Config) -> Config:
    c = copy.deepcopy(cfg)
    c.train.scheme = "standard"
    return c


def _report(r: dict) -> str:
    def acc(e: dict) -> str:
        return "n/a" if e["top1"] is None else f"{e['top1']:.1f} ± {e['top1_se']:.1f}"

    rows = [
        "| scheme | top-1 (± s.e.) | GFLOPs/clip (infer) | GFLOPs/clip (train fwd) | visible tokens (train) | ms/step |",
        "|---|---|---|---|---|---|",
    ]
    for phase in PHASES:
        e = r[phase]
        rows.append(f"| {phase} | {acc(e)} | {e['gflops']:.3f} | {e['train_gflops']:.3f} | "
                    f"{e['visible_tokens']:.1f} | {e['ms_per_step']:.0f} |")  # fmt: skip
    v = r["mar_static_vs_mar"]
    k = r["kept_tokens"]
    return "\n".join([
        f"# marvit demo --static ({'quick' if r['quick'] else 'full'}, {r['epochs']} epochs per run)", "",
        f"{r['data']['classes']} classes of textured objects moving over a still background "
        f"({r['data']['size']}px); chance {r['chance_top1']:.1f}%.", "", *rows, "",
        f"MAR + static vs MAR: {v['step_speedup']:.2f}x per training step, GFLOPs x{v['gflops_ratio']:.2f} "
        f"(inference), top-1 {v['top1_diff']:+.1f} points. MAR vs standard: "
        f"{r['mar_vs_standard_step_speedup']:.2f}x per step.",
        f"Kept tokens at threshold {k['threshold']:g}: {k['static_alone']['mean']:.1%} of all tokens alone, "
        f"{k['mar_static']['mean']:.1%} of MAR's visible set (means over the validation clips measured).",
        f"Total {r['total_s']:.0f} s.", "",
    ])  # fmt: skip


def main(out: str = "demo_static_out", quick: bool = False, epochs: int | None = None) -> int:
    from marvit.demo import THREADS

    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    try:
        res = run(Path(out), quick, epochs)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    print(json.dumps({k: res[k] for k in (*PHASES, "mar_static_vs_mar")}, indent=2))
    print(f"demo --static done in {res['total_s']:.0f} s -> {Path(out) / 'report.md'}")
    return 0


def step_times(shards: str, iters: int = 10, warmup: int = 2, batch: int = 16) -> dict:
    """Training-step time of the demo's model (marvit/configs/demo.yaml) under the standard scheme, MAR and
    MAR + static dropping, interleaved on one batch of validation clips from ``shards`` (data loading
    excluded): per-iteration milliseconds, medians, and the per-iteration MAR / MAR + static ratios."""
    import statistics
    import time

    from marvit.bench.static import with_static
    from marvit.bench.step import train_step
    from marvit.demo import _val_clips, demo_config
    from marvit.model import build_model
    from marvit.pipeline.manifest import load_manifest
    from marvit.train.optim import build_optimizer
    from marvit.train.scheme import resolve

    cfg = demo_config()
    cfg.data.root = shards
    cfg.model.num_classes = len(load_manifest(shards)["classes"])
    video = _val_clips(cfg, batch)
    label = torch.arange(video.shape[0]) % cfg.model.num_classes
    jobs = {}
    for name in ("standard", "mar"):
        c = copy.deepcopy(cfg)
        c.train.scheme = name
        c, scheme = resolve(c)
        torch.manual_seed(0)
        model = build_model(c.model, with_decoder=scheme.with_decoder).train()
        jobs[name] = (model, build_optimizer(model, c.train, 1e-4), scheme)
    model, opt, scheme = jobs["mar"]
    jobs["mar_static"] = (model, opt, with_static(scheme))  # the same model, static tubelets dropped
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for i in range(warmup + iters):
        for name, (m, o, s) in jobs.items():
            t0 = time.perf_counter()
            train_step(m, o, s, video, label, gen, None)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    ratios = [a / b for a, b in zip(times["mar"], times["mar_static"])]
    return {"batch": video.shape[0], "threads": torch.get_num_threads(), "times_ms": times,
            "median_ms": {k: statistics.median(v) for k, v in times.items()},
            "mar_over_mar_static_per_iteration": ratios, "median_ratio": statistics.median(ratios)}  # fmt: skip


if __name__ == "__main__":
    import json
    import sys

    # python -m marvit.demo_static SHARDS [ITERS]: the demo model's step times, interleaved
    print(json.dumps(step_times(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10), indent=1))
