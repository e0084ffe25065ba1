"""Data: datasets -> WebDataset shards -> decoded, augmented clips on the device.

``build_loader`` is what the training loop calls; it picks the DALI graph (:mod:`.dali_loader`) or its
PyAV twin (:mod:`.pyav_loader`), which share frame sampling (:mod:`.sampling`), augmentation semantics
(:mod:`.augment`) and batch format:

- ``video``: float32 ``(B, 3, T, H, W)`` normalized with ``data_cfg.mean/std``, on ``device``;
- ``label``: int64 ``(B,)``;
- evaluation adds ``video_id`` (the sample's index in the split, the same on every rank) and ``view``
  (``clip * crops + crop``): each video contributes ``test_clips * test_crops`` consecutive rows, so a batch
  of ``batch_size`` videos holds ``batch_size * views`` rows.

Training batches hold ``batch_size * repeated_aug`` rows (repeated augmentation decodes once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marvit.config import DataConfig

if TYPE_CHECKING:
    import torch

    from marvit.pipeline.augment import VideoMixup, mixup_fn

__all__ = ["build_loader", "mixup_fn", "VideoMixup", "resolve_backend"]


def __getattr__(name: str) -> Any:
    # augmentation pulls in timm: imported on first use, so `marvit synth/convert/verify` start fast
    if name in ("VideoMixup", "mixup_fn"):
        from marvit.pipeline import augment

        return getattr(augment, name)
    raise AttributeError(f"module 'marvit.pipeline' has no attribute {name!r}")


def resolve_backend(backend: str) -> str:
    """ "auto" -> "dali" when DALI imports and decodes (GPU or CPU), else "pyav"."""
    if backend not in ("auto", "dali", "pyav"):
        raise ValueError(f"backend={backend!r}: expected 'dali', 'pyav' or 'auto'")
    if backend != "auto":
        return backend
    from marvit.pipeline.dali_loader import dali_available

    return "dali" if dali_available() else "pyav"


def build_loader(
    data_cfg: DataConfig,
    split: str,
    backend: str = "auto",
    rank: int = 0,
    world_size: int = 1,
    train: bool | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    epoch: int = 0,
    shards: str | None = None,
):
    """A re-iterable loader over ``split`` of ``data_cfg.root`` (or of ``shards``, a directory or pattern).

    ``train`` defaults to ``split == "train"``. ``len(loader)`` is the batches per epoch on this rank;
    ``loader.set_epoch(e)`` reshuffles (PyAV; DALI reshuffles continuously)."""
    from marvit.pipeline.shards import find_shards

    source = shards or data_cfg.root
    if source is None:
        raise ValueError("data.root is not set: point it at a `marvit convert` output directory")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    data_cfg.validate()
    train = split == "train" if train is None else train
    shard_set = find_shards(source, split)
    if train and shard_set.num_samples // world_size < data_cfg.batch_size:
        raise ValueError(
            f"{shard_set.urls[0]}...: {shard_set.num_samples} samples cannot fill one training batch of "
            f"{data_cfg.batch_size} on each of {world_size} ranks; lower data.batch_size"
        )
    backend = resolve_backend(backend)
    if backend == "dali":
        from marvit.pipeline.dali_loader import DaliLoader

        return DaliLoader(shard_set, data_cfg, train=train, rank=rank, world_size=world_size, device=device,
                          seed=seed + epoch)  # fmt: skip
    from marvit.pipeline.pyav_loader import PyavLoader

    return PyavLoader(shard_set, data_cfg, train=train, rank=rank, world_size=world_size, device=device,
                      seed=seed, epoch=epoch)  # fmt: skip
