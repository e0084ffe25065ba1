"""Run checkpoints: written atomically, read as data, pruned to the last K plus the best.

A checkpoint is a directory ``OUT/checkpoints/step_{step:08d}/`` holding

- ``model.safetensors``: the weights (marvit's key names, loadable by ``load_pretrained``);
- ``state.pt``: optimizer state, step, epoch, RNG states and metrics, plain tensors and numbers only, so
  ``torch.load(weights_only=True)`` reads it;
- ``config.yaml``: the resolved config.

It is written under a temporary name and renamed into place, so a run killed at any moment leaves either
the previous checkpoint or the new one, never half of one. ``best`` is a copy of the best-scoring one.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from marvit.errors import InputError
from marvit.model.checkpoint import nonfinite_tensors
from marvit.model.mar import TRAIN_ONLY
from marvit.train import fsio

PREFIX = "step_"


def rng_state(mask_gen: torch.Generator | None = None) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    if mask_gen is not None:
        state["mask"] = mask_gen.get_state()
    return state


def set_rng_state(state: dict[str, Any], mask_gen: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if mask_gen is not None and "mask" in state:
        mask_gen.set_state(state["mask"])


def save_checkpoint(
    out_dir: str | Path, model: nn.Module, state: dict[str, Any], config_yaml: str, keep_last: int = 2,
    best: bool = False,
) -> Path:  # fmt: skip
    """Write ``OUT/checkpoints/step_N`` atomically; prune to the ``keep_last`` newest; copy to ``best``."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"{PREFIX}{state['step']:08d}"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = nonfinite_tensors(weights)
    if bad:  # the loop's guard stops a diverged run first; this is the contract
        raise RuntimeError(f"{final}: refusing to save non-finite weights ({', '.join(bad[:5])})")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fsio.fault(root)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp_", dir=root))
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(root)) from None
    try:  # each file written, fsynced and renamed by fsio: a full disk is an OSError naming the file
        fsio.write_file(tmp / "model.safetensors", safetensors_bytes(weights))
        fsio.write_stream(tmp / "state.pt", lambda f: torch.save(state, f))
        fsio.write_file(tmp / "config.yaml", config_yaml.encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space; a resume would remove it anyway
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if best:
        tmp_best = Path(tempfile.mkdtemp(prefix=".tmp_best_", dir=root))
        shutil.rmtree(tmp_best)
        try:
            fsio.fault(root / "best")
            shutil.copytree(final, tmp_best)
        except (OSError, shutil.Error) as e:  # copytree gathers its errors into shutil.Error
            shutil.rmtree(tmp_best, ignore_errors=True)
            code = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
            raise OSError(code, os.strerror(code), str(root / "best")) from None
        if (root / "best").exists():
            shutil.rmtree(root / "best")
        os.replace(tmp_best, root / "best")
    for old in list_checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete step checkpoints, oldest first (temporary directories are ignored)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.glob(f"{PREFIX}*")
        if (p / "state.pt").is_file() and (p / "model.safetensors").is_file()
    ]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from what a user points at: a checkpoint itself, or a run directory
    (``train.out_dir``), whose best checkpoint is used (its newest when none was marked best)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint or run directory")
    if (path / "checkpoints" / "best" / "model.safetensors").is_file():
        return path / "checkpoints" / "best"
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    raise InputError(
        f"{path}: not a marvit checkpoint (no model.safetensors) nor a run directory with checkpoints/"
    )


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Read a checkpoint directory; load its weights into ``model`` strictly (when given); return its state."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise InputError(f"{path}: not a marvit checkpoint (no model.safetensors)")
    if model is not None:
        try:
            weights = load_file(str(path / "model.safetensors"))
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise InputError(f"{path / 'model.safetensors'}: unreadable safetensors file ({e})") from None
        bad = nonfinite_tensors(weights)
        if bad:  # written by an older marvit, or changed on disk: training on from it would be NaN
            raise InputError(f"{path / 'model.safetensors'}: non-finite values (NaN or inf) in {bad[:5]}")
        own = model.state_dict()
        # an evaluation model built without the training-only decoder leaves those weights unused
        weights = {k: v for k, v in weights.items() if k in own or not k.startswith(TRAIN_ONLY)}
        bad = [f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
               for k, v in weights.items() if k in own and own[k].shape != v.shape]  # fmt: skip
        if bad:
            raise InputError(f"{path}: weights do not fit the model's shapes: {bad[:5]}")
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise InputError(
                f"{path}: weights do not fit the model: missing {missing}, unexpected {unexpected}"
            )
    state_file = path / "state.pt"
    if not state_file.is_file():
        return {}
    try:
        return torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, or a truncated file
        raise InputError(f"{state_file}: not a readable weights-only state file ({e})") from None
