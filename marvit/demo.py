"""``marvit demo``: the whole system on the packaged demo config, with nothing downloaded.

1. make the synthetic motion data set (random dots, or smooth colour textures, moving with the class's motion;
   H.264 mp4)
   and convert it to WebDataset shards;
2. pretrain a small ViT with VideoMAE (tube masking, normalized-pixel reconstruction);
3. fine-tune with the standard scheme (all tokens, linear head) and with MAR (cell running 50%,
   bridging classifier, reconstruction loss), from the same initialization (the random one: see
   ``FINE_TUNE_FROM_PRETRAINED``), for the same steps, on the same data path;
4. evaluate both (multi-view), count their FLOPs, measure the data's redundancy and the decoders'
   masked-token losses, and write ``results.json``, ``report.md`` and PNGs: accuracy against GFLOPs with
   one-standard-error bars, loss curves, the masks of each strategy, and a masked clip's reconstruction.

The report states what was measured against the demo's targets, met or not. The run is deterministic on
one machine: fixed seeds (data, shard order, model, masks, augmentation), a loader without worker
processes, a fixed thread count and ``torch.use_deterministic_algorithms``. ``--quick`` shrinks everything
to seconds (the tests run it); the full run takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from importlib import resources
from pathlib import Path

import torch
import yaml

from marvit.config import Config, config_from_dict, load_config

# the synthetic data set (per class: 48 training and 100 validation videos) and the pretraining length.
# The random-dot style: the smooth-texture style (style="textures", more redundant) was not learnt by this
# small ViT in the time the demo has (both schemes at chance, see the README), the dots are.
DEMO_DATA = {"classes": 6, "per_class": 148, "frames": 32, "size": 64, "seed": 0, "val_fraction": 100 / 148,
             "style": "dots"}  # fmt: skip
PRETRAIN_EPOCHS = 20
# Where fine-tuning starts. VideoMAE pretraining on the random dots learns nothing in the demo's budget (its
# masked loss stays at 0.998: dots cannot be inferred from their neighbours) and AdamW's steps on that
# signal-free loss move every weight as far as its initial scale, so starting from it delayed both schemes
# (measured: MAR left its initial plateau after more than 300 of 612 steps from the pretrained weights, after
# about 120 from the random initialization; the standard scheme about 150 vs 200-420). Both schemes therefore
# fine-tune from the same random initialization (seed train.seed); the pretraining still runs, and its
# decoder is measured against the target. True starts both from the pretrained checkpoint.
FINE_TUNE_FROM_PRETRAINED = False
THREADS = 2  # torch intra-op threads: fixed, so two runs reduce in the same order
# what the demo is meant to show (issue 13); the report says which held
TARGETS = {"max_total_s": 600.0, "max_top1_drop": 1.0, "max_gflops_ratio": 0.55, "min_train_speedup": 1.3,
           "max_decoder_mse": 0.6, "max_top1_se": 1.5}  # fmt: skip


def demo_config_text() -> str:
    """The packaged demo config (marvit/configs/demo.yaml)."""
    return (resources.files("marvit") / "configs" / "demo.yaml").read_text()


def demo_config() -> Config:
    return config_from_dict(yaml.safe_load(demo_config_text()))


def _quick(cfg: Config, data: dict) -> tuple[Config, dict, int]:
    """Seconds instead of minutes: 3 classes, tiny clips, a couple of steps per phase."""
    data = {**data, "classes": 3, "per_class": 8, "frames": 16, "size": 32, "val_fraction": 0.5}
    cfg = copy.deepcopy(cfg)
    cfg.data.img_size = cfg.data.test_short_side = 32
    cfg.data.num_frames = 8
    cfg.model.num_classes = 3
    cfg.model.embed_dim, cfg.model.depth, cfg.model.bridge_dim, cfg.model.bridge_depth = 32, 1, 32, 1
    cfg.data.batch_size, cfg.data.sampling_rate = 4, 1
    cfg.train.epochs, cfg.train.log_interval = 1, 1
    return cfg.validate(), data, 1


def _run_phase(cfg: Config, scheme: str, out_dir: Path, pretrained: str | None, epochs: int) -> dict:
    from marvit.train.loop import train

    c = copy.deepcopy(cfg)
    c.train.scheme, c.train.out_dir, c.train.epochs = scheme, str(out_dir), epochs
    c.model.pretrained = pretrained
    t0 = time.perf_counter()
    rc = train(c)
    if rc:  # stopped by a signal after saving (exit 75): the demo stops with it
        raise SystemExit(rc)
    res = json.loads((out_dir / "results.json").read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def std_error(top1: float | None, n: int | None) -> float | None:
    """Standard error of a top-1 (in points) measured on ``n`` videos: sqrt(p (1 - p) / n)."""
    if top1 is None or not n:
        return None
    p = top1 / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def make_shards(out_dir: Path, cfg: Config, data: dict, progress: bool = True) -> dict:
    """The synthetic set ``data`` rendered to ``OUT/data`` and converted to ``OUT/shards``; ``cfg`` reads it.
    Returns the shards' manifest."""
    from marvit.pipeline.convert import convert_split
    from marvit.pipeline.manifest import load_manifest
    from marvit.pipeline.synth import make_synthetic

    make_synthetic(out_dir / "data", workers=THREADS, progress=progress, **data)
    shards = out_dir / "shards"
    for split in ("train", "val"):
        # the synthetic videos are already H.264 at the right size: copy them (no second lossy encode)
        convert_split(out_dir / "data", shards, "list", annotations=out_dir / "data" / f"{split}.csv", split=split,
                      short_side=data["size"], copy=True, workers=THREADS, seed=data["seed"])  # fmt: skip
    manifest = load_manifest(shards)
    cfg.data.root = str(shards)
    cfg.model.num_classes = len(manifest["classes"])
    return manifest


