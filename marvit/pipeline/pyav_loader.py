"""The PyAV loader: webdataset shards -> PyAV decoding in DataLoader workers -> torch augmentation.

It runs wherever DALI cannot and has the same semantics as the DALI graph: the same frame indices
(:mod:`marvit.pipeline.sampling`), the same augmentation recipe (:class:`marvit.pipeline.augment.AugmentRecipe`,
one random choice per clip and view), the same batch dicts. Workers hand over uint8 clips (4x smaller than
float in shared memory); normalization and random erasing run on the device batch.

Splitting, with rank and world size passed explicitly (no reliance on torch.distributed being set up): a
split with at least ``world_size`` shards is split by shard across ranks (as ``wds.split_by_node``), and a
rank's shards likewise across its DataLoader workers (as ``wds.split_by_worker``); where there are fewer
shards than parts, every part reads the same shard stream and keeps every k-th sample, so each sample
still goes to exactly one worker of one rank. Evaluation reads each of the rank's samples exactly once.

Training, for class mixing: the shard order is permuted per epoch (the same order on every rank,
:func:`marvit.pipeline.shards.epoch_order`); a worker reads ``OPEN_SHARDS`` of its shards at once,
interleaved at random, into a shuffle buffer of ``SHUFFLE_BUFFER`` samples (or the worker's share of the
split, when smaller); the stream is endless and
stops after ``len(loader)`` = ``(num_samples // world_size) // batch_size`` batches, the same on every rank.
Every random draw of a clip (frame window, augmentation) comes from a generator seeded by its position in
its worker's stream, so ``iter_from(k)`` skips the first ``k`` batches without decoding them and yields the
batches an uninterrupted pass would have (exactly, unless a video before the resume point fails to decode).

Bad samples are skipped and counted (``loader.skipped()``, warned once per reason): a sample that lacks its
``.mp4``, ``.cls`` or ``.json`` member, a video that does not decode (FFmpeg's error detection is strict,
:data:`ERR_DETECT`: a corrupt payload is an error, not concealed garbage), a ``.cls`` that names another
class than its ``.json``, and every sample of a shard that changed (size, modification time) since the
loader started or cannot be read to its end. A sample lost this way is counted once per epoch; when a worker
runs out of samples it starts another pass over its shards and each sample it serves twice is counted too
(``skipped()["repeated"]``). A ``.json``/``.cls`` that is there but malformed is a broken shard and raises
:class:`marvit.errors.InputError` naming it. Workers hand over uint8 clips, labels and flip flags;
normalization, the flip-label remap and random erasing run in the loader core (:mod:`.core`).
"""

from __future__ import annotations

import io
import itertools
import tarfile
from collections.abc import Iterator

import av
import numpy as np
import torch
import webdataset as wds
from av.video.reformatter import VideoReformatter
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from marvit.config import DataConfig
from marvit.pipeline import sampling
from marvit.pipeline.augment import AugmentRecipe, ClipTrainAugment, clip_test_views
from marvit.pipeline.core import MEMBERS, RawBatch, ShardLoader, shard_changed, shard_stats
from marvit.pipeline.remote import shard_samples
from marvit.pipeline.shards import CorruptSample, ShardSet, epoch_order, parse_meta

SHUFFLE_BUFFER = 256  # samples (encoded) per worker
OPEN_SHARDS = 4  # shards a training worker reads at once
# what a video that does not decode raises (PyAV, and decode_clip's own checks)
DECODE_ERRORS = (av.error.FFmpegError, ValueError, IndexError, OSError)
# FFmpeg's error detection for decoding: stop at the first bitstream error instead of concealing it. Random
# bytes over 8 bytes of the coded frames of 40 small clips: 18 decoded silently to other pixels with FFmpeg's
# default, all 18 raise with this (15 of 18 with "explode" alone); clean x264 streams decode as before.
ERR_DETECT = "careful+compliant+aggressive+explode"
# where a shard cannot be read to its end (truncated, replaced or gone under a running loader)
SHARD_ERRORS = (OSError, tarfile.TarError, ValueError, EOFError)


