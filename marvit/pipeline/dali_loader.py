"""The DALI loader: shards -> decoded, sampled, augmented uint8 clips in DALI graphs -> the loader core.

Graph (one ``@pipeline_def``): ``fn.readers.webdataset`` (named "reader", sharded by rank and pipeline with
``shard_id``/``num_shards``, reading files rather than mapping them, shuffled in training, padded last batch and ``stick_to_shard`` in evaluation,
samples that lack a member skipped) -> a small Python operator that reads ``KEY.json``/``KEY.cls`` and turns
the frame count plus DALI-drawn uniforms into frame indices with :mod:`marvit.pipeline.sampling` (the same
functions the PyAV loader uses) -> ``fn.decoders.video(frames=...)`` ("mixed" on a GPU, "cpu" otherwise),
each frame asked for once and in order (a repeated or backward index costs it a fresh seek), then
``fn.sequence_rearrange`` into clip order ->
training: :func:`train_views`, the recipe of :class:`marvit.pipeline.augment.AugmentRecipe` in DALI ops
(RandAugment over FHWC at the source resolution with one draw per clip, ``fn.random_resized_crop`` with one
box per clip, ``fn.flip`` with one coin per view); test: short-side resize, then ``test_crops`` crops along
the long side of ``test_clips`` windows decoded in one call.

The graph hands over uint8 FHWC, the labels and the flip coins. Normalization to float ``(B, 3, T, H, W)``,
the flip-label remap and random erasing run on the device batch in the loader core
(:mod:`marvit.pipeline.core`, shared with every backend): on
a GPU that is free and moves 4x fewer bytes out of DALI, on a CPU numpy normalizes faster than
``crop_mirror_normalize``, and DALI's ``fn.erase`` fills constants only, not timm's per-pixel noise.

Decode work, and why ``data.backend=auto`` is PyAV on a CPU (the one place this measurement is stated):
the decoder stops after the last index, but DALI 2.1's CPU decoder does not seek forward (frames 80-95 of
a 96-frame GOP-16 clip cost 132 ms, frames 0-15 41 ms; ``start_frame`` and ``build_index`` change
nothing), so a clip decodes from frame 0, while the PyAV loader seeks to the keyframe before its first
frame. ``marvit bench pipeline --shards DIR --backend {pyav,dali} --clips 64`` (16x224 training clips,
batch 4, 2 workers, 24 clips of 96 frames at 320x240) gave PyAV 58.7 and DALI's CPU graph 40.8 clips/s on
a quiet 2-core CPU, 8.2-8.7 and 6.4 on the same CPU shared with other jobs. Trimming the mp4 to the needed
GOPs in the Python operator (a PyAV remux, about 8 ms per clip here) is the way left to try; NVDEC
("mixed") is measured by ``marvit doctor`` on a GPU (:mod:`marvit.bench.datapath`).

Why a Python operator for the frame count: the sampler needs it before decoding and no DALI operator
reports a video's length without decoding it; ``marvit convert`` writes it to ``KEY.json``. Parsing a tiny
JSON per sample costs microseconds and keeps the reader, the decoder and all pixel work in the graph.

Class mixing: every training pass builds the graph over the shards in an order permuted by (seed, epoch),
the same on every rank, so each rank reads a different contiguous part of a different order every epoch;
the reader samples from a shuffle buffer of ``SHUFFLE_BUFFER`` samples (``initial_fill``).

Several pipelines per rank (``data.dali_pipelines`` P): pipeline p of rank r reads reader shard ``r * P + p``
of ``world_size * P`` and batches come from them in turn, so while one is consumed the others decode
ahead (one pipeline drives one of a GPU's video decoder engines: NVIDIA/DALI issue 6387). Each sample is
read by one pipeline of one rank, once per epoch.

Epochs: ``len(loader)`` = :func:`marvit.pipeline.core.epoch_batches` training batches on every rank (each
pipeline gives full batches of its own samples only; with one pipeline ``(num_samples // world_size) //
batch_size``), so DDP ranks step together. ``iter_from(k)`` builds the pass afresh and runs (replays) its
first ``k`` batches: DALI's reader has no random access. In evaluation DALI pads every reader shard to the
largest and the last batch to full size; the loader returns only real samples: each sample exactly once
per epoch over all ranks.

Bad samples: a sample without its ``.mp4``/``.cls``/``.json`` is skipped by the reader and counted from the
shard indexes (``loader.skipped()``); a video that fails to decode cannot be skipped inside a DALI graph (a
decoder error stops the whole batch), so the loader raises :class:`marvit.errors.InputError` naming the shard
and the sample (from DALI's message, or else the samples the graph was reading) and pointing to ``marvit
verify`` and ``data.backend=pyav``, which skips and counts it. Likewise a sample whose ``.cls`` and ``.json``
name different classes is refused by name, and a shard whose size or modification time changed since the
loader started is refused by name before the next pass: shards are read, not memory-mapped
(``dont_use_mmap``), so a shard cut short under a running pass is an error, not a SIGBUS.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from marvit.config import DataConfig
from marvit.errors import InputError
from marvit.pipeline import sampling
from marvit.pipeline.augment import ENHANCE_OPS, AugmentRecipe, op_argument
from marvit.pipeline.core import MEMBERS, RawBatch, ShardLoader, shard_bounds, shard_changed, shard_stats
from marvit.pipeline.shards import epoch_order, parse_meta

SHUFFLE_BUFFER = 1024  # the reader's shuffle buffer per pipeline, in samples (DALI's default initial_fill)
RECENT = 64  # sources the per-sample operator remembers, to name the shard of a decoder error


class _Meta:
    """The per-sample Python operator: (json, cls, source_info, u) -> (unique frame indices, clip order,
    label, video id). A plain callable object (not a closure) so DALI's AutoGraph leaves it alone."""

    def __init__(self, ids: dict[tuple[str, str], int], style: str, num_frames: int, rate: int, train: bool,
                 clips: int) -> None:  # fmt: skip
        self.ids, self.style, self.num_frames, self.rate = ids, style, num_frames, rate
        self.train, self.clips = train, clips
        self.recent: deque[str] = deque(maxlen=RECENT)  # the last samples seen, newest last

    def __call__(self, js, cls, src, u):
        source = bytes(np.asarray(src)).decode("utf-8", "replace")  # "shard.tar:offset:key.mp4"
        self.recent.append(source)
        tar, _, member = source.rsplit(":", 2)
        key = member.rsplit(".", 1)[0]
        n, label = parse_meta(np.asarray(js).tobytes(), np.asarray(cls).tobytes(), f"{tar} sample {key!r}")
        idx = sampling.clip_indices(self.style, n, self.num_frames, self.rate, self.train, self.clips, u)
        # The decoder gets each frame once, in order (a repeated or backward index costs it a fresh seek);
        # sequence_rearrange then puts the frames in clip order, repeats included.
        uniq, order = np.unique(idx.reshape(-1), return_inverse=True)
        vid = self.ids.get((tar, key), -1)
        return (
            uniq.astype(np.int32),
            order.astype(np.int32),
            np.array(label, np.int64),
            np.array(vid, np.int64),
        )