def main(out: str = "demo_out", quick: bool = False, epochs: int | None = None) -> int:
    if epochs is not None:
        from marvit.errors import InputError

        raise InputError("--epochs: only with --static (the default demo's schedule is fixed)")
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    try:
        return _main(Path(out), quick)
    finally:  # the demo also runs inside other processes (the tests): leave torch as it was
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _main(out_dir: Path, quick: bool) -> int:
    from marvit.bench.flops import count_flops
    from marvit.pipeline.manifest import atomic_write_bytes, atomic_write_json, writable_dir
    from marvit.train.checkpoint import latest_checkpoint

    writable_dir(out_dir, "--out")
    for phase in ("pretrain", "standard", "mar"):  # each demo is a fresh end-to-end run: its own runs go
        if (out_dir / phase).exists():
            print(f"[demo] removing the previous demo's run {out_dir / phase}")
            shutil.rmtree(out_dir / phase)
    cfg, data, pre_epochs = demo_config(), dict(DEMO_DATA), PRETRAIN_EPOCHS
    if quick:
        cfg, data, pre_epochs = _quick(cfg, data)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    # 1. data ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    print(f"[demo 1/5] synthetic data set ({data['style']}) -> {out_dir / 'data'}")
    manifest = make_shards(out_dir, cfg, data)
    timings["data_s"] = time.perf_counter() - t0

    # 2. VideoMAE pretraining --------------------------------------------------------------------
    print("[demo 2/5] VideoMAE pretraining")
    pre = _run_phase(cfg, "pretrain", out_dir / "pretrain", None, pre_epochs)
    timings["pretrain_s"] = pre["wall_s"]
    pretrained = str(latest_checkpoint(out_dir / "pretrain"))
    init = pretrained if FINE_TUNE_FROM_PRETRAINED else None

    # 3. fine-tuning: standard and MAR from the same weights ---------------------------------------
    print("[demo 3/5] fine-tuning: standard scheme")
    std = _run_phase(cfg, "standard", out_dir / "standard", init, cfg.train.epochs)
    timings["standard_s"] = std["wall_s"]
    print("[demo 4/5] fine-tuning: MAR")
    mar = _run_phase(cfg, "mar", out_dir / "mar", init, cfg.train.epochs)
    timings["mar_s"] = mar["wall_s"]

    # 4. FLOPs, redundancy and results ---------------------------------------------------------------
    print("[demo 5/5] report")
    t0 = time.perf_counter()
    std_model = load_config(out_dir / "standard" / "config.yaml").model  # the head each run resolved
    mar_cfg = load_config(out_dir / "mar" / "config.yaml")
    f_std = count_flops(std_model, "none", 0.0)
    f_mar = count_flops(mar_cfg.model, mar_cfg.mask.strategy, mar_cfg.mask.ratio, train=True)

    def entry(res: dict, flops: dict, train_gflops: float) -> dict:
        top1, n = res.get("top1"), res.get("num_videos")
        return {
            "top1": top1, "top1_se": std_error(top1, n), "top5": res.get("top5"), "val_videos": n,
            "gflops": flops["gflops"], "train_gflops": train_gflops, "train_time_s": res["train_time_s"],
            "phase_wall_s": res["wall_s"], "steps": res["steps"], "steps_per_s": res["steps"] / res["train_time_s"],
        }  # fmt: skip

    results = {
        "standard": entry(std, f_std, f_std["gflops"]),  # no decoder: training runs the inference graph
        "mar": entry(mar, f_mar, f_mar["train_gflops"]),
        "pretrain": {
            "train_time_s": pre["train_time_s"],
            "steps": pre["steps"],
            "mask": f"tube {cfg.train.pretrain_mask_ratio:.0%}",
            "fine_tuning_starts_from_it": FINE_TUNE_FROM_PRETRAINED,
        },  # fmt: skip
        "mask": f"{cfg.mask.strategy} {cfg.mask.ratio:.0%}",
        "chance_top1": 100 / cfg.model.num_classes,
        "data": {
            **data,
            "class_names": manifest["classes"],
            "train_videos": manifest["splits"]["train"]["num_samples"],
            "val_videos": manifest["splits"]["val"]["num_samples"],
        },  # fmt: skip
        "seeds": {
            "data": data["seed"],
            "shard_order": data["seed"],
            "train": cfg.train.seed,
            "threads": THREADS,
            "deterministic_algorithms": True,
            "backend": cfg.data.backend,
        },  # fmt: skip
        "quick": quick,
    }
    results["mar_vs_standard"] = {
        "gflops_ratio": f_mar["gflops"] / f_std["gflops"],
        "train_speedup": std["train_time_s"] / mar["train_time_s"],
        "top1_diff": (mar.get("top1") or 0.0) - (std.get("top1") or 0.0),
    }
    results["redundancy"] = _redundancy(out_dir, cfg, mar_cfg, pretrained)
    timings["report_s"] = time.perf_counter() - t0
    plots = _plots(out_dir, cfg, results, run_dir=out_dir / "mar")
    results["plots"] = plots
    timings["total_s"] = time.perf_counter() - t_start
    results["timings"] = timings
    results["targets"] = _targets(results)
    atomic_write_json(out_dir / "results.json", results, indent=2)
    atomic_write_bytes(out_dir / "report.md", _report(results, cfg).encode())
    print(json.dumps({k: results[k] for k in ("standard", "mar", "mar_vs_standard", "targets")}, indent=2))
    print(f"demo done in {timings['total_s']:.0f} s -> {out_dir / 'report.md'}")
    return 0


