"""Data: datasets -> WebDataset shards -> decoded, augmented clips on the device.

``build_loader`` is the one way to get batches, for every backend: the DALI graph (:mod:`.dali_loader`),
its PyAV twin (:mod:`.pyav_loader`), which share frame sampling (:mod:`.sampling`) and the augmentation
recipe (:class:`.augment.AugmentRecipe`), and the in-memory synthetic source (:mod:`.synthetic_loader`).
Every loader it returns keeps one contract:

- ``len(loader)``: batches per epoch on this rank (training: the same on every rank, so DDP ranks step
  together);
- ``loader.set_epoch(e)``: the next pass is epoch ``e`` (its shard order and seeds);
- ``loader.iter_from(k)``: the current epoch's batches from batch ``k`` on (resume), and
  ``iter(loader) == loader.iter_from(0)``;
- ``loader.skipped()``: ``{"count": int, "reasons": {reason: count}, "samples": [...]}``, the samples
  skipped so far on this rank (a missing member, a video that does not decode, ``.cls`` and ``.json``
  naming different classes, a shard changed or cut short under the loader), each reason warned once; and
  ``"repeated": int`` when an epoch that lost samples was filled with repeats of others.

The contract and every stage after decoding live once, in :mod:`.core`; a backend only produces uint8
clips, labels and flip flags.

Batches are dicts:

- ``video``: float32 ``(B, 3, T, H, W)`` normalized with ``data_cfg.mean/std``, on ``device``;
- ``label``: int64 ``(B,)``;
- evaluation adds ``video_id`` (the sample's index in the split, the same on every rank) and ``view``
  (``clip * crops + crop``): each video contributes ``test_clips * test_crops`` consecutive rows, so a batch
  of ``batch_size`` videos holds ``batch_size * views`` rows.

Training batches hold ``batch_size * repeated_aug`` rows (repeated augmentation decodes once; the views of
a clip are consecutive rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marvit.config import DataConfig
from marvit.errors import InputError

if TYPE_CHECKING:
    import torch

    from marvit.pipeline.augment import VideoMixup, mixup_fn
    from marvit.pipeline.core import LoaderCore

__all__ = ["build_loader", "mixup_fn", "VideoMixup", "resolve_backend", "check_shards"]

BACKENDS = ("auto", "dali", "pyav", "cached", "synthetic")


def __getattr__(name: str) -> Any:
    # augmentation pulls in timm: imported on first use, so `marvit synth/convert/verify` start fast
    if name in ("VideoMixup", "mixup_fn"):
        from marvit.pipeline import augment

        return getattr(augment, name)
    if name == "check_shards":
        from marvit.pipeline.shards import check_shards

        return check_shards
    raise AttributeError(f"module 'marvit.pipeline' has no attribute {name!r}")


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """The backend ``data.backend`` names; "auto" is the faster one for ``device`` (None: CUDA when there is
    one): on a GPU, DALI ("mixed" decoding on NVDEC and the augmentation on the GPU: the CPUs stay free for
    the readers), when DALI imports and decodes; on a CPU, PyAV, which seeks where DALI's CPU decoder
    decodes from the first frame (measured in :mod:`marvit.pipeline.dali_loader`, "Decode work").
    """
    if backend not in BACKENDS:
        raise InputError(f"data.backend={backend!r}: expected one of {', '.join(repr(b) for b in BACKENDS)}")
    if backend != "auto":
        return backend
    import torch

    dev = torch.device(device) if device is not None else None
    on_gpu = dev.type == "cuda" if dev is not None else torch.cuda.is_available()
    if not on_gpu:
        return "pyav"
    from marvit.pipeline.dali_loader import dali_available

    return "dali" if dali_available() else "pyav"


def build_loader(
    data_cfg: DataConfig,
    split: str,
    *,
    train: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    epoch: int = 0,
    num_classes: int | None = None,
    shards: str | None = None,
) -> LoaderCore:
    """A loader (the contract above, kept by :class:`marvit.pipeline.core.LoaderCore`) over ``split`` of ``data_cfg.root`` (or of ``shards``, a directory or
    pattern), with the backend ``data_cfg.backend`` names.

    ``train`` defaults to ``split == "train"``. ``num_classes`` is needed by the synthetic backend (its
    labels) and ignored by the others."""
    if not 0 <= rank < world_size:
        # the caller's contract (ranks come from the process group), not a user's input
        raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    data_cfg.validate()
    train = split == "train" if train is None else train
    backend = resolve_backend(data_cfg.backend, device)
    if backend == "synthetic":
        from marvit.pipeline.synthetic_loader import SyntheticLoader

        if num_classes is None or num_classes < 1:
            raise InputError(
                f"data.backend=synthetic needs num_classes (the labels it draws), got {num_classes}"
            )
        n = data_cfg.synthetic_samples[0 if split == "train" else 1]
        if train and n // world_size < data_cfg.batch_size:
            raise InputError(
                f"data.synthetic_samples: {n} {split} samples cannot fill one training batch of "
                f"{data_cfg.batch_size} on each of {world_size} ranks; raise it or lower data.batch_size"
            )
        return SyntheticLoader(data_cfg, split, num_classes, n, train, rank, world_size, device, seed=seed,
                               epoch=epoch)  # fmt: skip
    from marvit.pipeline.shards import find_shards

    source = shards or data_cfg.root
    if source is None:
        raise InputError("data.root is not set: point it at a `marvit convert` output directory")
    shard_set = find_shards(source, split)
    if train and shard_set.num_samples // world_size < data_cfg.batch_size:
        raise InputError(
            f"{shard_set.urls[0]}...: {shard_set.num_samples} samples cannot fill one training batch of "
            f"{data_cfg.batch_size} on each of {world_size} ranks; lower data.batch_size"
        )
    kw = dict(train=train, rank=rank, world_size=world_size, device=device, seed=seed, epoch=epoch)
    if backend == "dali":
        from marvit.pipeline.dali_loader import DaliLoader
        from marvit.pipeline.shards import local_shards

        shard_set = local_shards(shard_set, data_cfg.cache_dir, rank, world_size)  # remote: staged, verified

        return DaliLoader(shard_set, data_cfg, **kw)
    if backend == "cached":  # decoded once into memory, augmented per epoch (small data sets: the demo)
        from marvit.pipeline.cached_loader import CachedLoader

        return CachedLoader(shard_set, data_cfg, **kw)
    from marvit.pipeline.pyav_loader import PyavLoader

    return PyavLoader(shard_set, data_cfg, **kw)
