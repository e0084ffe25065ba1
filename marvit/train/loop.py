"""The training loop: MAR, the standard scheme and VideoMAE pretraining, alone or under torchrun.

Reads top to bottom (nanoGPT style). What the scheme implies (head, labels, decoder, masks) was decided
once by :func:`marvit.train.scheme.resolve`; each micro-step is :func:`marvit.train.step.forward_loss`,
the same function the step benchmark and the profiler time. DDP switches on from the environment torchrun
sets (RANK, LOCAL_RANK, WORLD_SIZE): NCCL on CUDA, gloo on a CPU. Per optimizer step there is no host sync:
losses accumulate on the device and are read (``.item()``) only at the log interval, each such place marked
"sync point". Gradients are all-reduced only on the last micro-step of an accumulation (``no_sync``).

The learning rate follows VideoMAE: ``base_lr * batch * world * accum_steps / 256``; repeated
augmentation's extra views of the same videos do not count (they are not more data).

Evaluation and saving happen in one place, after an optimizer step: evaluate at ``train.eval_interval``
(every epoch end when 0) and at the last step; save at ``train.save_interval`` (every epoch end when 0),
at the last step, and whenever an evaluation finds a new best (then also as ``checkpoints/best``).

Resuming: ``train.resume=auto`` continues from the newest checkpoint in ``train.out_dir``: weights,
optimizer, step, epoch, position in the epoch and RNG states, so the schedule and data order go on as if the
run had not stopped. Under ``torchrun --max-restarts`` a crashed group restarts and resumes the same way.
The run owns its out_dir (see :class:`marvit.train.setup.RunDir`).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from marvit.config import Config, ConfigError
from marvit.errors import InputError
from marvit.model import build_model, load_pretrained
from marvit.pipeline.manifest import atomic_write_bytes, atomic_write_json
from marvit.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from marvit.train.evaluate import evaluate
from marvit.train.optim import build_optimizer, cosine_lr, set_lr
from marvit.train.scheme import resolve
from marvit.train.setup import (
    RunDir,
    build_data_loader,
    check_data,
    check_shards,
    compile_blocks,
    config_changes,
    fault_injection,
    memory_mb,
    seed_everything,
    setup_distributed,
)
from marvit.train.step import forward_loss


def train(cfg: Config) -> int:
    cfg, scheme = resolve(cfg)
    splits = check_data(cfg)
    tc = cfg.train
    dd = setup_distributed(tc.device)
    world, master = dd.world, dd.master
    run = RunDir(tc.out_dir)
    if master:
        run.acquire()  # refuses while another run uses this out_dir
    try:
        return _train(cfg, scheme, splits, dd, run)
    finally:
        run.release()
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: Config, scheme, splits: set[str], dd, run: RunDir) -> int:
    tc, device, rank, world, master = cfg.train, dd.device, dd.rank, dd.world, dd.master
    out_dir = run.path

    # ---- what this out_dir already holds -------------------------------------------------------
    resume = latest_checkpoint(out_dir) if tc.resume == "auto" else (Path(tc.resume) if tc.resume else None)
    if resume is None and tc.resume is None and run.has_checkpoints():
        raise InputError(
            f"train.out_dir={str(out_dir)!r} holds checkpoints of an earlier run; continue it with "
            "train.resume=auto, or choose another train.out_dir"
        )
    if master:
        for p in run.remove_stale_temporaries():
            print(f"removed {p}: a temporary checkpoint a killed save left behind")
        if resume is not None and (resume / "config.yaml").is_file():
            changes = config_changes((resume / "config.yaml").read_text(), cfg)
            if changes and not tc.allow_config_change:
                raise ConfigError(
                    f"train.resume: the config differs from the one {resume} was trained with: "
                    + "; ".join(changes)
                    + ". Resume with the same config, or set "
                    "train.allow_config_change=true to accept the change"
                )
        print(cfg.to_yaml())
        atomic_write_bytes(out_dir / "config.yaml", cfg.to_yaml().encode())
        check_shards(cfg, splits)  # every shard against the manifest before the first step
    mask_gen = seed_everything(tc.seed, rank, device)
    amp_dtype = torch.bfloat16 if (tc.amp and device.type == "cuda") else None

    # ---- model ----------------------------------------------------------------------------------
    model = build_model(cfg.model, with_decoder=scheme.with_decoder).to(device)
    model.set_grad_checkpointing(tc.checkpoint_heads)
    state = load_checkpoint(resume, model) if resume is not None else None  # weights, optimizer, RNG
    if cfg.model.pretrained and resume is None:
        report = load_pretrained(model, cfg.model.pretrained)
        if master:
            print(report.summary())
    if master:  # no row of steps the resumed run will redo survives (a fresh run starts empty)
        cut = run.truncate_metrics(int(state["step"]) if state is not None else 0)
        if cut:
            print(f"{out_dir / 'metrics.jsonl'}: dropped {cut} rows past the resumed step")

    # ---- data -----------------------------------------------------------------------------------
    loader = build_data_loader(cfg, "train", True, rank, world, device)
    val_loader = build_data_loader(cfg, "val", False, rank, world, device) if (
        scheme.labels and "val" in splits) else None  # fmt: skip
    mixup = None
    if scheme.labels:
        from marvit.pipeline import mixup_fn

        mixup = mixup_fn(cfg.data, cfg.model.num_classes)  # None when mixup and cutmix are off
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
    global_batch = cfg.data.batch_size * world * tc.accum_steps  # videos per step; repeats not counted
    peak_lr = tc.base_lr * global_batch / 256 if tc.scale_lr else tc.base_lr

    # ---- optimizer and resume -------------------------------------------------------------------
    optimizer = build_optimizer(model, tc, peak_lr)
    step, epoch, micro, best = 0, 0, 0, float("-inf")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, micro = int(state["step"]), int(state["epoch"]), int(state["micro_in_epoch"])
        best = float(state.get("best", best))
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0], mask_gen)
        if master:
            print(f"resumed from {resume} at step {step} (epoch {epoch}, batch {micro})")
    if tc.compile:
        compile_blocks(model)
    raw_model = model
    if world > 1:
        model = DDP(model, device_ids=[dd.local_rank] if device.type == "cuda" else None)

    # ---- metrics ---------------------------------------------------------------------------------
    metrics = open(out_dir / "metrics.jsonl", "a") if master else None  # noqa: SIM115 - lives for the run
    tb = _tensorboard(out_dir) if master else None
    sums = torch.zeros(3, device=device)  # loss, ce, mse summed over micro-steps since the last log
    zero = torch.zeros((), device=device)  # the ce or mse a scheme does not have
    count, clips, wait, t_log, t_start = 0, 0, 0.0, time.perf_counter(), time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc=scheme.name, disable=not master, dynamic_ncols=True)
    last_eval = None
    batches = None
    model.train()

    # ---- steps -----------------------------------------------------------------------------------
    while step < total_steps:
        if batches is None:  # a new epoch, or the resume point inside one
            loader.set_epoch(epoch)
            batches = loader.iter_from(micro)
        lr = cosine_lr(step, total_steps, warmup_steps, peak_lr, tc.min_lr)
        set_lr(optimizer, lr)
        fault_injection(step)
        for i in range(tc.accum_steps):
            t0 = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - t0
            video, target = batch["video"], batch["label"]
            if mixup is not None:
                video, target = mixup(video, target)
            sync = i == tc.accum_steps - 1 or world == 1
            with nullcontext() if sync else model.no_sync():
                losses = forward_loss(model, scheme, video, target, mask_gen, amp_dtype)
                (losses["loss"] / tc.accum_steps).backward()
            sums += torch.stack([losses["loss"].detach().float(), losses.get("ce", zero).detach().float(),
                                 losses.get("mse", zero).detach().float()])  # fmt: skip
            count += 1
            clips += video.shape[0]
        if tc.clip_grad:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), tc.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        micro += tc.accum_steps
        bar.update(1)
        epoch_end = micro + tc.accum_steps > micro_per_epoch
        if epoch_end:
            epoch, micro, batches = epoch + 1, 0, None
        last = step == total_steps

        # ---- log (the only host syncs of a step) ----------------------------------------------
        if step % tc.log_interval == 0 or last:
            skipped = torch.tensor([float(loader.skipped()["count"])], device=device)
            if world > 1:
                dist.all_reduce(sums)  # sync point (log interval only)
                dist.all_reduce(skipped)
                sums /= world
            vals = (sums / max(count, 1)).tolist()  # sync point
            dt = time.perf_counter() - t_log
            _log(metrics, tb, {"step": step, "epoch": epoch, "loss": vals[0], "ce": vals[1], "mse": vals[2],
                               "lr": lr, "clips_per_s": clips * world / dt, "data_wait": wait / dt,
                               "skipped": int(skipped.item()), "mem_mb": memory_mb(device),
                               "time": time.perf_counter() - t_start})  # fmt: skip
            bar.set_postfix(loss=f"{vals[0]:.4f}", lr=f"{lr:.2e}")
            sums.zero_()
            count, clips, wait, t_log = 0, 0, 0.0, time.perf_counter()

        # ---- evaluate and save: the one place ---------------------------------------------------
        due_eval = last or (step % tc.eval_interval == 0 if tc.eval_interval else epoch_end)
        due_save = last or (step % tc.save_interval == 0 if tc.save_interval else epoch_end)
        is_best = False
        if due_eval and val_loader is not None:
            res = evaluate(raw_model, val_loader, scheme, device, amp_dtype)
            is_best, best = res["top1"] > best, max(best, res["top1"])
            last_eval = res
            _log(metrics, tb, {"step": step, "epoch": epoch, **{f"val_{k}": v for k, v in res.items()},
                               "val_is_best": is_best})  # fmt: skip
        if due_save or is_best:
            train_state = {"step": step, "epoch": epoch, "micro_in_epoch": micro, "best": best}
            _save(out_dir, raw_model, optimizer, train_state, mask_gen, cfg, world, master, is_best)
    bar.close()

    # ---- results ---------------------------------------------------------------------------------
    skipped = _gather_skipped(loader, val_loader, world)
    if master:
        result = {"scheme": scheme.name, "steps": step, "epochs": epoch,
                  "train_time_s": time.perf_counter() - t_start, "global_batch": global_batch,
                  "peak_lr": peak_lr, "world_size": world, "skipped": skipped}  # fmt: skip
        if last_eval is not None:
            result.update(last_eval)
        atomic_write_json(out_dir / "results.json", result, indent=2)
        print(json.dumps(result))
        metrics.close()
        if tb is not None:
            tb.close()
    if world > 1:
        dist.barrier()
    return 0


# --------------------------------------------------------------------------------------------------------
# the loop's plumbing
# --------------------------------------------------------------------------------------------------------
def _save(out_dir, model, optimizer, train_state: dict, mask_gen, cfg: Config, world: int, master: bool,
          is_best: bool) -> None:  # fmt: skip
    """Write a checkpoint; every rank's RNG state travels with it, so each rank resumes its own stream."""
    rngs = [rng_state(mask_gen)]
    if world > 1:
        rngs = [None] * world
        dist.all_gather_object(rngs, rng_state(mask_gen))
    if master:
        state = {"optimizer": optimizer.state_dict(), **train_state, "rng": rngs}
        save_checkpoint(out_dir, model, state, cfg.to_yaml(), cfg.train.keep_last, best=is_best)
    if world > 1:
        dist.barrier()


def _gather_skipped(loader, val_loader, world: int) -> dict:
    """Samples the loaders skipped (missing members, undecodable videos), summed over the ranks."""
    mine: dict[str, int] = {}
    repeated = 0  # samples served twice in an epoch to fill it (an epoch that lost samples)
    for ld in (loader, val_loader):
        if ld is not None:
            for reason, n in ld.skipped()["reasons"].items():
                mine[reason] = mine.get(reason, 0) + n
            repeated += ld.skipped().get("repeated", 0)
    every = [(mine, repeated)]
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, (mine, repeated))
    total: dict[str, int] = {}
    for d, _ in every:
        for reason, n in d.items():
            total[reason] = total.get(reason, 0) + n
    out = {"count": sum(total.values()), "reasons": total}
    if any(r for _, r in every):
        out["repeated"] = sum(r for _, r in every)
    return out


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tb"))


def _log(metrics, tb, record: dict) -> None:
    if metrics is None:
        return
    metrics.write(json.dumps(record) + "\n")
    metrics.flush()
    if tb is not None:
        for k, v in record.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
                tb.add_scalar(k, v, record.get("step", 0))
