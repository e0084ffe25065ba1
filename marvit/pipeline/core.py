"""The loader core: the contract every backend keeps, and the stages every backend shares after decoding.

A backend (DALI, PyAV, cached, synthetic) subclasses :class:`LoaderCore` and only produces raw batches:
uint8 clips, labels and flip flags (:class:`RawBatch`). The core owns the rest, once:

- the contract: ``len(loader)``, ``set_epoch(e)``, ``iter_from(k)`` (bounds checked here), ``iter(loader)``
  and ``skipped()``; the training epoch length :func:`epoch_batches` (the same on every rank, so DDP
  ranks step together);
- after decoding, on the loader's device: normalization to float ``(N, 3, T, S, S)``, repeated
  augmentation's label repeats, the flip-label remap as a device lookup table (:class:`FlipLabels`, no host
  sync), random erasing seeded by (seed, epoch, rank, batch) so a resume reproduces it, and the evaluation
  views' ``video_id``/``view`` rows.

Nothing here reads a tensor back to the host: no ``.tolist()``, ``.item()`` or ``.cpu()`` per batch, so on a
GPU the data path never stalls the training step (tests/test_loader_core.py counts them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from marvit.config import DataConfig
from marvit.pipeline.augment import AugmentRecipe, erase_clips_, normalize
from marvit.pipeline.shards import ShardSet, SkipLog, batch_seed

MEMBERS = ("mp4", "cls", "json")  # the members of a sample, as `marvit convert` writes them


@dataclass
class RawBatch:
    """One batch as a backend hands it over (host or device tensors).

    ``video``: uint8 ``(B, V, T, S, S, 3)`` (V: repeated-augmentation views in training, ``clips * crops``
    test views in evaluation, view = clip * crops + crop); ``label``: int64 ``(B,)``, the class of each clip
    before any flip; ``flipped``: bool ``(B, V)``, training only (None: no view flipped); ``video_id``: int64
    ``(B,)``, evaluation only (the sample's index in the split)."""

    video: torch.Tensor
    label: torch.Tensor
    flipped: torch.Tensor | None = None
    video_id: torch.Tensor | None = None


def shard_bounds(n: int, part: int, parts: int) -> tuple[int, int]:
    """Samples ``[lo, hi)`` of part ``part`` of ``parts`` (DALI's reader shards: floor(n * i / parts))."""
    return n * part // parts, n * (part + 1) // parts


def epoch_batches(num_samples: int, world_size: int, batch_size: int, parts: int = 1) -> int:
    """Training batches per epoch on every rank: each rank reads ``parts`` reader shards of the split (shard
    ``rank * parts + p`` of ``world_size * parts``), each shard gives only full batches of its own samples
    (no sample twice), and every rank steps as often as the poorest one. With ``parts=1`` this is
    ``(num_samples // world_size) // batch_size``."""
    per_rank = []
    for r in range(world_size):
        bounds = (shard_bounds(num_samples, r * parts + p, world_size * parts) for p in range(parts))
        per_rank.append(sum((hi - lo) // batch_size for lo, hi in bounds))
    return min(per_rank)


class FlipLabels:
    """``data.flip_label_map`` (class -> class after a horizontal flip) as a lookup table on the device.

    ``labels(label, flipped)`` -> the label of each view: ``table[label]`` where flipped, else the label;
    classes outside the table map to themselves. Its plain twin is ``flip_map.get(x, x)`` per row."""

    def __init__(self, flip_map: dict[int, int] | None, device: torch.device) -> None:
        self.table = None
        if flip_map:
            n = max(max(flip_map), max(flip_map.values())) + 1
            table = torch.arange(n, dtype=torch.int64)
            table[list(flip_map)] = torch.tensor(list(flip_map.values()), dtype=torch.int64)
            self.table = table.to(device)

    def __call__(self, label: torch.Tensor, flipped: torch.Tensor | None) -> torch.Tensor:
        """label int64 (N,), flipped bool (N,) on the table's device -> int64 (N,)."""
        if self.table is None or flipped is None:
            return label
        n = self.table.shape[0]
        inside = (label >= 0) & (label < n)
        mapped = self.table[label.clamp(0, n - 1)]  # gathered on the device: no host sync
        return torch.where(flipped & inside, mapped, label)


class LoaderCore:
    """The loader contract of :func:`marvit.pipeline.build_loader`. A backend sets ``num_samples`` (and
    ``parts``, the reader shards per rank, when it splits its rank's share) and implements
    ``_raw_train(k)`` / ``_raw_eval(k)`` (raw batches ``k, k + 1, ...`` of the current epoch) and
    ``_eval_len()``."""

    parts = 1  # reader shards per rank (DALI: data.dali_pipelines)
    augments = True  # False: the backend's clips are not augmented (no random erasing either)

    def __init__(self, cfg: DataConfig, *, train: bool, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", seed: int = 0, epoch: int = 0) -> None:  # fmt: skip
        self.cfg, self.train, self.rank, self.world_size = cfg, train, rank, world_size
        self.device = torch.device(device)
        self.seed, self.epoch = seed, epoch
        self.batch_size = cfg.batch_size
        self.recipe = AugmentRecipe.from_config(cfg)
        self.flip_labels = FlipLabels(cfg.flip_label_map, self.device)
        self.num_samples = 0
        self._skips = SkipLog()

    # ---- the contract -------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.train:
            return epoch_batches(self.num_samples, self.world_size, self.batch_size, self.parts)
        return self._eval_len()

    def set_epoch(self, epoch: int) -> None:
        """The next pass is epoch ``epoch``: its shard order and seeds."""
        self.epoch = epoch

    def skipped(self) -> dict:
        """``{"count", "reasons", "samples"}`` of the samples skipped so far on this rank (and ``"repeated"``:
        samples served twice in one epoch to fill it, when any was)."""
        return self._skips.as_dict()

    def __iter__(self) -> Iterator[dict]:
        return self.iter_from(0)

    def iter_from(self, k: int) -> Iterator[dict]:
        """The current epoch's batches from batch ``k`` on (resume)."""
        if not 0 <= k <= len(self):
            raise ValueError(f"iter_from({k}): this loader has {len(self)} batches per epoch")
        if self.train:
            return (self._finish_train(raw, step) for step, raw in enumerate(self._raw_train(k), k))
        return (self._finish_eval(raw) for raw in self._raw_eval(k))

    # ---- the shared stages after decoding -----------------------------------------------------------
    def _finish_train(self, raw: RawBatch, step: int) -> dict[str, torch.Tensor]:
        """uint8 (B, R, T, S, S, 3) -> ``video`` float (B * R, 3, T, S, S), ``label`` (B * R,)."""
        r = raw.video.shape[1]
        video = normalize(raw.video.to(self.device, non_blocking=True).flatten(0, 1), self.cfg.mean,
                          self.cfg.std)  # fmt: skip
        label = raw.label.to(self.device, non_blocking=True).repeat_interleave(r)  # the views are consecutive
        if raw.flipped is not None:
            label = self.flip_labels(label, raw.flipped.to(self.device, non_blocking=True).reshape(-1))
        if self.augments:
            erase_clips_(video, self.recipe, seed=batch_seed(self.seed, self.epoch, self.rank, step))
        return {"video": video, "label": label}

    def _finish_eval(self, raw: RawBatch) -> dict[str, torch.Tensor]:
        """uint8 (B, V, T, S, S, 3) -> ``video`` (B * V, 3, T, S, S), ``label``/``video_id``/``view`` (B * V,)."""
        v = raw.video.shape[1]
        b = raw.label.shape[0]
        video = normalize(raw.video.to(self.device, non_blocking=True).flatten(0, 1), self.cfg.mean,
                          self.cfg.std)  # fmt: skip
        return {
            "video": video,
            "label": raw.label.to(self.device, non_blocking=True).repeat_interleave(v),
            "video_id": raw.video_id.to(self.device, non_blocking=True).repeat_interleave(v),
            "view": torch.arange(v, device=self.device).repeat(b),
        }

    # ---- what a backend provides ----------------------------------------------------------------------
    def _raw_train(self, k: int) -> Iterator[RawBatch]:
        raise NotImplementedError

    def _raw_eval(self, k: int) -> Iterator[RawBatch]:
        raise NotImplementedError

    def _eval_len(self) -> int:
        raise NotImplementedError


class ShardLoader(LoaderCore):
    """A backend over one split's shards (DALI, PyAV, cached): ``Backend(shards, cfg, train=..., rank=...,
    world_size=..., device=..., seed=..., epoch=...)``; its own set-up goes in ``_open()``."""

    def __init__(self, shards: ShardSet, cfg: DataConfig, *, train: bool, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", seed: int = 0, epoch: int = 0) -> None:  # fmt: skip
        super().__init__(cfg, train=train, rank=rank, world_size=world_size, device=device, seed=seed,
                         epoch=epoch)  # fmt: skip
        self.shards = shards
        self.num_samples = shards.num_samples
        self._open()

    def _open(self) -> None:
        """The backend's set-up, after the contract's state is in place."""


def shard_stats(urls: list[str]) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every local shard file: what a loader checks before it reads one again."""
    out = {}
    for u in urls:
        try:
            st = os.stat(u)
        except OSError:  # not a local file (a URL): nothing to compare
            continue
        out[u] = (st.st_size, st.st_mtime_ns)
    return out


def shard_changed(url: str, stat: tuple[int, int] | None) -> bool:
    """Whether the local shard ``url`` is no longer the file of ``stat`` (size or mtime differ, or gone)."""
    if stat is None:
        return False
    try:
        st = os.stat(url)
    except OSError:
        return True
    return (st.st_size, st.st_mtime_ns) != stat
