"""The training loop: MAR, the standard scheme and VideoMAE pretraining, alone or under torchrun.

Reads top to bottom (nanoGPT style). What the scheme implies (head, labels, decoder, masks) was decided
once by :func:`marvit.train.scheme.resolve`; each micro-step is :func:`marvit.train.step.forward_loss`,
the same function the step benchmark and the profiler time. DDP switches on from the environment torchrun
sets (RANK, LOCAL_RANK, WORLD_SIZE): NCCL on CUDA, gloo on a CPU. Per optimizer step there is no host sync:
losses accumulate on the device and are read (``.item()``) only at the log interval, each such place marked
"sync point". Gradients are all-reduced only on the last micro-step of an accumulation (``no_sync``).

The recipe (:mod:`marvit.train.recipe`) is resolved once and printed at the start: ``train.global_batch``
clips per optimizer step whatever the GPU count (accumulation derived from it), the peak lr absolute
(``train.scale_lr`` for VideoMAE's per-256-videos rule).

Evaluation and saving happen in one place, after an optimizer step: a cheap one-view validation every
``train.eval_interval`` epochs (every epoch when 0) and at the last step; save at ``train.save_interval``
(steps; every epoch end when 0), at the last step, and whenever a validation finds a new best (then also as
``checkpoints/best``). The full multi-view test runs once at the end, on the final model, or with
``train.eval_checkpoint=best`` on the best-on-validation checkpoint (results.json names which).

Resuming: ``train.resume=auto`` continues from the newest checkpoint in ``train.out_dir``: weights,
optimizer, step, epoch, position in the epoch and RNG states, so the schedule and data order go on as if the
run had not stopped. Under ``torchrun --max-restarts`` a crashed group restarts and resumes the same way.
The run owns its out_dir (see :class:`marvit.train.setup.RunDir`).

Faults (:mod:`marvit.train.guard`, docs/faults.md): a non-finite loss (log interval) or weight (before an
evaluation or a save) stops the run, exit 3, with no checkpoint of it; SIGTERM/SIGINT/SIGUSR1 save at a step
the ranks agree on (the log interval's all-reduce) and exit 75; data loading and evaluation draw nothing
from the training RNG stream, so a resumed run is the uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import sys
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
from marvit.train import guard
from marvit.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from marvit.train.evaluate import evaluate
from marvit.train.fsio import append_line
from marvit.train.fsio import write_file as atomic_write_bytes
from marvit.train.fsio import write_json as atomic_write_json
from marvit.train.optim import build_optimizer, cosine_lr, set_lr
from marvit.train.recipe import accumulation, format_table, official_for, peak_lr, resolve_recipe
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
    stop = guard.StopSignals().install()  # SIGTERM/SIGINT/SIGUSR1: save at the agreed step, then exit
    try:
        return _train(cfg, scheme, splits, dd, run, stop)
    finally:
        stop.restore()
        run.release()
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: Config, scheme, splits: set[str], dd, run: RunDir, stop: guard.StopSignals) -> int:
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
        (out_dir / guard.PREEMPTED).unlink(missing_ok=True)  # this run goes on from where that one stopped
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
    one_view = copy.deepcopy(cfg)  # the cheap validation during training: one clip, one crop
    one_view.data.test_clips, one_view.data.test_crops = 1, 1
    val_loader = build_data_loader(one_view, "val", False, rank, world, device) if (
        scheme.labels and "val" in splits) else None  # fmt: skip
    mixup = None
    if scheme.labels:
        from marvit.pipeline import mixup_fn

        mixup = mixup_fn(cfg.data, cfg.model.num_classes)  # None when mixup and cutmix are off
    micro_per_epoch = len(loader)
    accum, global_batch = accumulation(cfg, world)  # clips per step, repeats counted, whatever the world
    steps_per_epoch = micro_per_epoch // accum
    if steps_per_epoch == 0:
        raise ConfigError(f"train.accum_steps={accum}: more than the {micro_per_epoch} batches of an epoch")
    recipe = resolve_recipe(cfg, world, steps_per_epoch=steps_per_epoch)
    total_steps, warmup_steps, peak = recipe.total_steps, recipe.warmup_steps, peak_lr(cfg, global_batch)
    schedule = [tc.epochs, tc.max_steps, tc.warmup_epochs, global_batch]  # what the schedule in steps follows
    if state is not None and state.get("schedule") == schedule:
        # a run resumed on another GPU count keeps its schedule in steps (the per-rank loader's length may
        # round differently); a config that changes the schedule (allow_config_change) recomputes it
        total_steps, warmup_steps = int(state["total_steps"]), int(state["warmup_steps"])
    if master:
        print(format_table(recipe, official_for(cfg)))

    # ---- optimizer and resume -------------------------------------------------------------------
    optimizer = build_optimizer(model, tc, peak)
    step, epoch, micro, best = 0, 0, 0, float("-inf")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, micro = int(state["step"]), int(state["epoch"]), int(state["micro_in_epoch"])
        micro = micro // int(state.get("accum_steps", accum)) * accum  # another GPU count cuts steps anew
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
    step_sums = torch.zeros(3, device=device)  # this step's share of sums (a skipped update's is dropped)
    skipper = guard.UpdateSkipper(tc.skip_nonfinite)
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
        lr = cosine_lr(step, total_steps, warmup_steps, peak, tc.min_lr, tc.warmup_lr)
        set_lr(optimizer, lr)
        fault_injection(step)
        for i in range(accum):
            t0 = time.perf_counter()
            batch = guard.next_batch(batches)  # the loader's draws stay off the training RNG stream
            wait += time.perf_counter() - t0
            video, target = batch["video"], batch["label"]
            if mixup is not None:
                video, target = mixup(video, target)
            sync = i == accum - 1 or world == 1
            with nullcontext() if sync else model.no_sync():
                losses = forward_loss(model, scheme, video, target, mask_gen, amp_dtype)
                (losses["loss"] / accum).backward()
            step_sums += torch.stack([losses["loss"].detach().float(), losses.get("ce", zero).detach().float(),
                                      losses.get("mse", zero).detach().float()])  # fmt: skip
            count += 1
            clips += video.shape[0]
        if tc.clip_grad:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), tc.clip_grad)
        if skipper.skip(raw_model, step + 1, out_dir):  # train.skip_nonfinite (a sync point when on)
            count -= accum
        else:
            optimizer.step()
            sums += step_sums
        step_sums.zero_()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        micro += accum
        bar.update(1)
        epoch_end = micro + accum > micro_per_epoch
        if epoch_end:
            epoch, micro, batches = epoch + 1, 0, None
        last = step == total_steps

        # ---- log (the only host syncs of a step) ----------------------------------------------
        stopping = stop.requested and world == 1  # one process: a signal is seen at once, no sync
        if step % tc.log_interval == 0 or last:
            # the stop request rides on the skipped-count all-reduce: the ranks agree on this step
            skipped = torch.tensor([float(loader.skipped()["count"]), float(stop.requested)], device=device)
            if world > 1:
                dist.all_reduce(sums)  # sync point (log interval only)
                dist.all_reduce(skipped)
                sums /= world
            vals = (sums / max(count, 1)).tolist()  # sync point
            stopping = bool(skipped[1] > 0)
            if count:  # the interval's mean loss, the same value on every rank
                guard.check_loss(vals[0], step, out_dir)
            dt = time.perf_counter() - t_log
            _log(metrics, tb, {"step": step, "epoch": epoch, "loss": vals[0], "ce": vals[1], "mse": vals[2],
                               "lr": lr, "clips_per_s": clips * world / dt, "data_wait": wait / dt,
                               "skipped": int(skipped[0]), "skipped_updates": skipper.total,
                               "mem_mb": memory_mb(device),
                               "time": time.perf_counter() - t_start})  # fmt: skip
            bar.set_postfix(loss=f"{vals[0]:.4f}", lr=f"{lr:.2e}")
            sums.zero_()
            count, clips, wait, t_log = 0, 0, 0.0, time.perf_counter()

        # ---- evaluate and save: the one place ---------------------------------------------------
        due_eval = last or (epoch_end and (tc.eval_interval == 0 or epoch % tc.eval_interval == 0))
        due_save = last or stopping or (step % tc.save_interval == 0 if tc.save_interval else epoch_end)
        is_best = False
        if due_eval or due_save:  # never evaluate, mark best or save non-finite weights
            guard.check_weights(raw_model, step, out_dir)
        if due_eval and val_loader is not None and not stopping:
            with guard.data_rng():  # evaluation draws nothing from the training stream
                res = evaluate(raw_model, val_loader, scheme, device, amp_dtype)
            is_best, best = res["top1"] > best, max(best, res["top1"])
            last_eval = res
            _log(metrics, tb, {"step": step, "epoch": epoch, **{f"val_{k}": v for k, v in res.items()},
                               "val_is_best": is_best})  # fmt: skip
        if due_save or is_best:
            train_state = {
                "step": step,
                "epoch": epoch,
                "micro_in_epoch": micro,
                "best": best,
                "accum_steps": accum,
                "total_steps": total_steps,
                "warmup_steps": warmup_steps,
                "schedule": schedule,
            }
            _save(out_dir, raw_model, optimizer, train_state, mask_gen, cfg, world, master, is_best)
        if stopping and not last:
            return _stopped(out_dir, stop, step, master, metrics, tb, bar, world)
    bar.close()
    test = _final_test(cfg, scheme, raw_model, out_dir, splits, dd, amp_dtype)

    # ---- results ---------------------------------------------------------------------------------
    skipped = _gather_skipped(loader, val_loader, world)
    if master:
        result = {"scheme": scheme.name, "steps": step, "epochs": epoch,
                  "train_time_s": time.perf_counter() - t_start, "global_batch": global_batch,
                  "videos_per_step": recipe.videos_per_step, "accum_steps": accum, "peak_lr": peak,
                  "world_size": world, "skipped": skipped, "skipped_updates": skipper.total}  # fmt: skip
        if last_eval is not None:
            result.update(last_eval)
            result["val"] = last_eval  # the last one-view validation
        if test is not None:  # the reported number: the multi-view test of the named checkpoint
            result.update(test)
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


def _final_test(cfg: Config, scheme, model, out_dir: Path, splits: set[str], dd, amp_dtype) -> dict | None:
    """The full multi-view test, once, on the final model or (``train.eval_checkpoint=best``) the best one."""
    if not scheme.labels or "val" not in splits:
        return None
    which = cfg.train.eval_checkpoint
    best = out_dir / "checkpoints" / "best"
    if which == "best" and (best / "model.safetensors").is_file():
        load_checkpoint(best, model)  # every rank reads the same file
    loader = build_data_loader(cfg, "val", False, dd.rank, dd.world, dd.device)
    res = evaluate(model, loader, scheme, dd.device, amp_dtype)
    d = cfg.data
    return {**res, "eval_checkpoint": which, "test_views": f"{d.test_clips}x{d.test_crops}"}


def _stopped(out_dir: Path, stop: guard.StopSignals, step: int, master: bool, metrics, tb, bar,
             world: int) -> int:  # fmt: skip
    """After the agreed step's checkpoint: say where it is, leave the marker a requeue script reads."""
    bar.close()
    if master:
        ckpt = latest_checkpoint(out_dir)
        atomic_write_json(out_dir / guard.PREEMPTED, {"signal": stop.received or "another rank's", "step": step,
                          "checkpoint": str(ckpt), "status": guard.EXIT_PREEMPTED})  # fmt: skip
        metrics.close()
        if tb is not None:
            tb.close()
        who = stop.received or "a signal to another rank"
        print(f"marvit train: stopped by {who} after step {step}; saved {ckpt}; continue with "
              "train.resume=auto", file=sys.stderr)  # fmt: skip
    if world > 1:
        dist.barrier()
    return guard.EXIT_PREEMPTED


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
    append_line(metrics, metrics.name, json.dumps(record) + "\n")
    if tb is not None:
        for k, v in record.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
                tb.add_scalar(k, v, record.get("step", 0))
