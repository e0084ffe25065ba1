"""The cached loader: decode every video of the split once, then serve augmented clips from memory.

For data sets that fit in memory (the demo's: a few hundred 64x64 clips, about 150 MB of uint8 frames),
re-decoding every video every epoch costs as much CPU as the model's step, on the same cores, and it
costs both schemes the same, which hides MAR's saving in the wall clock. This loader decodes each video
once, in this process, with the PyAV loader's decoder (:func:`marvit.pipeline.pyav_loader.decode_clip`),
and then does per epoch only what the PyAV loader does after decoding: the same frame sampling
(:mod:`marvit.pipeline.sampling`), the same training augmentation (:class:`.augment.ClipTrainAugment` on
the recipe, one numpy generator per clip), the same test views (:func:`.augment.clip_test_views`), the same
normalization and random erasing. Evaluation views are fixed, so they are cut once and kept.

Deterministic by construction: no worker processes, and every draw comes from a generator seeded by
(seed, epoch, rank, batch, row), so a batch is a function of those numbers alone (``iter_from(k)`` resumes
without replaying). Ranks take samples ``rank::world_size`` of the split in shard order; training permutes a
rank's samples per epoch and yields ``(num_samples // world_size) // batch_size`` batches on every rank.
A video that does not decode (or a sample without its members) is skipped and counted, never a crash.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import av
import numpy as np
import torch
import webdataset as wds

from marvit.config import DataConfig
from marvit.pipeline import sampling
from marvit.pipeline.augment import AugmentRecipe, ClipTrainAugment, clip_test_views, erase_clips_, normalize
from marvit.pipeline.pyav_loader import decode_clip
from marvit.pipeline.shards import ShardSet, SkipLog, batch_seed, parse_meta

MEMBERS = ("mp4", "cls", "json")


class CachedLoader:
    """The loader contract of :func:`marvit.pipeline.build_loader` over clips decoded once into memory."""

    def __init__(self, shards: ShardSet, cfg: DataConfig, *, train: bool, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", seed: int = 0, epoch: int = 0) -> None:  # fmt: skip
        self.cfg, self.train = cfg, train
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, epoch
        self.device = torch.device(device)
        self.recipe = AugmentRecipe.from_config(cfg)
        self._skips = SkipLog()
        self._frames: list[np.ndarray] = []  # training: every frame of each video, uint8 (n, H, W, 3)
        self._views: list[np.ndarray] = []  # evaluation: the test views, uint8 (V, T, S, S, 3)
        self._labels: list[int] = []
        self._ids: list[int] = []
        for sample, gid in self._samples(shards):
            self._add(sample, gid)
        # training: the same number of batches on every rank (DDP ranks step together)
        self._train_len = (shards.num_samples // world_size) // cfg.batch_size

    # ---- decoding, once ---------------------------------------------------------------------------
    def _samples(self, shards: ShardSet) -> Iterator[tuple[dict, int]]:
        """(raw sample, id in the split) of this rank, in shard order."""
        ids = shards.key_ids() if shards.index_paths is not None else None
        i = 0
        for url, start in zip(shards.urls, shards.starts):
            stream = wds.tarfile_to_samples(handler=wds.warn_and_continue)(iter([{"url": url}]))
            for p, sample in enumerate(stream):
                if i % self.world_size == self.rank:
                    gid = ids.get((url, sample["__key__"]), start + p) if ids is not None else start + p
                    yield sample, gid
                i += 1

    def _add(self, sample: dict, gid: int) -> None:
        cfg = self.cfg
        where = f"{sample.get('__url__')} sample {sample.get('__key__')!r}"
        missing = [e for e in MEMBERS if e not in sample]
        if missing:
            self._skips.add("missing member", where, f"no .{missing[0]}")
            return
        n, label = parse_meta(sample["json"], sample["cls"], where)
        try:
            if self.train:
                frames = decode_clip(sample["mp4"], np.arange(n))  # (n, H, W, 3)
            else:
                idx = sampling.clip_indices(cfg.sampling, n, cfg.num_frames, cfg.sampling_rate, False,
                                            cfg.test_clips)  # fmt: skip
                frames = decode_clip(sample["mp4"], idx.reshape(-1))
        except (av.error.FFmpegError, ValueError, IndexError, OSError) as e:
            self._skips.add("undecodable video", where, str(e)[:200])
            return
        if self.train:
            self._frames.append(frames)
        else:
            self._views.append(clip_test_views(frames, cfg.test_clips, cfg))  # (V, T, S, S, 3)
        self._labels.append(label)
        self._ids.append(gid)

    # ---- the contract -----------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.train:
            return self._train_len
        return math.ceil(len(self._ids) / self.cfg.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skipped(self) -> dict:
        return self._skips.as_dict()

    def __iter__(self) -> Iterator[dict]:
        return self.iter_from(0)

    def iter_from(self, k: int) -> Iterator[dict]:
        """The current epoch's batches from batch ``k`` on (random access: nothing is replayed)."""
        if not 0 <= k <= len(self):
            raise ValueError(f"iter_from({k}): this loader has {len(self)} batches per epoch")
        return (self.batch(i) for i in range(k, len(self)))

    def batch(self, k: int) -> dict:
        """Batch ``k`` of the current epoch on this rank."""
        return self._train_batch(k) if self.train else self._eval_batch(k)

    def _train_batch(self, k: int) -> dict:
        cfg, b, r = self.cfg, self.cfg.batch_size, self.cfg.repeated_aug
        n = len(self._frames)
        if n == 0:
            raise ValueError("no decodable training video on this rank: see loader.skipped()")
        order = np.random.default_rng([self.seed, self.epoch, self.rank, 0x5C]).permutation(n)
        aug = ClipTrainAugment(self.recipe, cfg.img_size)
        fmap = cfg.flip_label_map or {}
        out = np.empty((b, r, cfg.num_frames, cfg.img_size, cfg.img_size, 3), np.uint8)
        labels = []
        for j in range(b):
            i = int(order[(k * b + j) % n])  # a rank with skipped videos wraps round to keep batches full
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, k, j])  # this clip's draws
            frames = self._frames[i]
            idx = sampling.clip_indices(cfg.sampling, len(frames), cfg.num_frames, cfg.sampling_rate, True,
                                        1, rng.random(cfg.num_frames))  # fmt: skip
            clip, shared = frames[idx], None
            for v in range(r):
                _, flipped, _ = aug(clip, rng, out=out[j, v], flip=shared)
                if not self.recipe.flip_per_view:
                    shared = flipped
                labels.append(fmap.get(self._labels[i], self._labels[i]) if flipped else self._labels[i])
        video = normalize(torch.from_numpy(out).flatten(0, 1), cfg.mean, cfg.std)  # (B * R, 3, T, S, S)
        erase_clips_(video, self.recipe, seed=batch_seed(self.seed, self.epoch, self.rank, k))
        return {"video": video.to(self.device), "label": torch.tensor(labels, device=self.device)}

    def _eval_batch(self, k: int) -> dict:
        b = self.cfg.batch_size
        sel = range(k * b, min((k + 1) * b, len(self._ids)))
        views = np.stack([self._views[i] for i in sel])  # (B, V, T, S, S, 3)
        v = views.shape[1]
        video = normalize(torch.from_numpy(views).flatten(0, 1), self.cfg.mean, self.cfg.std)  # (B * V, ...)
        ids = torch.tensor([self._ids[i] for i in sel], dtype=torch.int64)
        labels = torch.tensor([self._labels[i] for i in sel], dtype=torch.int64)
        return {
            "video": video.to(self.device),
            "label": labels.repeat_interleave(v).to(self.device),
            "video_id": ids.repeat_interleave(v).to(self.device),
            "view": torch.arange(v).repeat(len(sel)).to(self.device),
        }
