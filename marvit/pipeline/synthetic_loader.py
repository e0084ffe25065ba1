"""An in-memory synthetic clip source (``data.backend=synthetic``) for throughput runs and exact tests.

It decodes nothing: sample ``i`` of a split is a drifting sinusoid grating whose drift direction is its
class, plus noise, generated from ``seed`` and ``i`` alone. A class is therefore a motion, not a frame, and
the same sample is the same clip whatever the rank, worker or resume point. Ranks take samples ``r::world``
and batch ``k`` of rank ``r`` holds samples ``(k*B + j) * world + r``, so the union over ranks of batch
``k`` is batch ``k`` of one process with a ``world``-times larger batch: what a DDP equivalence test needs.
Training epochs are permuted by ``seed + epoch`` (the same permutation on every rank). With
``repeated_aug`` R a training batch holds each clip R times in a row (there is no augmentation to vary), as
the real loaders' ``B * R`` rows. Batches are random access, so ``iter_from(k)`` replays nothing.
"""

from __future__ import annotations

import math

import torch

from marvit.config import DataConfig


def synthetic_clip(
    index: int, seed: int, num_classes: int, frames: int, size: int
) -> tuple[torch.Tensor, int]:
    """Clip ``(3, T, S, S)`` in [0, 1] and its label: a grating drifting in one of ``num_classes`` directions."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    label = index % num_classes
    angle = 2 * math.pi * label / num_classes
    freq = 2 * math.pi / (size / 4)
    phase0 = float(torch.rand(1, generator=g)) * 2 * math.pi
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    y = torch.arange(size, dtype=torch.float32).view(1, size, 1)
    x = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    wave = torch.sin(freq * (x * math.cos(angle) + y * math.sin(angle)) - 0.8 * t + phase0)  # (T, S, S)
    color = 0.3 + 0.7 * torch.rand(3, 1, 1, 1, generator=g)
    clip = 0.5 + 0.35 * color * wave[None] + 0.05 * torch.randn(3, frames, size, size, generator=g)
    return clip.clamp_(0, 1), label


class SyntheticLoader:
    """Batches of ``synthetic_clip`` normalized like real data: ``video`` (B, 3, T, S, S), ``label`` (B,)."""

    def __init__(
        self, cfg: DataConfig, split: str, num_classes: int, num_samples: int, train: bool, rank: int = 0,
        world_size: int = 1, device: torch.device | str = "cpu", seed: int = 0, epoch: int = 0,
    ) -> None:  # fmt: skip
        self.cfg, self.split, self.num_classes, self.train = cfg, split, num_classes, train
        self.rank, self.world, self.device = rank, world_size, torch.device(device)
        self.seed = seed + (0 if split == "train" else 7919)
        self.num_samples = num_samples
        self.epoch = epoch
        self.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(cfg.std).view(1, 3, 1, 1, 1)

    def __len__(self) -> int:
        per_rank = self.num_samples // self.world if self.train else math.ceil(self.num_samples / self.world)
        return per_rank // self.cfg.batch_size if self.train else math.ceil(per_rank / self.cfg.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        """Batch ``k`` of the current epoch on this rank (random access: resuming needs no replay)."""
        b = self.cfg.batch_size
        if self.train:
            order = torch.randperm(
                self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch)
            )
        else:
            order = torch.arange(self.num_samples)
        ids = [(k * b + j) * self.world + self.rank for j in range(b)]
        ids = [int(order[i]) for i in ids if i < self.num_samples]
        clips, labels = zip(*(synthetic_clip(i, self.seed, self.num_classes, self.cfg.num_frames,
                                             self.cfg.img_size) for i in ids))  # fmt: skip
        video = (torch.stack(clips) - self.mean) / self.std  # (B, 3, T, S, S)
        label = torch.tensor(labels)
        r = self.cfg.repeated_aug if self.train else 1
        if r > 1:  # (B * R, ...), the views of a clip in consecutive rows
            video, label = video.repeat_interleave(r, dim=0), label.repeat_interleave(r)
        out = {"video": video.to(self.device), "label": label.to(self.device)}
        if not self.train:
            out["video_id"] = torch.tensor(ids, device=self.device)
            out["view"] = torch.zeros(len(ids), dtype=torch.long, device=self.device)
        return out

    def skipped(self) -> dict:
        return {"count": 0, "reasons": {}, "samples": []}

    def iter_from(self, k: int):
        """Batches ``k, k + 1, ...`` of the current epoch."""
        if not 0 <= k <= len(self):
            raise ValueError(f"iter_from({k}): this loader has {len(self)} batches per epoch")
        return (self.batch(i) for i in range(k, len(self)))

    def __iter__(self):
        return self.iter_from(0)
