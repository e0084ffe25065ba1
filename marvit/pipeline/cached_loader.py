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

import numpy as np
import torch
import webdataset as wds

from marvit.pipeline import sampling
from marvit.pipeline.augment import ClipTrainAugment, clip_test_views
from marvit.pipeline.core import MEMBERS, RawBatch, ShardLoader
from marvit.pipeline.pyav_loader import DECODE_ERRORS, decode_clip
from marvit.pipeline.shards import CorruptSample, ShardSet, parse_meta


class CachedLoader(ShardLoader):
    """The loader contract of :func:`marvit.pipeline.build_loader` over clips decoded once into memory."""

    def _open(self) -> None:
        self._frames: list[np.ndarray] = []  # training: every frame of each video, uint8 (n, H, W, 3)
        self._views: list[np.ndarray] = []  # evaluation: the test views, uint8 (V, T, S, S, 3)
        self._labels: list[int] = []
        self._ids: list[int] = []
        for sample, gid in self._samples(self.shards):
            self._add(sample, gid)

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
        try:
            n, label = parse_meta(sample["json"], sample["cls"], where)
        except CorruptSample as e:
            self._skips.add(e.reason, where, str(e))
            return
        try:
            if self.train:
                frames = decode_clip(sample["mp4"], np.arange(n))  # (n, H, W, 3)
            else:
                idx = sampling.clip_indices(cfg.sampling, n, cfg.num_frames, cfg.sampling_rate, False,
                                            cfg.test_clips)  # fmt: skip
                frames = decode_clip(sample["mp4"], idx.reshape(-1))
        except DECODE_ERRORS as e:
            self._skips.add("undecodable video", where, str(e)[:200])
            return
        if self.train:
            self._frames.append(frames)
        else:
            self._views.append(clip_test_views(frames, cfg.test_clips, cfg))  # (V, T, S, S, 3)
        self._labels.append(label)
        self._ids.append(gid)

    # ---- raw batches: random access, nothing is replayed --------------------------------------------
    def _eval_len(self) -> int:
        return math.ceil(len(self._ids) / self.batch_size)

    def _raw_train(self, k: int) -> Iterator[RawBatch]:
        return (self._train_batch(i) for i in range(k, len(self)))

    def _raw_eval(self, k: int) -> Iterator[RawBatch]:
        return (self._eval_batch(i) for i in range(k, len(self)))

    def _train_batch(self, k: int) -> RawBatch:
        cfg, b, r = self.cfg, self.batch_size, self.cfg.repeated_aug
        n = len(self._frames)
        if n == 0:
            raise ValueError("no decodable training video on this rank: see loader.skipped()")
        order = np.random.default_rng([self.seed, self.epoch, self.rank, 0x5C]).permutation(n)
        aug = ClipTrainAugment(self.recipe, cfg.img_size)
        out = np.empty((b, r, cfg.num_frames, cfg.img_size, cfg.img_size, 3), np.uint8)
        labels, flips = [], np.zeros((b, r), bool)
        for j in range(b):
            if k * b + j >= n:  # a rank with skipped videos wraps round to keep batches full: say so
                self._skips.repeat()
            i = int(order[(k * b + j) % n])
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, k, j])  # this clip's draws
            frames = self._frames[i]
            idx = sampling.clip_indices(cfg.sampling, len(frames), cfg.num_frames, cfg.sampling_rate, True,
                                        1, rng.random(cfg.num_frames))  # fmt: skip
            clip, shared = frames[idx], None
            for v in range(r):
                _, flips[j, v], _ = aug(clip, rng, out=out[j, v], flip=shared)
                if not self.recipe.flip_per_view:
                    shared = flips[j, v]
            labels.append(self._labels[i])
        return RawBatch(torch.from_numpy(out), torch.tensor(labels), torch.from_numpy(flips))

    def _eval_batch(self, k: int) -> RawBatch:
        b = self.batch_size
        sel = range(k * b, min((k + 1) * b, len(self._ids)))
        return RawBatch(
            torch.from_numpy(np.stack([self._views[i] for i in sel])),  # (B, V, T, S, S, 3)
            torch.tensor([self._labels[i] for i in sel], dtype=torch.int64),
            video_id=torch.tensor([self._ids[i] for i in sel], dtype=torch.int64),
        )
