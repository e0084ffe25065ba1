"""`marvit bench step`: one training step and one inference forward, standard scheme vs MAR, side by side.

Both schemes are built in one process and timed interleaved (standard, MAR, standard, MAR, ...) so that
whatever else the machine does falls on both alike; warm-up iterations are dropped and the median with
its spread (min, max, quartiles) is reported. What each scheme runs is what ``marvit train`` runs, step for step: the scheme comes from
``marvit.train.scheme.resolve`` and each micro-step is ``marvit.train.step.forward_loss``:
  standard - every token, VideoMAE's fine-tuning head, no decoder;
  MAR      - the cell running training mask at ``--mask-ratio``, the bridging classifier and the
             reconstruction branch (lambda = the config default, 0.1) over the masked tokens, or a
             ``--decoder-keep`` fraction of them.
A training step is forward, backward and the AdamW step of ``build_optimizer``; inference is a no_grad
forward in eval mode (MAR under its evaluation mask). bf16 autocast on CUDA, fp32 on a CPU; explicit device
syncs around every timed region on CUDA.

FLOPs come from :func:`marvit.bench.flops.count_flops` (multiply-adds, as fvcore counts): inference is the
forward count, a training step is 3x the forward count including the decoder (backward ~ 2x forward), said
so in the JSON under ``flops``. Activation memory is measured in the first step of each scheme: the bytes
of the tensors autograd saves for backward (``saved_tensors_hooks``, unique storages, parameters and buffers
excluded) everywhere, and on CUDA also the peak allocated memory during the forward above what was
allocated before it; ``activation_mb`` reports the saved-tensor count on a CPU and the peak delta on CUDA.

``--sweep`` times MAR at mask ratios 0, 0.25, 0.5 and 0.75 (0 = the MAR architecture with every token and
no reconstruction, as there is nothing masked) against the one standard model, and draws speedup and
activation memory against the ratio. ``--compile`` adds, in the same run, every job with its blocks
compiled (``train.compile``): eager and compiled ratios side by side, and each scheme's compiled-vs-eager
speedup. ``--variants --shards DIR`` adds MAR + static-tubelet dropping (``mask.drop_static`` at
``--static-threshold``) on the same MAR model, and times every job on a batch of real clips from DIR (the
kept-token count depends on the content); its FLOPs are counted on that batch (``marvit.bench.static``).
Nothing here asserts a time.
"""

from __future__ import annotations

import copy
import json as jsonlib
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from marvit.bench.flops import count_flops
from marvit.bench.timing import spread, timed_ms
from marvit.config import Config, DataConfig, MaskConfig, ModelConfig, TrainConfig
from marvit.errors import InputError
from marvit.model import MARModel, build_model
from marvit.pipeline.manifest import atomic_write_bytes, atomic_write_json
from marvit.train.optim import build_optimizer
from marvit.train.scheme import Scheme, resolve
from marvit.train.setup import compile_blocks, pick_device
from marvit.train.step import forward_loss

TRAIN_FLOP_FACTOR = 3  # forward + backward (~2x forward) per training step
SWEEP_RATIOS = (0.0, 0.25, 0.5, 0.75)


# --------------------------------------------------------------------------------------------------------
# activation memory
# --------------------------------------------------------------------------------------------------------
class SavedTensorMeter:
    """Bytes autograd saves for backward inside the ``with`` block, each storage counted once.

    A tensor saved twice, or two views of one storage, count once (the whole storage: that is what stays
    alive). Storages of ``exclude`` (the parameters and buffers) are not activations and are skipped.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._exclude = {_storage_key(t) for t in exclude}
        self._seen: dict[tuple, int] = {}
        self._ctx: Any = None

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self._exclude and key not in self._seen:
            self._seen[key] = _storage_bytes(t)
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def _storage_key(t: torch.Tensor) -> tuple:
    try:
        return (t.device.type, t.device.index, t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # a tensor without a plain storage: count it by identity
        return ("id", id(t))


def _storage_bytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


class ActivationMeter:
    """Saved-tensor bytes of a forward, and on CUDA the peak allocated memory above the start of it."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.saved = SavedTensorMeter([*model.parameters(), *model.buffers()])
        self.result: dict[str, float] = {}

    def __enter__(self) -> ActivationMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        self.saved.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.saved.__exit__(*exc)
        self.result["saved_tensor_mb"] = self.saved.bytes / 2**20
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
            self.result["peak_delta_mb"] = peak / 2**20