def _val_clips(cfg: Config, limit: int) -> torch.Tensor:
    """The first view of up to ``limit`` validation videos, normalized: (B, 3, T, S, S)."""
    from marvit.pipeline import build_loader

    clips, n = [], 0
    for batch in build_loader(cfg.data, "val", train=False):
        first = batch["view"] == 0
        clips.append(batch["video"][first])
        n += int(first.sum())
        if n >= limit:
            break
    return torch.cat(clips)[:limit]


def _redundancy(out_dir: Path, cfg: Config, mar_cfg: Config, pretrained: str, limit: int = 192) -> dict:
    """Interpolation MSE of the validation clips (and of the old random-dot style), and the masked-token
    losses of the pretrained and the MAR decoders, all on normalized pixels under cell running's
    evaluation mask (the pretrained decoder also under its own tube mask)."""
    from marvit.bench.redundancy import decoder_mse, eval_mask, interpolation_mse, rendered_clips
    from marvit.model import build_model
    from marvit.train.checkpoint import latest_checkpoint, load_checkpoint

    video = _val_clips(cfg, limit)
    grid, t, p = cfg.model.grid, cfg.model.tubelet_size, cfg.model.patch_size
    cell = eval_mask(grid, video.shape[0], cfg.mask.ratio)
    tube = eval_mask(grid, video.shape[0], cfg.train.pretrain_mask_ratio, "tube")
    pre_cfg = load_config(out_dir / "pretrain" / "config.yaml")
    pre_model = build_model(pre_cfg.model, with_decoder=True)
    load_checkpoint(pretrained, pre_model)
    mar_model = build_model(mar_cfg.model, with_decoder=True)
    load_checkpoint(latest_checkpoint(out_dir / "mar"), mar_model)
    dots = rendered_clips("dots", classes=cfg.model.num_classes, per_class=4, frames=cfg.data.num_frames,
                          size=cfg.data.img_size, stride=cfg.data.sampling_rate)  # fmt: skip
    return {
        "clips": int(video.shape[0]),
        "mask": f"cell_running {cfg.mask.ratio:.0%} (evaluation mask)",
        "interpolation_mse": interpolation_mse(video, cell, t, p),
        "interpolation_mse_dots": interpolation_mse(
            dots, eval_mask(grid, dots.shape[0], cfg.mask.ratio), t, p
        ),
        "pretrained_decoder_mse": decoder_mse(pre_model, video, cell),
        "pretrained_decoder_mse_tube": decoder_mse(pre_model, video, tube),
        "mar_decoder_mse": decoder_mse(mar_model, video, cell),
    }


