"""The training loop: MAR, the standard scheme and VideoMAE pretraining, alone or under torchrun.

Reads top to bottom (nanoGPT style). DDP switches on from the environment torchrun sets (RANK,
LOCAL_RANK, WORLD_SIZE): NCCL on CUDA, gloo on a CPU. Per optimizer step there is no host sync: losses
accumulate on the device and are read (``.item()``) only at the log interval, each such place marked
"sync point". Gradients are all-reduced only on the last micro-step of an accumulation (``no_sync``).

Schemes:
- ``standard``: every token, the linear head, no decoder;
- ``mar``: the configured mask (cell running by default), the configured head (bridging by default), and
  the reconstruction loss weighted by ``train.recon_weight`` (0 drops the decoder entirely);
- ``pretrain``: VideoMAE self-supervision: tube masking at ``train.pretrain_mask_ratio``, the decoder and
  the normalized-pixel loss, no labels.
``train.decoder_keep < 1`` reconstructs a random subset of the masked tokens (not in the paper: it cuts the
decoder's cost, which dominates the step once the encoder sees only half the tokens).

Resuming: ``train.resume=auto`` continues from the newest checkpoint in ``train.out_dir``: weights,
optimizer, step, epoch, position in the epoch and RNG states, so the schedule and data order go on as if the
run had not stopped. Under ``torchrun --max-restarts`` a crashed group restarts and resumes the same way.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from marvit.config import Config, ConfigError
from marvit.model import build_model, load_pretrained, make_mask, mar_loss, split_indices
from marvit.model.masking import num_targets, num_visible
from marvit.pipeline.manifest import atomic_write_json, load_manifest
from marvit.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from marvit.train.evaluate import evaluate
from marvit.train.optim import build_optimizer, cosine_lr, set_lr


# --------------------------------------------------------------------------------------------------------
# setup helpers
# --------------------------------------------------------------------------------------------------------
def resolve_scheme(cfg: Config) -> Config:
    """Apply what a scheme implies (standard: no mask, linear head), and ``train.batch_size`` when set, to a
    copy of the config: the config.yaml a run writes is then the one it ran."""
    cfg = copy.deepcopy(cfg)
    if cfg.train.batch_size is not None:
        cfg.data.batch_size = cfg.train.batch_size
    if cfg.train.scheme == "standard":
        cfg.mask.strategy, cfg.mask.ratio, cfg.model.head = "none", 0.0, "linear"
    elif cfg.train.scheme == "pretrain":
        cfg.mask.strategy, cfg.mask.ratio = "tube", cfg.train.pretrain_mask_ratio
    return cfg.validate()


def recon_weight(cfg: Config) -> float:
    """lambda of the reconstruction loss, the one rule for the loop, the step benchmark and the profiler:
    1 for VideoMAE pretraining, ``train.recon_weight`` for MAR when something is masked, 0 otherwise."""
    if cfg.train.scheme == "pretrain":
        return 1.0
    if cfg.train.scheme == "mar" and cfg.mask.strategy != "none":
        return cfg.train.recon_weight
    return 0.0


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def build_data_loader(cfg: Config, split: str, train: bool, rank: int, world: int, device, epoch: int = 0):
    if cfg.data.backend == "synthetic":
        from marvit.pipeline.synthetic_loader import SyntheticLoader

        n = cfg.data.synthetic_samples[0 if split == "train" else 1]
        return SyntheticLoader(cfg.data, split, cfg.model.num_classes, n, train, rank, world, device,
                               seed=cfg.train.seed)  # fmt: skip
    from marvit.pipeline import build_loader

    return build_loader(cfg.data, split, backend=cfg.data.backend, rank=rank, world_size=world, train=train,
                 device=device, seed=cfg.train.seed, epoch=epoch)  # fmt: skip


def check_data(cfg: Config) -> set[str]:
    """Fail before any work starts when the data cannot be what the config says; returns the splits."""
    if cfg.data.backend == "synthetic":
        return {"train", "val"}
    root = cfg.data.root
    if root is None:
        raise ConfigError(
            "data.root=null: set it to a `marvit convert` output directory (or data.backend=synthetic)"
        )
    try:
        info = load_manifest(root)
    except ValueError as e:
        raise ConfigError(f"data.root={root!r}: {e}") from e
    if info is None:
        raise ConfigError(
            f"data.root={root!r}: no manifest.json there; is it a `marvit convert` output directory?"
        )
    if "train" not in info["splits"]:
        raise ConfigError(
            f"data.root={root!r}: the manifest has no 'train' split (has {sorted(info['splits'])})"
        )
    if cfg.data.flip and cfg.data.flip_label_map is None and info.get("flip_map"):
        # the data set declares which classes swap under a horizontal flip (e.g. move_left <-> move_right)
        cfg.data.flip_label_map = {int(k): int(v) for k, v in info["flip_map"].items()}
        print(f"data.flip_label_map from {Path(root) / 'manifest.json'}: {cfg.data.flip_label_map}")
    n = len(info["classes"])
    if cfg.train.scheme != "pretrain" and n != cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes}: the data set at {root} has {n} classes"
        )
    return set(info["splits"])


def train_indices(
    cfg: Config, batch: int, n_vis: int, generator: torch.Generator, device: torch.device, with_targets: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One training batch's visible indices (B, N_vis) and decoder targets (B, N_t); None without a mask.

    The targets are the masked tokens or, with ``train.decoder_keep < 1``, a random sorted subset of them.
    Also used by the step benchmark and the profiler, so they time exactly what the loop runs.
    """
    if cfg.mask.strategy == "none":
        return None, None
    mask = make_mask(cfg.mask.strategy, cfg.mask.ratio, cfg.model.grid, batch=batch, train=True,
                     generator=generator, cell=cfg.mask.cell, spatial=cfg.mask.spatial,
                     temporal=cfg.mask.temporal, device=device)  # fmt: skip
    vis, msk = split_indices(mask, n_vis)  # (B, N_vis), (B, N - N_vis)
    if not with_targets or msk.shape[1] == 0:  # nothing masked: nothing to reconstruct
        return vis, None
    tgt = msk
    if cfg.train.decoder_keep < 1:  # a random, sorted subset of the masked tokens
        keep = num_targets(msk.shape[1], cfg.train.decoder_keep)
        pick = torch.rand(msk.shape, generator=generator, device=device).argsort(1)[:, :keep]
        tgt = torch.gather(msk, 1, pick.sort(1).values)  # (B, N_t)
    return vis, tgt


