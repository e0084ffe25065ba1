"""What a run needs before its first step: device and process group, seeds, data checks, loaders, and the
run directory it owns. Everything that can be checked before work starts is checked here, and a bad input
raises :class:`marvit.errors.InputError` naming it.

The run directory (``train.out_dir``) belongs to one run at a time: :class:`RunDir` takes a lock file
(``run.lock``: pid, host, start time) that a second run refuses; a lock left by a process that no longer
exists on this host is recognised as stale and taken over. On resume it removes temporary checkpoint
directories a killed save left behind, cuts ``metrics.jsonl`` back to the resumed step (so no row of the
killed run's lost steps survives), and compares the config with the checkpoint's: a change that alters
the run (schedule, model, mask, data) is refused unless ``train.allow_config_change=true``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from marvit.config import Config, ConfigError
from marvit.errors import InputError
from marvit.pipeline.dirlock import holder_gone, link_whole, read_holder
from marvit.pipeline.manifest import load_manifest, writable_dir
from marvit.train import fsio
from marvit.train.fsio import write_file as atomic_write_bytes

# The config fields a resumed run may change, per section: where things are, how often it reports and how
# the data is read, not what it computes. Each name is checked against the config's fields below.
_RESUMABLE = {
    "train": ("out_dir", "resume", "device", "log_interval", "eval_interval", "save_interval", "keep_last",
              "allow_config_change", "compile", "skip_nonfinite"),
    "data": ("root", "cache_dir", "num_workers", "backend", "dali_pipelines", "verify"),
    "model": ("pretrained",),
}  # fmt: skip


def _resumable_keys() -> frozenset[str]:
    cfg = Config()
    for section, names in _RESUMABLE.items():
        unknown = [n for n in names if n not in {f.name for f in dataclasses.fields(getattr(cfg, section))}]
        if unknown:
            raise RuntimeError(f"RESUMABLE_CHANGES names {section}.{unknown}, which the config does not have")
    return frozenset(f"{section}.{n}" for section, names in _RESUMABLE.items() for n in names)


RESUMABLE_CHANGES = _resumable_keys()  # "section.field" keys


# --------------------------------------------------------------------------------------------------------
# device and process group
# --------------------------------------------------------------------------------------------------------
def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}: no CUDA device here; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: torchrun's RANK / LOCAL_RANK / WORLD_SIZE and its device."""

    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """Read torchrun's environment, pick the device, join the group (NCCL on CUDA, gloo on a CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        init_distributed("nccl" if device.type == "cuda" else "gloo", rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(rank, local_rank, world, device)


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


def seed_everything(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """Seed torch, Python and numpy (timm's Mixup draws from numpy) per rank; return the mask generator."""
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    return torch.Generator(device=device).manual_seed(seed * 1000 + rank)


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # pragma: no cover - not POSIX
        return 0.0


def fault_injection(step: int) -> None:
    """Test hooks. MARVIT_FAULT_STEP=k (and MARVIT_FAULT_RANK) crashes that rank at step k, first attempt
    only. MARVIT_HOLD_STEP=k with MARVIT_HOLD_FILE=F holds the run at step k while F exists (a test that
    needs a run to be alive at a known point, e.g. two runs on one out_dir)."""
    hold, hold_file = os.environ.get("MARVIT_HOLD_STEP"), os.environ.get("MARVIT_HOLD_FILE")
    if hold is not None and hold_file and int(hold) == step:
        deadline = time.time() + 600
        while Path(hold_file).exists() and time.time() < deadline:
            time.sleep(0.05)
    at = os.environ.get("MARVIT_FAULT_STEP")
    if at is None or int(at) != step or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    if int(os.environ.get("RANK", "0")) == int(os.environ.get("MARVIT_FAULT_RANK", "0")):
        raise RuntimeError(f"injected fault at step {step} (MARVIT_FAULT_STEP)")


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------
def check_data(cfg: Config, need_val: bool = False) -> set[str]:
    """Fail before any work starts when the data cannot be what the config says; returns the splits.

    Also fills ``data.flip_label_map`` from the manifest when the data set declares one.
    """
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
    wanted = "val" if need_val else "train"
    if wanted not in info["splits"]:
        raise ConfigError(
            f"data.root={root!r}: the manifest has no {wanted!r} split (has {sorted(info['splits'])})"
        )
    if cfg.data.flip and cfg.data.flip_pairs:
        # direction pairs named by label text, resolved through this data set's class list
        from marvit.train.recipe import resolve_flip_pairs

        cfg.data.flip_label_map = resolve_flip_pairs(
            cfg.data.flip_pairs, info["classes"], f"{root}/manifest.json"
        )
        print(f"data.flip_pairs -> data.flip_label_map {cfg.data.flip_label_map}")
    elif cfg.data.flip and cfg.data.flip_label_map is None and info.get("flip_map"):
        # the data set declares which classes swap under a horizontal flip (e.g. move_left <-> move_right)
        cfg.data.flip_label_map = {int(k): int(v) for k, v in info["flip_map"].items()}
        print(f"data.flip_label_map from {Path(root) / 'manifest.json'}: {cfg.data.flip_label_map}")
    n = len(info["classes"])
    if cfg.train.scheme != "pretrain" and n != cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes}: the data set at {root} has {n} classes"
        )
    return set(info["splits"])