def _targets(results: dict) -> dict:
    """Each target of the demo with the value measured and whether it held."""
    s, m, c, r = results["standard"], results["mar"], results["mar_vs_standard"], results["redundancy"]
    ses = [x for x in (s["top1_se"], m["top1_se"]) if x is not None]
    rows = {
        "total_s": (results["timings"]["total_s"], "<=", TARGETS["max_total_s"]),
        "top1_drop": (-c["top1_diff"], "<=", TARGETS["max_top1_drop"]),
        "gflops_ratio": (c["gflops_ratio"], "<=", TARGETS["max_gflops_ratio"]),
        "train_speedup": (c["train_speedup"], ">=", TARGETS["min_train_speedup"]),
        "pretrained_decoder_mse": (r["pretrained_decoder_mse"], "<=", TARGETS["max_decoder_mse"]),
        "top1_se": (max(ses) if ses else float("nan"), "<=", TARGETS["max_top1_se"]),
    }
    return {k: {"value": v, "target": f"{op} {t:g}", "met": bool(v <= t if op == "<=" else v >= t)}
            for k, (v, op, t) in rows.items()}  # fmt: skip


def _plots(out_dir: Path, cfg: Config, results: dict, run_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from marvit.bench.visualize import load_clip, plot_masks, plot_reconstruction, reconstruct, save_figure
    from marvit.model import build_model
    from marvit.train.checkpoint import latest_checkpoint, load_checkpoint

    plots = {}
    chance = results["chance_top1"]
    # accuracy against GFLOPs, one standard error either side, the y axis from chance
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for name, marker, label in (
        ("standard", "o", "standard (all tokens)"),
        ("mar", "s", f"MAR ({results['mask']})"),
    ):
        r = results[name]
        ax.errorbar(r["gflops"], r["top1"] or 0.0, yerr=r["top1_se"] or 0.0, fmt=marker, ms=7, capsize=4,
                    label=f"{label}: {r['top1'] or 0:.1f} ± {r['top1_se'] or 0:.1f}")  # fmt: skip
    ax.axhline(chance, color="grey", ls=":", lw=1)
    ax.text(
        0.02, chance, " chance", color="grey", va="bottom", fontsize=8, transform=ax.get_yaxis_transform()
    )
    ax.set_ylim(chance, 100)
    ax.set_xlim(0, 1.15 * max(results["standard"]["gflops"], results["mar"]["gflops"]))
    ax.set_xlabel("inference GFLOPs per view")
    ax.set_ylabel(f"top-1 (%), ± 1 s.e., {results['standard']['val_videos']} videos")
    ax.set_title("accuracy vs compute")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, out_dir / "accuracy_vs_gflops.png")
    plots["accuracy_vs_gflops"] = "accuracy_vs_gflops.png"
    # loss curves
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name in ("pretrain", "standard", "mar"):
        recs = [r for r in _metrics(out_dir / name) if "loss" in r]
        key = "mse" if name == "pretrain" else "ce"
        axes[0 if name == "pretrain" else 1].plot(
            [r["step"] for r in recs], [r[key] for r in recs], label=name
        )
    mar_mse = [r for r in _metrics(out_dir / "mar") if "loss" in r]
    axes[0].plot([r["step"] for r in mar_mse], [r["mse"] for r in mar_mse], label="MAR (its decoder)")
    axes[0].set_title("masked-token MSE (normalized pixels)")
    axes[1].set_title("fine-tuning (cross-entropy)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    save_figure(fig, out_dir / "loss_curves.png")
    plots["loss_curves"] = "loss_curves.png"
    plot_masks(out_dir / "masks.png", grid=(8, 14, 14), ratio=cfg.mask.ratio)
    plots["masks"] = "masks.png"
    # masked input and reconstruction from the MAR model's decoder, on a validation video
    run_cfg = load_config(run_dir / "config.yaml")
    model = build_model(run_cfg.model, with_decoder=True).eval()
    load_checkpoint(latest_checkpoint(run_dir), model)
    first_val = (out_dir / "data" / "val.csv").read_text().split()[0]
    clip = load_clip(str(out_dir / "data" / first_val), run_cfg)
    images = reconstruct(model, clip, cfg.mask.ratio, cfg.data.mean, cfg.data.std)
    plot_reconstruction(out_dir / "reconstruction.png", images)
    plots["reconstruction"] = "reconstruction.png"
    return plots


def _report(results: dict, cfg: Config) -> str:
    s, m, c, r, d = (results[k] for k in ("standard", "mar", "mar_vs_standard", "redundancy", "data"))
    tm, tg = results["timings"], results["targets"]

    def pct(v):
        return "n/a" if v is None else f"{v:.1f}"

    def acc(x):
        return f"{pct(x['top1'])} ± {pct(x['top1_se'])}"

    lines = [
        "# marvit demo report",
        "",
        f"Synthetic motion data set ({d['style']}): {len(d['class_names'])} classes ({', '.join(d['class_names'])}), {d['train_videos']} training and "
        f"{d['val_videos']} validation videos of {d['frames']} frames at {d['size']}x{d['size']} ("
        + ("random dots" if d["style"] == "dots" else "smooth colour textures")
        + " moving with the class's motion; one frame does not tell the class). Model "
        f"{cfg.model.embed_dim}-wide, {cfg.model.depth} blocks, {cfg.data.num_frames} frames at stride "
        f"{cfg.data.sampling_rate}, {cfg.model.img_size}px ({cfg.model.num_tokens} tokens). Both schemes fine-tune "
        + (
            "the same VideoMAE-pretrained weights"
            if results["pretrain"]["fine_tuning_starts_from_it"]
            else "from the same random initialization (VideoMAE pretraining learns nothing on random dots, see below, "
            "and starting from it delayed both schemes)"
        )
        + " for the same steps and batch on the same data path "
        f"(data.backend={cfg.data.backend}).",
        "",
        "| scheme | top-1 (%) ± s.e. | top-5 (%) | inference GFLOPs/view | train GFLOPs/clip (fwd) | "
        "train time (s) | steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, x in (("standard (all tokens, linear head)", s), (f"MAR ({results['mask']}, bridging)", m)):
        lines.append(
            f"| {name} | {acc(x)} | {pct(x['top5'])} | {x['gflops']:.4f} | {x['train_gflops']:.4f} | "
            f"{x['train_time_s']:.1f} | {x['steps_per_s']:.2f} |"
        )
    lines += [
        "",
        f"Chance is {results['chance_top1']:.1f}% top-1. Standard errors are sqrt(p(1-p)/n) over the "
        f"{s['val_videos']} validation videos (each scored on {cfg.data.test_clips}x{cfg.data.test_crops} views).",
        f"MAR uses {c['gflops_ratio']:.1%} of the standard scheme's inference FLOPs; its fine-tuning ran "
        f"{c['train_speedup']:.2f}x the standard scheme's speed; top-1 difference (MAR - standard): "
        f"{c['top1_diff']:+.1f} points.",
        "",
        "## Redundancy and reconstruction (normalized pixels; 1.0 = predicting each tubelet's mean)",
        "",
        f"On {r['clips']} validation clips, masked with {r['mask']}:",
        "",
        "| measure | value |",
        "|---|---|",
        f"| interpolation from the nearest visible tubelets in time, this data set | {r['interpolation_mse']:.3f} |",
        f"| the same, on the random-dot style rendered without the codec | {r['interpolation_mse_dots']:.3f} |",
        f"| pretrained decoder (VideoMAE), this mask | {r['pretrained_decoder_mse']:.3f} |",
        f"| pretrained decoder, its own {results['pretrain']['mask']} mask | {r['pretrained_decoder_mse_tube']:.3f} |",
        f"| MAR's decoder after fine-tuning, this mask | {r['mar_decoder_mse']:.3f} |",
        "",
        "## Targets",
        "",
        "| target | measured | wanted | met |",
        "|---|---|---|---|",
    ]
    for key, t in tg.items():
        lines.append(f"| {key} | {t['value']:.3f} | {t['target']} | {'yes' if t['met'] else 'NO'} |")
    seeds = results["seeds"]
    lines += [
        "",
        "Time per phase (s): "
        + ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in tm.items())
        + ". Fine-tuning time is the training loop's own clock (steps, the final evaluation and saving).",
        "",
        f"Seeds: data set {seeds['data']}, shard order {seeds['shard_order']}, training {seeds['train']} (model "
        f"initialization, masks, augmentation draws, dropout); {seeds['threads']} torch threads, "
        "deterministic algorithms on, no loader worker processes: the same command on the same machine gives "
        "the same numbers.",
        "",
        "These are measurements of this run on this machine: a tiny model on a small synthetic set, where "
        "fixed per-step costs weigh more than at ViT-B scale; `marvit bench step` measures the speedup at "
        "full size.",
        "",
        "![accuracy vs GFLOPs](accuracy_vs_gflops.png)",
        "![loss curves](loss_curves.png)",
        "![masks](masks.png)",
        "![reconstruction](reconstruction.png)",
        "",
    ]
    return "\n".join(lines)
