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
from collections.abc import Iterator

import torch

from marvit.config import DataConfig
from marvit.pipeline.core import LoaderCore, RawBatch


def synthetic_clip(
    index: int, seed: int, num_classes: int, frames: int, size: int
) -> tuple[torch.Tensor, int]:
    """Clip ``(3, T, S, S)`` in [0, 1] and its label: a grating drifting in one of ``num_classes`` directions."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    label = index % num_classes
    angle = 2 * math.pi * label / num_classes
    freq = 2 * math.pi / (size / 4)
    phase0 = torch.rand((), generator=g) * (2 * math.pi)  # a 0-d tensor: never read back
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    y = torch.arange(size, dtype=torch.float32).view(1, size, 1)
    x = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    wave = torch.sin(freq * (x * math.cos(angle) + y * math.sin(angle)) - 0.8 * t + phase0)  # (T, S, S)
    color = 0.3 + 0.7 * torch.rand(3, 1, 1, 1, generator=g)
    clip = 0.5 + 0.35 * color * wave[None] + 0.05 * torch.randn(3, frames, size, size, generator=g)
    return clip.clamp_(0, 1), label


class SyntheticLoader(LoaderCore):
    """Batches of ``synthetic_clip`` (quantized to uint8, as decoded video is) through the loader core:
    ``video`` (B, 3, T, S, S) normalized like real data, ``label`` (B,). Not augmented (no flip, no erasing)."""

    augments = False

    def __init__(
        self, cfg: DataConfig, split: str, num_classes: int, num_samples: int, train: bool, rank: int = 0,
        world_size: int = 1, device: torch.device | str = "cpu", seed: int = 0, epoch: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(cfg, train=train, rank=rank, world_size=world_size, device=device,
                         seed=seed + (0 if split == "train" else 7919), epoch=epoch)  # fmt: skip
        self.split, self.num_classes = split, num_classes
        self.num_samples = num_samples

    def _eval_len(self) -> int:
        return math.ceil(math.ceil(self.num_samples / self.world_size) / self.batch_size)

    def raw_batch(self, k: int) -> RawBatch:
        """Batch ``k`` of the current epoch on this rank (random access: resuming needs no replay)."""
        b = self.batch_size
        if self.train:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).numpy()  # host ints, no tensor reads
        else:
            order = range(self.num_samples)
        ids = [(k * b + j) * self.world_size + self.rank for j in range(b)]
        ids = [int(order[i]) for i in ids if i < self.num_samples]
        clips, labels = zip(*(synthetic_clip(i, self.seed, self.num_classes, self.cfg.num_frames,
                                             self.cfg.img_size) for i in ids))  # fmt: skip
        # (B, 1, T, S, S, 3) uint8; training repeats each clip R times (nothing to vary between views)
        video = (torch.stack(clips) * 255).round_().to(torch.uint8).permute(0, 2, 3, 4, 1).unsqueeze(1)
        views = self.cfg.repeated_aug if self.train else 1
        video = video.expand(-1, views, -1, -1, -1, -1)
        return RawBatch(video, torch.tensor(labels), video_id=None if self.train else torch.tensor(ids))

    def _raw_train(self, k: int) -> Iterator[RawBatch]:
        return (self.raw_batch(i) for i in range(k, len(self)))

    _raw_eval = _raw_train