def check_shards(cfg: Config, splits: set[str]) -> None:
    """Every shard of the splits the run reads against the manifest, before any step: present, of the
    recorded size, with the recorded sample count (tar headers and index); their sha256 too with
    ``data.verify=checksum`` (off by default: hashing hundreds of GB at every start costs more than a bad
    shard, which ``marvit verify`` finds)."""
    if cfg.data.backend == "synthetic":
        return
    from marvit.pipeline.shards import check_shards as check

    for split in sorted(splits & {"train", "val"}):
        check(cfg.data.root, split, checksums=cfg.data.verify == "checksum")


def build_data_loader(cfg: Config, split: str, train: bool, rank: int, world: int, device, epoch: int = 0):
    """The loader of ``split`` for this rank, whatever the backend (``data.backend``)."""
    from marvit.pipeline import build_loader

    return build_loader(cfg.data, split, train=train, rank=rank, world_size=world, device=device,
                        seed=cfg.train.seed, epoch=epoch, num_classes=cfg.model.num_classes)  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# the run directory
# --------------------------------------------------------------------------------------------------------
def take_lock(lock: Path, data: bytes) -> None:
    """Create ``lock`` holding ``data``, complete or not at all (:func:`marvit.pipeline.dirlock.link_whole`);
    FileExistsError when it exists; a full disk raises an OSError naming the lock and leaves nothing."""
    fsio.fault(lock)
    link_whole(lock, data)


def _debris(lock: Path, grace_s: float = 5.0) -> bool:
    """An unreadable lock older than ``grace_s``: locks are linked into place complete, so it is what a
    failed write of an older marvit left (the grace covers such a writer that is still writing)."""
    try:
        return time.time() - lock.stat().st_mtime > grace_s
    except OSError:
        return False


class RunDir:
    """``train.out_dir``, owned by one run: lock, stale-file cleanup, metrics, config comparison."""

    LOCK = "run.lock"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._locked = False

    # ---- ownership -------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Create the directory and take its lock, or refuse (InputError) while another run holds it."""
        writable_dir(self.path, "train.out_dir")
        lock = self.path / self.LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                take_lock(lock, (json.dumps(me) + "\n").encode())
            except FileExistsError:
                holder = read_holder(lock)
                if holder is not None and holder_gone(holder):
                    print(f"{lock}: taking over the stale lock of pid {holder['pid']} (no longer running)")
                    lock.unlink(missing_ok=True)
                    continue
                if holder is None and _debris(lock):
                    print(f"{lock}: taking over an empty or unreadable lock (left by a failed write)")
                    lock.unlink(missing_ok=True)
                    continue
                who = "an unreadable lock" if holder is None else f"pid {holder['pid']} on {holder['host']}"
                raise InputError(
                    f"train.out_dir={str(self.path)!r}: another run is using it ({who}, {lock}); "
                    "choose another train.out_dir, or wait for that run to end (remove the lock file only "
                    "if you are sure no run uses it)"
                ) from None
            self._locked = True
            return
        raise InputError(f"{lock}: could not take the lock; another run may be starting in this directory")

    def release(self) -> None:
        if self._locked:
            (self.path / self.LOCK).unlink(missing_ok=True)
            self._locked = False

    # ---- what an earlier run left ------------------------------------------------------------------
    def remove_stale_temporaries(self) -> list[Path]:
        """Temporary checkpoint directories a save killed half-way left behind (``checkpoints/.tmp_*``)."""
        root = self.path / "checkpoints"
        stale = sorted(root.glob(".tmp_*")) if root.is_dir() else []
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return stale

    def has_checkpoints(self) -> bool:
        from marvit.train.checkpoint import latest_checkpoint

        return latest_checkpoint(self.path) is not None

    def truncate_metrics(self, step: int) -> int:
        """Keep the ``metrics.jsonl`` rows of steps <= ``step`` (the resumed step); return how many were cut."""
        f = self.path / "metrics.jsonl"
        if not f.is_file():
            return 0
        kept, cut = [], 0
        for line in f.read_text().splitlines():
            try:
                row_step = json.loads(line).get("step", 0)
            except ValueError:  # a line half-written when the run was killed
                cut += 1
                continue
            if row_step <= step:
                kept.append(line)
            else:
                cut += 1
        atomic_write_bytes(f, "".join(x + "\n" for x in kept).encode())
        return cut


def config_changes(saved_yaml: str, cfg: Config) -> list[str]:
    """The keys whose values differ between a checkpoint's config and ``cfg``, except those in
    :data:`RESUMABLE_CHANGES`, as ``key: saved -> now`` lines."""
    saved = _flatten(yaml.safe_load(saved_yaml) or {})
    now = _flatten(cfg.to_dict())
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in RESUMABLE_CHANGES or key.startswith("data.flip_label_map"):
            continue
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and prefix == "":
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------------------------------
# compilation
# --------------------------------------------------------------------------------------------------------
def compile_blocks(model: torch.nn.Module) -> int:
    """``torch.compile`` every transformer block in place (regional compilation); returns how many.

    Blocks are where the time goes and have static shapes in a run (MAR keeps the same number of visible
    tokens in every clip), so each compiles once per shape; ``fullgraph=True`` makes a graph break inside a
    block an error instead of a silent slowdown. Compiling in place keeps the parameter names, so
    checkpoints and DDP see the same model. The patch embedding (a Triton kernel on CUDA) stays eager.
    """
    from marvit.model.layers import Block

    # one Block.forward serves every block: encoder (with and without drop path), bridging and decoder
    # blocks (other widths and head counts), each in training and evaluation; room for all of them
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    n = 0
    for m in model.modules():
        if isinstance(m, Block):
            m.compile(fullgraph=True)
            n += 1
    return n