def init_distributed(backend: str, rank: int, world: int) -> None:
    """Join the process group through the store torchrun's agent hosts, under a per-restart key prefix.

    After ``--max-restarts`` restarts a group, the agent's store still holds the previous round's peer
    addresses; gloo would connect to the dead workers and fail. A prefix per restart round keeps each
    round's rendezvous apart.
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if addr is None or port is None:
        dist.init_process_group(backend)  # another launcher's env:// setup
        return
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    base = dist.TCPStore(
        addr, int(port), world, is_master=not agent and rank == 0, timeout=timedelta(minutes=10)
    )
    store = dist.PrefixStore(f"marvit/restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", base)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)


def fault_injection(step: int) -> None:
    """Test hook: MARVIT_FAULT_STEP=k (and MARVIT_FAULT_RANK) crashes that rank at step k, first attempt only."""
    at = os.environ.get("MARVIT_FAULT_STEP")
    if at is None or int(at) != step or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    if int(os.environ.get("RANK", "0")) == int(os.environ.get("MARVIT_FAULT_RANK", "0")):
        raise RuntimeError(f"injected fault at step {step} (MARVIT_FAULT_STEP)")


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # pragma: no cover - not POSIX
        return 0.0


# --------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------
def train(cfg: Config) -> int:
    cfg = resolve_scheme(cfg)
    splits = check_data(cfg)
    tc, scheme = cfg.train, cfg.train.scheme

    # ---- distributed setup from torchrun's environment --------------------------------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(tc.device, local_rank)
    if world > 1 and not dist.is_initialized():
        init_distributed("nccl" if device.type == "cuda" else "gloo", rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    master = rank == 0
    out_dir = Path(tc.out_dir)
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        print(cfg.to_yaml())
        (out_dir / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(tc.seed + rank)
    random.seed(tc.seed + rank)
    np.random.seed(tc.seed + rank)  # timm's Mixup draws from numpy
    mask_gen = torch.Generator(device=device).manual_seed(tc.seed * 1000 + rank)
    amp_dtype = torch.bfloat16 if (tc.amp and device.type == "cuda") else None

    # ---- model ----------------------------------------------------------------------------------
    lam = recon_weight(cfg)
    model = build_model(cfg.model, with_decoder=lam > 0).to(device)
    model.set_grad_checkpointing(tc.checkpoint_heads)
    if scheme == "pretrain":
        model.head = torch.nn.Identity()  # no labels: no head to train, store or hand to fine-tuning
    resume = latest_checkpoint(out_dir) if tc.resume == "auto" else (Path(tc.resume) if tc.resume else None)
    if cfg.model.pretrained and resume is None:
        report = load_pretrained(model, cfg.model.pretrained)
        if master:
            print(report.summary())
    grid = cfg.model.grid
    n_vis = num_visible(cfg.mask.strategy, cfg.mask.ratio, grid, cfg.mask.cell)

    # ---- data -----------------------------------------------------------------------------------
    loader = build_data_loader(cfg, "train", True, rank, world, device)
    val_loader = build_data_loader(cfg, "val", False, rank, world, device) if (
        scheme != "pretrain" and "val" in splits) else None  # fmt: skip
    mixup = None
    if scheme != "pretrain" and (cfg.data.mixup > 0 or cfg.data.cutmix > 0):
        from marvit.pipeline import mixup_fn

        mixup = mixup_fn(cfg.data, cfg.model.num_classes)
    micro_per_epoch = len(loader)
    steps_per_epoch = micro_per_epoch // tc.accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train.accum_steps={tc.accum_steps}: more than the {micro_per_epoch} batches of an epoch"
        )
    total_steps = tc.epochs * steps_per_epoch
    if tc.max_steps is not None:
        total_steps = min(total_steps, tc.max_steps)
    warmup_steps = min(int(tc.warmup_epochs * steps_per_epoch), total_steps // 2)
    global_batch = cfg.data.batch_size * cfg.data.repeated_aug * world * tc.accum_steps
    peak_lr = tc.base_lr * global_batch / 256 if tc.scale_lr else tc.base_lr

    # ---- optimizer and resume -------------------------------------------------------------------
    optimizer = build_optimizer(model, tc, peak_lr)
    step, epoch, micro_done, best = 0, 0, 0, float("-inf")
    if resume is not None:
        state = load_checkpoint(resume, model)
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, micro_done = int(state["step"]), int(state["epoch"]), int(state["micro_in_epoch"])
        best = float(state.get("best", best))
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0], mask_gen)
        if master:
            print(f"resumed from {resume} at step {step} (epoch {epoch}, batch {micro_done})")
    raw_model = model
    if world > 1:
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)

    def checkpoint(is_best: bool = False) -> None:
        nonlocal last_saved
        last_saved = step
        # every rank's RNG state travels with the checkpoint, so each rank resumes its own stream
        rngs = [rng_state(mask_gen)]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng_state(mask_gen))
        if master:
            state = {"optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
                     "micro_in_epoch": micro_done, "best": best, "rng": rngs}  # fmt: skip
            save_checkpoint(out_dir, raw_model, state, cfg.to_yaml(), tc.keep_last, best=is_best)
        if world > 1:
            dist.barrier()

    # ---- metrics ---------------------------------------------------------------------------------
    metrics_file = open(out_dir / "metrics.jsonl", "a") if master else None  # noqa: SIM115 - lives for the run
    tb = None
    if master:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out_dir / "tb"))
        except ImportError:
            tb = None

    def log(record: dict) -> None:
        if master:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            if tb is not None:
                for k, v in record.items():
                    if isinstance(v, int | float) and k != "step":
                        tb.add_scalar(k, v, record.get("step", 0))

    def eval_and_log() -> None:
        """Evaluate, log, and save the weights as the best when they are (whatever the intervals)."""
        nonlocal best, last_eval, last_eval_step
        last_eval_step = step
        if val_loader is None:
            return
        res = evaluate(
            raw_model, val_loader, None if scheme == "standard" else cfg.mask, grid, device, amp_dtype
        )
        last_eval = {**res, "is_best": res["top1"] > best}
        best = max(best, res["top1"])
        log({"step": step, "epoch": epoch, **{f"val_{k}": v for k, v in last_eval.items()}})
        if last_eval["is_best"]:
            checkpoint(is_best=True)

    sums = torch.zeros(3, device=device)  # loss, ce, mse summed over micro-steps since the last log
    zero = torch.zeros((), device=device)  # the ce or mse a scheme does not have
    count, clips, wait, t_log, t_start = 0, 0, 0.0, time.perf_counter(), time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc=scheme, disable=not master, dynamic_ncols=True)
    last_eval, last_eval_step, last_saved = None, -1, -1
    model.train()

    # ---- epochs ----------------------------------------------------------------------------------
    while step < total_steps:
        loader.set_epoch(epoch)
        if hasattr(loader, "batch"):  # random access: resume mid-epoch without replaying batches
            batches = (loader.batch(k) for k in range(micro_done, micro_per_epoch))
        else:
            batches = iter(loader)
            for _ in range(micro_done):  # replay to the resume point (same epoch seed, same order)
                next(batches)
        micro = micro_done
        while step < total_steps and micro + tc.accum_steps <= micro_per_epoch:
            lr = cosine_lr(step, total_steps, warmup_steps, peak_lr, tc.min_lr)
            set_lr(optimizer, lr)
            fault_injection(step)
            for i in range(tc.accum_steps):
                t0 = time.perf_counter()
                batch = next(batches)
                wait += time.perf_counter() - t0
                video, label = batch["video"], batch["label"]
                b = video.shape[0]
                target = label
                if mixup is not None:
                    video, target = mixup(video, label)
                vis, tgt = train_indices(cfg, b, n_vis, mask_gen, device, with_targets=lam > 0)
                sync = i == tc.accum_steps - 1 or world == 1
                with nullcontext() if sync else model.no_sync():
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        out = model(video, vis, tgt, with_logits=scheme != "pretrain")
                    pixels = raw_model.targets(video, tgt) if tgt is not None else None
                    losses = mar_loss(out.get("logits"), target if scheme != "pretrain" else None,
                                      out.get("pred"), pixels, lam,
                                      cfg.data.label_smoothing if mixup is None else 0.0)  # fmt: skip
                    (losses["loss"] / tc.accum_steps).backward()
                sums += torch.stack([losses["loss"].detach().float(),
                                     losses.get("ce", zero).detach().float(),
                                     losses.get("mse", zero).detach().float()])  # fmt: skip
                count += 1
                clips += b
            if tc.clip_grad:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), tc.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            micro += tc.accum_steps
            micro_done = micro
            step += 1
            bar.update(1)

            if step % tc.log_interval == 0 or step == total_steps:
                if world > 1:
                    dist.all_reduce(sums)  # sync point (log interval only)
                    sums /= world
                vals = (sums / max(count, 1)).tolist()  # sync point
                dt = time.perf_counter() - t_log
                rec = {"step": step, "epoch": epoch, "loss": vals[0], "ce": vals[1], "mse": vals[2], "lr": lr,
                       "clips_per_s": clips * world / dt, "data_wait": wait / dt,
                       "mem_mb": _memory_mb(device), "time": time.perf_counter() - t_start}  # fmt: skip
                log(rec)
                bar.set_postfix(loss=f"{vals[0]:.4f}", lr=f"{lr:.2e}")
                sums.zero_()
                count, clips, wait, t_log = 0, 0, 0.0, time.perf_counter()
            if tc.eval_interval and step % tc.eval_interval == 0:
                eval_and_log()
            if tc.save_interval and step % tc.save_interval == 0 and last_saved != step:
                checkpoint()
        if micro + tc.accum_steps > micro_per_epoch:  # the epoch is done
            epoch, micro_done = epoch + 1, 0
            if not tc.eval_interval:
                eval_and_log()
            if not tc.save_interval and last_saved != step:
                checkpoint()
    bar.close()
    # the run ends evaluated and saved, whatever the intervals (max_steps, or an interval that missed the end)
    if last_eval_step != step:
        eval_and_log()
    if last_saved != step:
        checkpoint()

    if master:
        result = {"scheme": scheme, "steps": step, "epochs": epoch, "train_time_s": time.perf_counter() - t_start,
                  "global_batch": global_batch, "peak_lr": peak_lr, "world_size": world}  # fmt: skip
        if last_eval is not None:
            result.update({k: v for k, v in last_eval.items() if k != "is_best"})
        atomic_write_json(out_dir / "results.json", result, indent=2)
        print(json.dumps(result))
        metrics_file.close()
        if tb is not None:
            tb.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0