# --------------------------------------------------------------------------------------------------------
# the two schemes, as the training loop runs them
# --------------------------------------------------------------------------------------------------------
def resolved_scheme(
    scheme: str,
    preset: str,
    frames: int,
    size: int,
    batch: int,
    ratio: float = 0.5,
    decoder_keep: float = 1.0,
) -> tuple[Config, Scheme]:
    """The resolved config of ``scheme`` ("standard" or "mar") and its Scheme; ratio 0 means no mask at all.

    Everything but the sizes is the config's default (lambda = ``TrainConfig().recon_weight``)."""
    cfg = Config(
        model=ModelConfig.from_name(preset, head="bridging"),
        mask=MaskConfig(strategy="cell_running" if ratio > 0 else "none", ratio=ratio),
        data=DataConfig(num_frames=frames, img_size=size, batch_size=batch, mixup=0.0, cutmix=0.0),
        train=TrainConfig(scheme=scheme, decoder_keep=decoder_keep),
    )
    return resolve(cfg)


def scheme_config(*args: Any, **kwargs: Any) -> Config:
    """The resolved config alone (see :func:`resolved_scheme`)."""
    return resolved_scheme(*args, **kwargs)[0]


def train_step(
    model: MARModel, optimizer: torch.optim.Optimizer, scheme: Scheme, video: torch.Tensor,
    label: torch.Tensor, generator: torch.Generator, amp_dtype: torch.dtype | None, memory: dict | None = None,
) -> None:  # fmt: skip
    """The loop's micro-step (``forward_loss``), backward, optimizer step. With ``memory`` (a dict), the
    forward's activations are measured."""
    if memory is None:
        losses = forward_loss(model, scheme, video, label, generator, amp_dtype)
    else:
        with ActivationMeter(model, video.device) as meter:
            losses = forward_loss(model, scheme, video, label, generator, amp_dtype)
        memory.update(meter.result)
    losses["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def infer_step(
    model: MARModel, scheme: Scheme, video: torch.Tensor, amp_dtype: torch.dtype | None
) -> torch.Tensor:
    """No-grad forward in eval mode; MAR sees the evaluation mask at its ratio. Returns logits (B, classes)."""
    vis = scheme.eval_indices(video.shape[0], video.device)
    vis = scheme.static_dropped(video, vis, train=False)  # packed when the scheme drops static tubelets
    with torch.autocast(video.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return model(video, vis)["logits"]


# --------------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------------


def _compare(std_ms: list[float], mar_ms: list[float], std_gf: float, mar_gf: float, batch: int) -> dict:
    s, m = statistics.median(std_ms), statistics.median(mar_ms)
    return {
        "standard_ms": s,
        "mar_ms": m,
        "speedup": s / m,
        "standard_clips_per_s": batch / (s / 1e3),
        "mar_clips_per_s": batch / (m / 1e3),
        "standard_gflops": std_gf,  # per clip
        "mar_gflops": mar_gf,
        "flops_ratio": mar_gf / std_gf,
        "standard_gflops_per_s": std_gf * batch / (s / 1e3),
        "mar_gflops_per_s": mar_gf * batch / (m / 1e3),
        "standard_spread_ms": spread(std_ms),
        "mar_spread_ms": spread(mar_ms),
        "standard_times_ms": std_ms,
        "mar_times_ms": mar_ms,
    }


@dataclass
class _Job:
    """One timed thing: a scheme's model in one mode (eager or compiled) and one MAR setting."""

    name: str
    scheme_name: str  # "standard" or "mar"
    model: MARModel
    optimizer: torch.optim.Optimizer
    cfg: Config
    scheme: Scheme
    checkpoint_heads: bool
    compiled: bool


@dataclass
class StepOptions:
    """What ``marvit bench step`` times: one field per option (the command's flags, by the same names), so
    a new option is one field here and one flag in cli.py.

    ``variants``: MAR also with ``decoder_keep`` (0.5 if left at 1.0), with checkpointed heads, and both,
    against one standard run; ``sweep``: MAR at each of ``SWEEP_RATIOS``; ``compile``: every job also with
    its transformer blocks compiled (``train.compile``), on copies of the same weights, in the same
    interleaved loop (rows then come in eager and compiled pairs; compilation happens in the warm-up
    iterations, at least 2, and its time is reported apart)."""

    preset: str = "vit_b"
    standard_preset: str | None = None  # the standard scheme's preset (default: ``preset``)
    frames: int = 16
    size: int = 224
    batch: int = 2
    mask_ratio: float = 0.5
    decoder_keep: float = 1.0
    iters: int = 5
    warmup: int = 1
    device: str = "auto"
    checkpoint_heads: bool = False
    variants: bool = False
    sweep: bool = False
    compile: bool = False
    progress: bool = True
    shards: str | None = None  # time on a batch of real clips from it; with variants, MAR + static joins
    static_threshold: float = 0.1  # mask.static_threshold of the MAR + static job

    def ratios(self) -> list[float]:
        return list(SWEEP_RATIOS) if self.sweep else [self.mask_ratio]

    def pairs(self) -> list[tuple[float, bool]]:
        """(decoder_keep, checkpoint_heads) of each MAR job."""
        if not self.variants:
            return [(self.decoder_keep, self.checkpoint_heads)]
        keep = self.decoder_keep if self.decoder_keep < 1.0 else 0.5
        return [(1.0, False), (keep, False), (1.0, True), (keep, True)]


def run(opts: StepOptions) -> dict:
    """Time the standard scheme against MAR at each ratio (one MAR model serves every ratio), every MAR job
    interleaved with the others."""
    preset, frames, size, batch = opts.preset, opts.frames, opts.size, opts.batch
    iters, warmup, compile = opts.iters, opts.warmup, opts.compile
    ratios, variants = opts.ratios(), opts.pairs()
    video, static = None, None
    if (
        opts.shards is not None
    ):  # real clips: MAR + static dropping joins the variants (its tokens need content)
        from marvit.bench.tokens import load_clips

        video = load_clips(opts.shards, "val", frames, size, 4, batch, "pyav")[0]  # (B, C, T, H, W)
        batch = video.shape[0]
        static = opts.static_threshold if opts.variants else None
    if iters < 1 or warmup < 0:
        raise InputError(f"--iters={iters}, --warmup={warmup}: need iters >= 1 and warmup >= 0")
    if compile:
        warmup = max(warmup, 2)  # the first iterations compile (and may recompile once with dynamic shapes)
    dev = pick_device(opts.device, 0)
    amp_dtype = torch.bfloat16 if dev.type == "cuda" else None  # bf16 can crash on this CPU: fp32 there
    std_preset = opts.standard_preset or preset
    torch.manual_seed(0)
    std_cfg, std_scheme = resolved_scheme("standard", std_preset, frames, size, batch)
    # one MAR job per (ratio, decoder_keep, checkpoint_heads)
    mar_cfgs = [(*resolved_scheme("mar", preset, frames, size, batch, r, keep), ckpt)
                for r in ratios for keep, ckpt in variants]  # fmt: skip
    gen = torch.Generator(device=dev).manual_seed(0)
    video = (torch.randn(batch, 3, frames, size, size) if video is None else video).to(dev)  # (B, C, T, H, W)
    label = torch.randint(0, std_cfg.model.num_classes, (batch,), device=dev)

    std_model = build_model(std_cfg.model, with_decoder=False, device=dev).train()
    mar_model = build_model(mar_cfgs[0][0].model, with_decoder=True, device=dev).train()
    jobs: list[_Job] = []  # in the order they are interleaved: standard first, then each MAR job
    for compiled in [False, True] if compile else [False]:
        s_model, m_model = std_model, mar_model
        if compiled:  # the same weights, blocks compiled in place
            s_model, m_model = copy.deepcopy(std_model), copy.deepcopy(mar_model)
            compile_blocks(s_model)
            compile_blocks(m_model)
        s_opt = build_optimizer(s_model, std_cfg.train, 1e-4)
        m_opt = build_optimizer(m_model, mar_cfgs[0][0].train, 1e-4)  # every MAR job shares the settings
        tag = "/compiled" if compiled else ""
        jobs.append(_Job(f"standard{tag}", "standard", s_model, s_opt, std_cfg, std_scheme, False,
                         compiled))  # fmt: skip
        for c, sch, ck in mar_cfgs:
            name = f"mar@{c.mask.ratio:g}/keep{c.train.decoder_keep:g}/ckpt{int(ck)}{tag}"
            jobs.append(_Job(name, "mar", m_model, m_opt, c, sch, ck, compiled))
        if static is not None:  # the same MAR model, its visible set minus the static tubelets
            from marvit.bench.static import with_static

            c, sch, ck = mar_cfgs[0]
            name = (
                f"mar+static@{c.mask.ratio:g}/thr{static:g}/keep{c.train.decoder_keep:g}/ckpt{int(ck)}{tag}"
            )
            jobs.append(_Job(name, "mar", m_model, m_opt, c, with_static(sch, static), ck, compiled))
    times = {j.name: {"train": [], "infer": []} for j in jobs}
    memory: dict[str, dict] = {j.name: {} for j in jobs}
    first_ms: dict[str, float] = {}  # the first training step of each job (compilation included)

    total = warmup + iters
    bar = tqdm(
        range(total), desc=f"bench step ({len(jobs)} jobs)", disable=not opts.progress, file=sys.stderr
    )
    for i in bar:
        for j in jobs:
            j.model.train()
            j.model.set_grad_checkpointing(j.checkpoint_heads)  # as train.checkpoint_heads does
            # activations are measured in the first step of each eager job (hooks and compiled graphs
            # do not mix; a compiled block saves what its eager twin saves or less)
            mem = memory[j.name] if i == 0 and not j.compiled else None
            ms = timed_ms(lambda: train_step(j.model, j.optimizer, j.scheme, video, label, gen, amp_dtype, mem),  # noqa: B023
                          dev)  # fmt: skip
            first_ms.setdefault(j.name, ms)
            if i >= warmup:
                times[j.name]["train"].append(ms)
        for j in jobs:
            j.model.eval()
            ms = timed_ms(lambda: infer_step(j.model, j.scheme, video, amp_dtype), dev)  # noqa: B023
            if i >= warmup:
                times[j.name]["infer"].append(ms)
        bar.set_postfix({"it": "warm-up" if i < warmup else "timed"})
    bar.close()

    std_fwd = count_flops(std_cfg.model, "none", 0.0)["gflops"]
    act_key = "peak_delta_mb" if dev.type == "cuda" else "saved_tensor_mb"
    rows = []
    for j in jobs:
        if j.scheme_name == "standard":
            continue
        cfg, checkpointed = j.cfg, j.checkpoint_heads
        std_name = "standard/compiled" if j.compiled else "standard"
        eager_name = j.name.removesuffix("/compiled")
        r, keep = cfg.mask.ratio, cfg.train.decoder_keep
        fl = count_flops(cfg.model, "cell_running", r, train=True, decoder_keep=keep)
        if j.scheme.mask.drop_static:  # content-dependent: counted on the batch (marvit.bench.static)
            from marvit.bench.static import measured_flops

            tr, inf = (
                measured_flops(j.model, j.scheme, video, True),
                measured_flops(j.model, j.scheme, video, False),
            )
            fl.update(visible_tokens=tr["visible_tokens"], train_gflops=tr["gflops"], gflops=inf["gflops"],
                      infer_visible_tokens=inf["visible_tokens"])  # fmt: skip
        n_dec = fl["decoder_tokens"] if j.scheme.with_decoder else 0  # reconstructed tokens
        std_mem, mar_mem = dict(memory["standard"]), dict(memory[eager_name])
        # checkpointed blocks keep their inputs through checkpoint's own saved-tensor hooks, which hide
        # them from ours: add them (B x tokens x width x 4 bytes per block) to the saved-tensor count
        kept_mb = 0.0
        if checkpointed:
            m, n_vis = cfg.model, fl["visible_tokens"]
            kept = m.bridge_depth * n_vis * m.bridge_dim + m.decoder_depth * (n_vis + n_dec) * m.decoder_dim
            kept_mb = batch * kept * 4 / 2**20
            mar_mem["saved_tensor_mb"] += kept_mb
        row = {
            "static_threshold": j.scheme.mask.static_threshold if j.scheme.mask.drop_static else None,
            "mask_ratio": r,
            "decoder_keep": keep,
            "checkpoint_heads": checkpointed,
            "compiled": j.compiled,
            "tokens": cfg.model.num_tokens,
            "visible_tokens": fl["visible_tokens"],
            "decoder_tokens": n_dec,
            "train": _compare(times[std_name]["train"], times[j.name]["train"], TRAIN_FLOP_FACTOR * std_fwd,
                              TRAIN_FLOP_FACTOR * fl["train_gflops"], batch),
            "infer": _compare(times[std_name]["infer"], times[j.name]["infer"], std_fwd, fl["gflops"], batch),
            "activation_mb": {
                "standard": std_mem[act_key], "mar": mar_mem[act_key], "ratio": mar_mem[act_key] / std_mem[act_key],
                "method": "cuda max_memory_allocated delta over the forward" if dev.type == "cuda"
                else "saved_tensors_hooks: unique storages saved for backward, parameters/buffers excluded",
                "standard_saved_tensor_mb": std_mem["saved_tensor_mb"], "mar_saved_tensor_mb": mar_mem["saved_tensor_mb"],
                "mar_checkpointed_inputs_mb": kept_mb,
                "measured_on": "the eager model",
            },
        }  # fmt: skip
        if j.compiled:  # compiled against eager, per scheme, and the compilation's cost
            e = statistics.median
            row["compile"] = {
                "standard_train_speedup": e(times["standard"]["train"]) / e(times[std_name]["train"]),
                "mar_train_speedup": e(times[eager_name]["train"]) / e(times[j.name]["train"]),
                "standard_infer_speedup": e(times["standard"]["infer"]) / e(times[std_name]["infer"]),
                "mar_infer_speedup": e(times[eager_name]["infer"]) / e(times[j.name]["infer"]),
                "standard_first_step_ms": first_ms[std_name],
                "mar_first_step_ms": first_ms[j.name],
            }
        rows.append(row)
    return {
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "dtype": "bf16 autocast" if amp_dtype is not None else "fp32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "preset": preset,
        "standard_preset": std_preset,
        "frames": frames,
        "size": size,
        "batch": batch,
        "decoder_keep": sorted({k for k, _ in variants}),
        "checkpoint_heads": sorted({c for _, c in variants}),
        "recon_weight": TrainConfig().recon_weight,
        "compile": compile,
        "iters": iters,
        "warmup": warmup,
        "flops": {
            "unit": "GFLOPs per clip, one multiply-add = one FLOP (fvcore), from marvit.bench.flops.count_flops",
            "train": f"{TRAIN_FLOP_FACTOR} x forward (encoder + head + decoder), backward taken as 2 x forward",
            "infer": "forward (encoder + head), evaluation mask for MAR",
            "standard_forward_gflops": std_fwd,
        },
        "results": rows,
    }


# --------------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------------
def _table(res: dict) -> str:
    head = (f"{res['preset']} MAR vs {res['standard_preset']} standard, {res['frames']}x{res['size']}, "
            f"batch {res['batch']}, {res['device']} {res['dtype']}, "
            f"median of {res['iters']} (warm-up {res['warmup']})")  # fmt: skip
    cols = ["ratio", "dec keep", "ckpt heads", "compiled", "vis", "dec", "train std ms", "train MAR ms", "train x", "infer std ms", "infer MAR ms",
            "infer x", "GFLOP std/MAR (train)", "act std MB", "act MAR MB", "act MAR/std"]  # fmt: skip
    lines = [head, " | ".join(cols), " | ".join("-" * len(c) for c in cols)]
    for r in res["results"]:
        tr, inf, act = r["train"], r["infer"], r["activation_mb"]
        static = f"+static@{r['static_threshold']:g}" if r.get("static_threshold") is not None else ""
        vals = [f"{r['mask_ratio']:g}{static}", f"{r['decoder_keep']:g}", "yes" if r["checkpoint_heads"] else "no",
                "yes" if r.get("compiled") else "no",
                f"{r['visible_tokens']:.4g}", str(r["decoder_tokens"]),
                f"{tr['standard_ms']:.0f}", f"{tr['mar_ms']:.0f}", f"{tr['speedup']:.2f}",
                f"{inf['standard_ms']:.0f}", f"{inf['mar_ms']:.0f}", f"{inf['speedup']:.2f}",
                f"{tr['standard_gflops']:.0f}/{tr['mar_gflops']:.0f}", f"{act['standard']:.0f}",
                f"{act['mar']:.0f}", f"{act['ratio']:.2f}"]  # fmt: skip
        lines.append(" | ".join(v.rjust(len(c)) for v, c in zip(vals, cols, strict=True)))
    r0 = res["results"][0]
    lines.append(
        f"clips/s train std {r0['train']['standard_clips_per_s']:.3f}, achieved GFLOP/s train std "
        f"{r0['train']['standard_gflops_per_s']:.0f} / MAR {r0['train']['mar_gflops_per_s']:.0f}, "
        f"infer std {r0['infer']['standard_gflops_per_s']:.0f} / MAR {r0['infer']['mar_gflops_per_s']:.0f}"
    )
    for r in res["results"]:
        if "compile" in r:
            c = r["compile"]
            lines.append(
                f"compiled vs eager (ratio {r['mask_ratio']:g}): train standard {c['standard_train_speedup']:.2f}x, "
                f"MAR {c['mar_train_speedup']:.2f}x; inference standard {c['standard_infer_speedup']:.2f}x, "
                f"MAR {c['mar_infer_speedup']:.2f}x; first step (compiling) {c['standard_first_step_ms'] / 1e3:.1f} s "
                f"/ {c['mar_first_step_ms'] / 1e3:.1f} s"
            )
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Speedup (train, inference) and activation memory against the mask ratio."""
    import matplotlib.pyplot as plt

    from marvit.bench.visualize import save_figure  # also selects the Agg backend

    first = res["results"][0]  # with --variants too, the plot follows the first variant across ratios
    rows = [r for r in res["results"]
            if (r["decoder_keep"], r["checkpoint_heads"]) == (first["decoder_keep"], first["checkpoint_heads"])]  # fmt: skip
    x = [100 * r["mask_ratio"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(x, [r["train"]["speedup"] for r in rows], "o-", label="training step")
    a.plot(x, [r["infer"]["speedup"] for r in rows], "s-", label="inference")
    a.plot(
        x, [1 / r["train"]["flops_ratio"] for r in rows], ":", color="gray", label="1 / FLOP ratio (train)"
    )
    a.axhline(1.0, color="k", lw=0.5)
    a.set(xlabel="mask ratio (%)", ylabel="speedup over standard", title="MAR speedup")
    a.legend()
    b.plot(x, [r["activation_mb"]["mar"] for r in rows], "o-", label="MAR")
    b.axhline(rows[0]["activation_mb"]["standard"], color="C3", ls="--", label="standard")
    b.set(xlabel="mask ratio (%)", ylabel="activation memory (MB)", title="Activation memory", ylim=(0, None))
    b.legend()
    fig.suptitle(f"{res['preset']} MAR vs {res['standard_preset']} standard, {res['frames']}x{res['size']}, "
                 f"batch {res['batch']}, {res['device']}")  # fmt: skip
    save_figure(fig, path, dpi=120)


def main(out: str | None = None, as_json: bool = False, **options: Any) -> int:
    """``marvit bench step``: ``options`` are :class:`StepOptions` fields (the command's flags)."""
    opts = StepOptions(**options)
    res = run(opts)
    if not opts.sweep and not opts.variants:  # one job: its numbers at the top level too
        res.update({k: res["results"][0][k] for k in ("mask_ratio", "visible_tokens", "decoder_tokens",
                                                      "train", "infer", "activation_mb")})  # fmt: skip
    out_dir = Path(out or "bench_step")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "step.json", res, indent=2)
    table = _table(res)
    atomic_write_bytes(out_dir / "step.md", (table + "\n").encode())
    if opts.sweep:
        plot(res, out_dir / "step_sweep.png")
    if as_json:
        print(jsonlib.dumps(res))
    else:
        print(table)
        print(f"wrote {out_dir / 'step.json'}" + (f" and {out_dir / 'step_sweep.png'}" if opts.sweep else ""))
    return 0