def _plain(f):
    """Keep DALI's AutoGraph out of a helper called while a graph is traced: it converts every call it sees,
    and converting the per-bin parameter tables made tracing the graph take tens of seconds."""
    from nvidia.dali.pipeline import do_not_convert

    return do_not_convert(f)


@functools.lru_cache(maxsize=8)
def _suite(recipe: AugmentRecipe) -> list:
    """The recipe's RandAugment ops as DALI augmentations, parameters from :func:`op_argument` per magnitude
    bin (DALI's own suite has other ranges), then identity (index ``len(recipe.ops)``: an op not applied)."""
    from nvidia.dali.auto_aug import augmentations as a

    grid = [b * recipe.magnitude_step for b in range(recipe.magnitude_bins)]

    def table(name: str) -> np.ndarray:
        return np.array([op_argument(name, m) for m in grid], dtype=np.float32)

    @_plain
    def poster_mask(bits: float) -> np.ndarray:  # keep the `bits` high bits, as PIL's posterize
        return np.array(255 ^ ((1 << (8 - int(round(float(bits))))) - 1), dtype=np.uint8)

    dali = {
        "AutoContrast": a.auto_contrast,
        "Equalize": a.equalize,
        "Invert": a.invert,
        "Rotate": a.rotate.augmentation(mag_range=table("Rotate")),
        "PosterizeIncreasing": a.posterize.augmentation(
            mag_range=table("PosterizeIncreasing"), mag_to_param=poster_mask
        ),  # fmt: skip
        "SolarizeIncreasing": a.solarize.augmentation(mag_range=table("SolarizeIncreasing")),
        "SolarizeAdd": a.solarize_add.augmentation(mag_range=table("SolarizeAdd")),
        "ColorIncreasing": a.color.augmentation(mag_range=table("ColorIncreasing")),
        "ContrastIncreasing": a.contrast.augmentation(mag_range=table("ContrastIncreasing")),
        "BrightnessIncreasing": a.brightness.augmentation(mag_range=table("BrightnessIncreasing")),
        "SharpnessIncreasing": a.sharpness.augmentation(mag_range=table("SharpnessIncreasing")),
        "ShearX": a.shear_x.augmentation(mag_range=table("ShearX")),
        "ShearY": a.shear_y.augmentation(mag_range=table("ShearY")),
        "TranslateXRel": a.translate_x.augmentation(mag_range=table("TranslateXRel")),
        "TranslateYRel": a.translate_y.augmentation(mag_range=table("TranslateYRel")),
    }
    assert dali.keys() >= ENHANCE_OPS
    # the ops have no data-dependent Python control flow; only `select` (their caller) needs AutoGraph
    return [_plain(functools.partial(_call, dali[name])) for name in recipe.ops] + [
        _plain(functools.partial(_call, a.identity))
    ]