def decode_clip(data: bytes, indices: np.ndarray) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed) of an in-memory video.

    Seeks to the keyframe before the first wanted frame (frame numbers from the stream's rate and
    timestamps), decodes forward to the last one and converts only wanted frames to RGB with one reused
    reformatter. Indices past the end repeat the last frame. -> uint8 (len(indices), H, W, 3)"""
    indices = np.asarray(indices, np.int64).reshape(-1)
    out = _decode(data, indices, seek=True)
    return out if out is not None else _decode(data, indices, seek=False)


def _decode(data: bytes, indices: np.ndarray, seek: bool) -> np.ndarray | None:
    """``seek=False`` is the plain path (decode from frame 0, counting frames). With ``seek=True`` it returns
    None where timestamps cannot be trusted, and the caller falls back to the plain path."""
    want = set(indices.tolist())
    first, hi = min(want), max(want)
    got: dict[int, np.ndarray] = {}
    ref = VideoReformatter()
    last_frame, last_i = None, -1
    with av.open(io.BytesIO(data), mode="r") as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        s = c.streams.video[0]
        # a corrupt payload is an error, not concealed garbage frames (random bytes in an H.264 stream)
        s.codec_context.options = {"err_detect": ERR_DETECT}
        rate, tb, start = s.average_rate, s.time_base, s.start_time or 0
        i: int | None = 0
        if seek and first > 0:
            if not (rate and tb):
                return None
            c.seek(start + int(first / (rate * tb)), stream=s, backward=True, any_frame=False)
            i = None  # learnt from the first decoded frame's timestamp
        for frame in c.decode(s):
            if i is None:
                if frame.pts is None:
                    return None
                i = int(round(float((frame.pts - start) * tb * rate)))
                if i > first:  # the seek overshot
                    return None
            if i in want:
                got[i] = ref.reformat(frame, format="rgb24").to_ndarray()
            last_frame, last_i = frame, i
            if i >= hi:
                break
            i += 1
    if last_frame is None:
        if seek:
            return None
        raise ValueError("no decodable frames")
    if last_i not in got:  # the video ended early: its last frame stands in for the rest
        got[last_i] = ref.reformat(last_frame, format="rgb24").to_ndarray()
    return np.stack([got[min(int(k), last_i)] for k in indices])


def _plan(n_shards: int, rank: int, world_size: int, worker: int, workers: int) -> tuple[slice, int, int]:
    """Which shards (a slice of the shard order) this worker of this rank reads, and the sample filter
    ``i % k == j`` over the stream of those shards."""
    if n_shards >= world_size:
        node = slice(rank, None, world_size)  # by shard across ranks (split_by_node)
        if len(range(n_shards)[node]) >= workers:  # and by shard across this rank's workers
            return slice(rank + world_size * worker, None, world_size * workers), 1, 0
        return node, workers, worker
    return slice(None), world_size * workers, rank + world_size * worker


class _ClipStream(IterableDataset):
    """Per worker: its shards -> samples -> decoded, sampled, augmented clips -> batches (uint8)."""

    def __init__(self, shards: ShardSet, cfg: DataConfig, train: bool, rank: int, world_size: int, seed: int,
                 epoch: int, start: int = 0, stats: dict | None = None) -> None:  # fmt: skip
        self.shards, self.cfg, self.train = shards, cfg, train
        self.stats = stats or {}  # shard -> (size, mtime) when the loader started: a change is a loss
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, epoch
        self.start = start  # training: the batch to start from (resume)
        self.recipe = AugmentRecipe.from_config(cfg)
        self.ids = shards.key_ids() if shards.index_paths is not None else None

    def _worker(self) -> tuple[int, int]:
        wi = get_worker_info()
        return (wi.id, wi.num_workers) if wi is not None else (0, 1)

    def _interleave(self, urls: list[str], rng: np.random.Generator) -> Iterator[dict]:
        """Samples of ``urls``: ``OPEN_SHARDS`` of them open at a time, each next sample from one at random."""
        todo = iter(urls)
        open_: list[Iterator] = []
        opened = self._shard_samples
        for u in itertools.islice(todo, OPEN_SHARDS if self.train else 1):
            open_.append(opened(u))
        while open_:
            i = int(rng.integers(len(open_))) if len(open_) > 1 else 0
            try:
                yield next(open_[i])
            except StopIteration:
                nxt = next(todo, None)
                if nxt is None:
                    open_.pop(i)
                else:
                    open_[i] = opened(nxt)

    def _shard_samples(self, url: str) -> Iterator[dict]:
        """The samples of one shard; where it changed since the loader started, or cannot be read to its end,
        a placeholder ``{"__lost__": reason}`` for each sample it should still hold (counted, not dropped)."""
        expect = self.shards.counts[self.shards.urls.index(url)]
        n, reason = 0, "shard changed under the loader"
        if not shard_changed(url, self.stats.get(url)):
            try:
                for sample in shard_samples(url, handler=wds.reraise_exception):  # a local file or a URL
                    n += 1
                    yield sample
                reason = "shard holds fewer samples than its index"
            except SHARD_ERRORS as e:
                reason = f"unreadable shard ({type(e).__name__})"
        for p in range(n, expect):
            yield {"__url__": url, "__key__": f"#{p}", "__lost__": reason}

    def _samples(self, worker: int, workers: int) -> Iterator[tuple[dict, int, int]]:
        """(raw sample, global id, pass) for this worker; endless and shuffled in training, one pass otherwise."""
        n = len(self.shards.urls)
        sel, k, j = _plan(n, self.rank, self.world_size, worker, workers)
        start_of = dict(zip(self.shards.urls, self.shards.starts))
        for cycle in itertools.count():
            order = epoch_order(n, self.seed, self.epoch, cycle) if self.train else list(range(n))
            urls = [self.shards.urls[s] for s in order[sel]]
            # every worker that filters the same stream (k > 1) must interleave it the same way
            part = self.rank if n >= self.world_size else -1
            rng = np.random.default_rng([self.seed, self.epoch, cycle, part + 1, worker if k == 1 else 0])
            pos: dict[str, int] = {}
            for i, sample in enumerate(self._interleave(urls, rng)):
                url = sample["__url__"]
                p = pos.get(url, 0)
                pos[url] = p + 1
                if i % k != j:
                    continue
                if self.ids is not None:
                    gid = self.ids.get((url, sample["__key__"]), -1)
                else:
                    gid = start_of[url] + p
                yield sample, gid, cycle
            if not self.train:
                return

    def _shuffled(self, it: Iterator, rng: np.random.Generator, size: int = SHUFFLE_BUFFER) -> Iterator:
        """A shuffle buffer that serves every sample of one pass before any of the next (no repeat while a
        sample of the pass is still unserved)."""
        buf: list = []
        cycle = 0
        for x in it:
            if x[2] != cycle:
                rng.shuffle(buf)
                yield from buf
                buf, cycle = [], x[2]
            buf.append(x)
            if len(buf) >= size:
                yield buf.pop(int(rng.integers(len(buf))))
        rng.shuffle(buf)
        yield from buf

    def _clip(self, sample: dict, rng: np.random.Generator, aug: ClipTrainAugment | None, out: np.ndarray,
              flips: np.ndarray):  # fmt: skip
        """One sample -> its views written to ``out`` (V, T, S, S, 3) uint8 and their flip flags to ``flips``
        (V,); returns its label, or a (reason, where, detail) skip record."""
        cfg = self.cfg
        where = f"{sample.get('__url__')} sample {sample.get('__key__')!r}"
        if "__lost__" in sample:
            return (sample["__lost__"], where, "")
        missing = [e for e in MEMBERS if e not in sample]
        if missing:
            return ("missing member", where, f"no .{missing[0]}")
        try:
            n, label = parse_meta(sample["json"], sample["cls"], where)
        except CorruptSample as e:
            return (e.reason, where, str(e))
        clips = 1 if self.train else cfg.test_clips
        u = rng.random(cfg.num_frames)
        idx = sampling.clip_indices(cfg.sampling, n, cfg.num_frames, cfg.sampling_rate, self.train, clips, u)
        try:
            frames = decode_clip(sample["mp4"], idx.reshape(-1))
        except DECODE_ERRORS as e:
            return ("undecodable video", where, str(e)[:200])
        if not self.train:
            clip_test_views(frames, clips, cfg, out=out)
            return label
        shared = None
        for r in range(cfg.repeated_aug):
            _, flips[r], _ = aug(frames, rng, out=out[r], flip=shared)
            if not self.recipe.flip_per_view:
                shared = bool(flips[r])
        return label

    def __iter__(self):
        worker, workers = self._worker()
        cfg = self.cfg
        b = cfg.batch_size
        # resume: worker w plays the part worker (w + start) % workers had in the uninterrupted pass, whose
        # first len(range(role, start, workers)) batches are already done
        role = (worker + self.start) % workers
        done = len(range(role, self.start, workers)) if self.train else 0
        it = self._samples(role, workers)
        if self.train:
            # at most one pass of this worker's share, so an epoch shows each sample about once
            share = self.shards.num_samples // (self.world_size * workers)
            size = max(b, min(SHUFFLE_BUFFER, share))
            it = self._shuffled(
                it, np.random.default_rng([self.seed, self.epoch, self.rank + 1, role, 1]), size
            )
        aug = ClipTrainAugment(self.recipe, cfg.img_size) if self.train else None
        v = cfg.repeated_aug if self.train else cfg.test_clips * cfg.test_crops
        shape = (b, v, cfg.num_frames, cfg.img_size, cfg.img_size, 3)
        # Clips are written straight into the batch; in a worker it lives in shared memory from the start,
        # so handing it to the main process copies nothing.
        in_worker = get_worker_info() is not None
        buf, flips, labels, ids, skipped, repeats = None, None, [], [], [], 0
        to_skip = done * b  # samples of the finished batches: passed over without decoding
        for pos, (sample, gid, cycle) in enumerate(it):
            if to_skip:
                if all(e in sample for e in MEMBERS):
                    to_skip -= 1
                continue
            if buf is None:
                buf, flips = torch.empty(shape, dtype=torch.uint8), torch.zeros((b, v), dtype=torch.bool)
                if in_worker:
                    buf.share_memory_()
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, role, pos])  # this clip's draws
            out = self._clip(sample, rng, aug, buf[len(ids)].numpy(), flips[len(ids)].numpy())
            if isinstance(out, tuple):
                if cycle == 0:  # a later pass meets the same sample again: counted once per epoch
                    skipped.append(out)
                continue
            labels.append(out)
            ids.append(gid)
            repeats += cycle > 0  # a second pass over this worker's shards within the epoch
            if len(ids) == b:
                yield self._batch(buf, flips, labels, ids, skipped, repeats)
                buf, flips, labels, ids, skipped, repeats = None, None, [], [], [], 0
        if ids or skipped:  # evaluation: the partial tail (and any skips after the last full batch)
            yield self._batch(buf, flips, labels, ids, skipped, repeats)

    def _batch(self, buf: torch.Tensor | None, flips: torch.Tensor | None, labels: list, ids: list,
               skipped: list, repeats: int) -> dict:  # fmt: skip
        """The raw batch as the loader core takes it (a dict: the DataLoader pins its tensors)."""
        out: dict = {"skipped": list(skipped), "repeated": repeats}
        if not ids:
            return out
        out["video"] = buf[: len(ids)]  # (B, V, T, S, S, 3) uint8
        out["label"] = torch.tensor(labels, dtype=torch.int64)
        out["flipped" if self.train else "video_id"] = (
            flips[: len(ids)] if self.train else torch.tensor(ids, dtype=torch.int64)
        )
        return out


class PyavLoader(ShardLoader):
    """Batches from PyAV DataLoader workers through the loader core (:func:`marvit.pipeline.build_loader`)."""

    def _open(self) -> None:
        self._stats = shard_stats(self.shards.urls)  # a shard that changes after this is read as lost samples

    def _eval_len(self) -> int:
        b, total = self.batch_size, 0
        workers = max(1, self.cfg.num_workers)
        for w in range(workers):
            sel, k, j = _plan(len(self.shards.urls), self.rank, self.world_size, w, workers)
            stream = sum(self.shards.counts[sel])
            total += -(-len(range(j, stream, k)) // b)
        return total

    def _raw_train(self, k: int) -> Iterator[RawBatch]:
        """Training skips the first ``k`` batches without decoding them."""
        return self._raw(start=k, limit=len(self) - k)

    def _raw_eval(self, k: int) -> Iterator[RawBatch]:
        """Evaluation (one pass, not resumed in practice) replays the first ``k``."""
        return itertools.islice(self._raw(start=0, limit=len(self)), k, None)

    def _raw(self, start: int, limit: int) -> Iterator[RawBatch]:
        """Raw batches ``start, start + 1, ...``, at most ``limit`` (a training stream is endless)."""
        ds = _ClipStream(self.shards, self.cfg, self.train, self.rank, self.world_size, self.seed, self.epoch,
                         start=start, stats=self._stats)  # fmt: skip
        workers = self.cfg.num_workers
        dl = DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=self.device.type == "cuda",
                        prefetch_factor=4 if workers else None)  # fmt: skip
        it = iter(dl)
        try:
            for batch in it if limit > 0 else ():
                for reason, where, detail in batch.pop("skipped"):
                    self._skips.add(reason, where, detail)
                self._skips.repeat(batch.pop("repeated"))
                if "video" in batch:
                    limit -= 1
                    yield RawBatch(
                        batch["video"], batch["label"], batch.get("flipped"), batch.get("video_id")
                    )
                    if limit <= 0:
                        break
        finally:
            del it  # stops the workers of an endless training stream