def _call(aug, *args, **kwargs):
    return aug(*args, **kwargs)


def train_views(video, recipe: AugmentRecipe, size: int, views: int):
    """DALI graph piece: an FHWC uint8 sequence -> ``views`` independently augmented (T, S, S, 3) views.

    -> (views, flip coins (one per view), RandAugment draws: per view and layer ``[op, applied, bin, sign]``
    int32). Call inside a ``pipeline_def(enable_conditionals=True)``."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath
    from nvidia.dali.auto_aug.core import select, signed_bin

    suite = _plain(_suite)(recipe) if recipe.rand_augment else []
    k = len(recipe.ops)
    shape = video.shape()[1:3]  # (H, W) for the relative translations
    outs, flips, draws, coin = [], [], [], None
    for _ in range(views):
        v = video
        for _ in range(recipe.num_ops if recipe.rand_augment else 0):
            op = fn.random.uniform(values=list(range(k)), dtype=types.INT32)
            applied = fn.random.coin_flip(probability=recipe.op_prob, dtype=types.INT32)
            noisy = fn.random.normal(mean=recipe.magnitude, stddev=recipe.magnitude_std)
            noisy = dmath.clamp(noisy, 0.0, recipe.magnitude_max)
            mag_bin = fn.cast(dmath.floor(noisy / recipe.magnitude_step + 0.5), dtype=types.INT32)
            sign = fn.random.coin_flip(probability=0.5, dtype=types.INT32)
            which = op * applied + k * (1 - applied)  # k: identity
            v = select(suite, which, data=v, magnitude_bin=signed_bin(mag_bin, sign), shape=shape,
                       num_magnitude_bins=recipe.magnitude_bins, fill_value=recipe.fill,
                       interp_type=types.INTERP_LINEAR)  # fmt: skip
            draws.append(fn.stack(op, applied, mag_bin, sign))
        v = fn.random_resized_crop(v, size=[size, size], random_area=list(recipe.crop_area),
                                   random_aspect_ratio=list(recipe.crop_ratio), antialias=True)  # fmt: skip
        if coin is None or recipe.flip_per_view:
            coin = fn.random.coin_flip(probability=recipe.flip_prob, dtype=types.INT32)
        outs.append(fn.flip(v, horizontal=coin))
        flips.append(coin)
    return outs, flips, draws


def _pipeline(urls: list[str], index_paths: list[str], meta: _Meta, cfg: DataConfig, recipe: AugmentRecipe,
              *, train: bool, shard_id: int, num_shards: int, decoder: str, batch_size: int, num_threads: int,
              seed: int, device_id: int | None):  # fmt: skip
    from nvidia.dali import fn, pipeline_def, types

    size = cfg.img_size

    @pipeline_def(enable_conditionals=True)
    def clips():
        mp4, cls, js = fn.readers.webdataset(
            paths=urls, index_paths=index_paths, ext=list(MEMBERS), missing_component_behavior="skip",
            shard_id=shard_id, num_shards=num_shards, random_shuffle=train, initial_fill=SHUFFLE_BUFFER,
            pad_last_batch=not train, stick_to_shard=not train, name="reader",
            dont_use_mmap=True,  # a shard truncated under a mapped read is a SIGBUS; a plain read an error
        )  # fmt: skip
        src = fn.get_property(mp4, key="source_info")
        if train:
            u = fn.random.uniform(range=[0.0, 1.0], shape=[cfg.num_frames])
        else:
            u = fn.constant(fdata=[0.0] * cfg.num_frames, shape=[cfg.num_frames])
        uniq, order, label, vid = fn.python_function(js, cls, src, u, function=meta, num_outputs=4)
        video = fn.decoders.video(mp4, frames=uniq, device=decoder, pad_mode="edge")  # (F', H, W, 3) uint8
        video = fn.sequence_rearrange(video, new_order=order)  # (clips * T, H, W, 3)
        video = fn.reshape(video, layout="FHWC")  # the rearranged sequence keeps no layout
        if train:
            views, flips, _ = train_views(video, recipe, size, cfg.repeated_aug)
            return fn.stack(*views), label, fn.stack(*flips)  # (R, T, S, S, 3) uint8, (), (R,)
        video = fn.resize(video, resize_shorter=cfg.test_short_side, antialias=True)
        hw = video.shape()[1:3]  # (H, W) after the resize
        wide = fn.cast(hw[1] >= hw[0], dtype=types.FLOAT)
        views = []
        for c in range(cfg.test_crops):
            p = c / (cfg.test_crops - 1) if cfg.test_crops > 1 else 0.5
            views.append(fn.crop(
                video, crop=(size, size), crop_pos_x=wide * p + (1.0 - wide) * 0.5,
                crop_pos_y=wide * 0.5 + (1.0 - wide) * p,
            ))  # fmt: skip
        return fn.stack(*views), label, vid  # (crops, clips * T, S, S, 3) uint8

    with warnings.catch_warnings():  # DALI's auto_aug calls operators it has since renamed
        warnings.simplefilter("ignore", DeprecationWarning)
        pipe = clips(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                     prefetch_queue_depth=2)  # fmt: skip
        pipe.build()
    return pipe


_SOURCE = re.compile(r"(\S+\.tar):(\d+):(\S+?)\.mp4")


class DaliLoader(ShardLoader):
    """Batches from ``data.dali_pipelines`` DALI graphs per rank, round-robin, through the loader core
    (:func:`marvit.pipeline.build_loader`).

    Pipeline ``p`` of rank ``r`` reads reader shard ``r * P + p`` of ``world_size * P`` (DALI's
    ``shard_id``/``num_shards``): the pipelines of a rank split its share, so each sample is read by one
    pipeline of one rank, once per epoch. Batch ``j`` comes from the next pipeline in turn that still has
    a full batch of its own samples (:meth:`_schedule`); while one is consumed the others prefetch, which is
    what lets several of them keep a GPU's video decoders busy."""

    def _open(self) -> None:
        shards, cfg, rank, world_size, train = self.shards, self.cfg, self.rank, self.world_size, self.train
        self.parts = cfg.dali_pipelines
        # samples that lack a member: the reader skips them, the index files say which and where
        self._incomplete = shards.incomplete_samples(MEMBERS)
        # the reader counts only complete samples (epoch size, shard ranges)
        self.num_samples = shards.num_samples - len(self._incomplete)
        # this rank's samples in each of its pipelines
        self.part_samples = [
            hi - lo for lo, hi in (shard_bounds(self.num_samples, rank * self.parts + p, world_size * self.parts)
                                   for p in range(self.parts))
        ]  # fmt: skip
        self.rank_samples = sum(self.part_samples)
        self._meta = _Meta(shards.key_ids(), cfg.sampling, cfg.num_frames, cfg.sampling_rate, train,
                           1 if train else cfg.test_clips)  # fmt: skip
        self._stats = shard_stats(shards.urls)  # a shard that changes after this is refused by name
        self.pipes: list = []

    def _eval_len(self) -> int:
        return sum(-(-n // self.batch_size) for n in self.part_samples)

    def _schedule(self, quota: list[int]) -> list[int]:
        """The pipeline of each batch: round-robin over those with batches left (``quota[p]`` each)."""
        left, order = list(quota), []
        while any(left):
            for p in range(self.parts):
                if left[p]:
                    order.append(p)
                    left[p] -= 1
        return order

    def _build(self) -> None:
        """Fresh graphs for one pass of the current epoch: shard order and seeds from (seed, epoch)."""
        self.pipes = []  # free the previous graphs' threads and buffers first
        for url, stat in self._stats.items():
            if shard_changed(url, stat):
                raise InputError(
                    f"shard {url} changed on disk since the loader started (size or modification time): "
                    "a DALI graph cannot skip its samples; restore it, or rerun `marvit convert`"
                )
        order = epoch_order(len(self.shards.urls), self.seed, self.epoch) if self.train else None
        urls = self.shards.urls if order is None else [self.shards.urls[i] for i in order]
        idx = self.shards.index_paths if order is None else [self.shards.index_paths[i] for i in order]
        on_gpu = self.device.type == "cuda"
        for p in range(self.parts):
            self.pipes.append(_pipeline(
                urls, idx, self._meta, self.cfg, self.recipe, train=self.train, shard_id=self.rank * self.parts + p,
                num_shards=self.world_size * self.parts, decoder="mixed" if on_gpu else "cpu",
                batch_size=self.batch_size, num_threads=max(1, self.cfg.num_workers // self.parts),
                seed=((self.seed * 1009 + self.epoch) * 8191 + self.rank) * 131 + p,
                device_id=(self.device.index or 0) if on_gpu else None,
            ))  # fmt: skip
        # the incomplete samples, counted once per pass over all ranks (the reader never shows them): rank r
        # takes every world_size-th
        for where in self._incomplete[self.rank :: self.world_size]:
            self._skips.add("missing member", where)

    def _to_torch(self, tl, transient: bool = False) -> torch.Tensor:
        """A DALI batch as a torch tensor on the loader's device (a graph's CPU outputs, such as the labels
        of a "mixed" graph, are copied over). ``transient`` (CPU only): a zero-copy view of DALI's buffer,
        valid until the next ``pipe.run()``; used for the video, which the core normalizes into a fresh
        tensor right away."""
        from nvidia.dali.backend import TensorGPU
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        t = tl.as_tensor()
        if not isinstance(t, TensorGPU):  # CPU outputs (labels, flip coins, ids; everything on a CPU)
            a = np.asarray(t)
            host = torch.from_numpy(a if transient and self.device.type == "cpu" else a.copy())
            return host.to(self.device, non_blocking=True)  # a small host-to-device copy: no device sync
        out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=self.device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out

    def _run(self, p: int):
        try:
            return self.pipes[p].run()
        except RuntimeError as e:
            self.pipes = []  # a failed graph cannot go on; the next pass builds new ones
            raise _named_error(e, self.shards.urls, self._meta.recent) from e

    def _raw_train(self, k: int) -> Iterator[RawBatch]:
        """A fresh pass that replays its first ``k`` batches (DALI's reader has no random access)."""
        self._build()
        plan = self._schedule([n // self.batch_size for n in self.part_samples])[: len(self)]
        for p in plan[:k]:
            self._run(p)
        for p in plan[k:]:
            outs = self._run(p)
            video = self._to_torch(outs[0], transient=True)  # (B, R, T, S, S, 3) uint8
            yield RawBatch(video, self._to_torch(outs[1]), self._to_torch(outs[2]).bool())
        self.pipes = []

    def _raw_eval(self, k: int) -> Iterator[RawBatch]:
        # DALI pads every reader shard to the largest one (the padding after the real samples) and the last
        # batch to full size; hand over only real samples.
        self._build()
        steps = []
        for pipe in self.pipes:
            meta = pipe.reader_meta("reader")
            per_shard = -(-meta["epoch_size_padded"] // meta["number_of_shards"])
            steps.append(-(-per_shard // self.batch_size))
        left = list(self.part_samples)
        j = 0
        for p in self._schedule(steps):
            outs = self._run(p)
            keep = min(left[p], self.batch_size)
            left[p] -= keep
            if keep:
                if j >= k:
                    video = self._to_torch(outs[0], transient=True)[:keep]
                    label, vid = self._to_torch(outs[1])[:keep], self._to_torch(outs[2])[:keep]
                    yield _test_views(video, label, vid, self.cfg)
                j += 1
        self.pipes = []


def _named_error(e: RuntimeError, urls: list[str], recent) -> Exception:
    """DALI's error as an InputError naming the shard (and sample): from its message where it names one, else
    the samples the graph was reading when it failed (the per-sample operator records them)."""
    msg = str(e)
    m = _SOURCE.search(msg)
    named = [u for u in urls if u in msg]
    first = next((ln for ln in msg.splitlines() if ln.strip()), msg)[:300]
    if m is not None:
        where = f"shard {m.group(1)}, sample {m.group(3)!r} (offset {m.group(2)})"
    elif named:
        where = named[0]
    elif recent:
        shards = sorted({src.split(":")[0] for src in recent})
        keys = [src.rsplit(":", 1)[-1].rsplit(".", 1)[0] for src in recent]
        where = f"shard {', '.join(shards)} (one of the samples {', '.join(keys)})"
    else:
        return e
    return InputError(
        f"the DALI loader failed on {where}: {first}. A DALI graph cannot skip a video that does not "
        "decode: check the shards with `marvit verify ROOT`, or use data.backend=pyav, which skips and "
        f"counts such videos.\nDALI's message:\n{msg}"
    )


def _test_views(video: torch.Tensor, label: torch.Tensor, vid: torch.Tensor, cfg: DataConfig) -> RawBatch:
    """uint8 (B, crops, clips*T, S, S, 3) -> the core's (B, clips * crops, T, S, S, 3); view = clip * crops
    + crop."""
    b, crops, kt, h, w, c = video.shape
    clips = cfg.test_clips
    video = video.view(b, crops, clips, kt // clips, h, w, c).transpose(1, 2)  # (B, clips, crops, T, S, S, 3)
    return RawBatch(video.reshape(b, clips * crops, kt // clips, h, w, c), label, video_id=vid)


@functools.cache
def dali_available() -> bool:
    """DALI imports and its video decoder (CPU backend here) decodes a tiny H.264 clip."""
    try:
        from nvidia.dali import fn, pipeline_def

        from marvit.pipeline.video import encode_h264

        # two frames encoded as `marvit convert` encodes: what the decoder must read
        data = np.frombuffer(encode_h264(np.zeros((2, 32, 32, 3), np.uint8), fps=25), np.uint8)

        @pipeline_def(batch_size=1, num_threads=1, device_id=None)
        def probe():
            return fn.decoders.video(fn.external_source(source=lambda: [data], batch=True))

        p = probe()
        p.build()
        return np.asarray(p.run()[0][0]).shape[0] == 2
    except Exception:
        return False
