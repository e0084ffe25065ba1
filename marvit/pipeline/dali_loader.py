"""The DALI loader: shards -> decoded, sampled, augmented clips in one DALI graph -> normalized batches.

Graph (one ``@pipeline_def``): ``fn.readers.webdataset`` (named "reader", sharded by rank with
``shard_id``/``num_shards``, shuffled in training, padded last batch and ``stick_to_shard`` in evaluation)
-> a small Python operator that reads ``KEY.json``/``KEY.cls`` and turns the frame count plus DALI-drawn
uniforms into frame indices with :mod:`marvit.pipeline.sampling` (the same functions the PyAV loader uses)
-> ``fn.decoders.video(frames=...)`` ("mixed" on a GPU, "cpu" otherwise), which seeks and decodes only the
frames asked for, each once and in order (a repeated index would cost it a fresh seek), then
``fn.sequence_rearrange`` into clip order -> training, in VideoMAE's order: RandAugment over FHWC at the
source resolution (one op choice per clip), ``fn.random_resized_crop`` (one box per clip: DALI treats the
F axis of an FHWC sequence as frames of one sample) and ``fn.flip`` (one coin per clip); test: short-side
resize, then ``test_crops`` crops along the long side of ``test_clips`` windows decoded in one call.

The graph hands over uint8 FHWC. Normalization to float ``(B, 3, T, H, W)`` and random erasing run on the
device batch with the PyAV loader's code (:func:`marvit.pipeline.augment.normalize`, ``erase_clips_``): on
a GPU that is free and moves 4x fewer bytes out of DALI, on a CPU numpy normalizes faster than
``crop_mirror_normalize``, and DALI's ``fn.erase`` fills constants only, not timm's per-pixel noise.

Why a Python operator for the frame count: the sampler needs it before decoding and no DALI operator
reports a video's length without decoding it; ``marvit convert`` writes it to ``KEY.json``. Parsing a tiny
JSON per sample costs microseconds and keeps the reader, the decoder and all pixel work in the graph.

Epochs: training batches come from the endless shuffled reader stream, ``len(loader)`` =
``(num_samples // world_size) // batch_size`` on every rank so DDP ranks step together. In evaluation DALI
pads every rank's shard to ``ceil(N / world_size)`` samples and the last batch to full size; the loader
runs those padded steps (so the next pass starts at the shard start) and returns only real samples: each
sample exactly once per epoch over all ranks. DALI cannot skip a video that fails to decode: the loader
stops with an error naming it and pointing to ``marvit verify`` and the PyAV backend, which skips.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from marvit.config import DataConfig
from marvit.pipeline import sampling
from marvit.pipeline.augment import erase_clips_, normalize
from marvit.pipeline.shards import ShardSet, parse_meta


class _Meta:
    """The per-sample Python operator:
    (json, cls, source_info, u, flip) -> (unique frame indices, clip order, label, video id).

    A plain callable object (not a closure) so DALI's AutoGraph leaves it alone."""

    def __init__(self, ids: dict[tuple[str, str], int], style: str, num_frames: int, rate: int, train: bool,
                 clips: int, flip_map: dict[int, int] | None) -> None:  # fmt: skip
        self.ids, self.style, self.num_frames, self.rate = ids, style, num_frames, rate
        self.train, self.clips, self.flip_map = train, clips, flip_map or {}

    def __call__(self, js, cls, src, u, flip):
        source = bytes(np.asarray(src)).decode("utf-8", "replace")  # "shard.tar:offset:key.mp4"
        tar, _, member = source.rsplit(":", 2)
        key = member.rsplit(".", 1)[0]
        n, label = parse_meta(np.asarray(js).tobytes(), np.asarray(cls).tobytes(), f"{tar} sample {key!r}")
        idx = sampling.clip_indices(self.style, n, self.num_frames, self.rate, self.train, self.clips, u)
        # The decoder gets each frame once, in order (a repeated or backward index costs it a fresh seek);
        # sequence_rearrange then puts the frames in clip order, repeats included.
        uniq, order = np.unique(idx.reshape(-1), return_inverse=True)
        if int(np.asarray(flip).reshape(-1)[0]):
            label = int(self.flip_map.get(label, label))
        vid = self.ids.get((tar, key), -1)
        return (
            uniq.astype(np.int32),
            order.astype(np.int32),
            np.array(label, np.int64),
            np.array(vid, np.int64),
        )


def _pipeline(shards: ShardSet, meta: _Meta, cfg: DataConfig, *, train: bool, rank: int, world_size: int,
              decoder: str, batch_size: int, num_threads: int, seed: int, device_id: int | None):  # fmt: skip
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug import rand_augment

    size = cfg.img_size

    @pipeline_def(enable_conditionals=True)
    def clips():
        mp4, cls, js = fn.readers.webdataset(
            paths=shards.urls, index_paths=shards.index_paths, ext=["mp4", "cls", "json"],
            missing_component_behavior="error", shard_id=rank, num_shards=world_size,
            random_shuffle=train, initial_fill=256, pad_last_batch=not train, stick_to_shard=not train,
            name="reader",
        )  # fmt: skip
        src = fn.get_property(mp4, key="source_info")
        if train:
            u = fn.random.uniform(range=[0.0, 1.0], shape=[cfg.num_frames])
            flip = fn.random.coin_flip(probability=0.5 if cfg.flip else 0.0, dtype=types.INT32)
        else:
            u = fn.constant(fdata=[0.0] * cfg.num_frames, shape=[cfg.num_frames])
            flip = fn.constant(idata=0, dtype=types.INT32)
        uniq, order, label, vid = fn.python_function(js, cls, src, u, flip, function=meta, num_outputs=4)
        video = fn.decoders.video(mp4, frames=uniq, device=decoder, pad_mode="edge")  # (F', H, W, 3) uint8
        video = fn.sequence_rearrange(video, new_order=order)  # (clips * T, H, W, 3)
        video = fn.reshape(video, layout="FHWC")  # the rearranged sequence keeps no layout
        if train:
            views = []
            for _ in range(cfg.repeated_aug):  # repeated augmentation: R views of one decode
                v = video
                if cfg.rand_augment:  # at the source resolution, before the crop, as in VideoMAE
                    v = rand_augment.rand_augment(
                        v, n=cfg.rand_augment_n, m=cfg.rand_augment_m, num_magnitude_bins=11,
                        shape=video.shape()[1:3],
                    )  # fmt: skip
                v = fn.random_resized_crop(
                    v, size=[size, size], random_area=[cfg.min_area, 1.0],
                    random_aspect_ratio=[3 / 4, 4 / 3], antialias=True,
                )  # fmt: skip
                views.append(fn.flip(v, horizontal=flip))
            out = fn.stack(*views)  # (R, T, S, S, 3) uint8
        else:
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
            out = fn.stack(*views)  # (crops, clips * T, S, S, 3) uint8
        return out, label, vid

    with warnings.catch_warnings():  # DALI's auto_aug calls operators it has since renamed
        warnings.simplefilter("ignore", DeprecationWarning)
        pipe = clips(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                     prefetch_queue_depth=2)  # fmt: skip
        pipe.build()
    return pipe


def _shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The samples DALI's reader gives shard ``rank`` of ``world_size`` (floor(n * i / shards) bounds)."""
    return n * rank // world_size, n * (rank + 1) // world_size


class DaliLoader:
    """Iterable of batches from the DALI graph. Re-iterable; one pass = one epoch for this rank."""

    def __init__(self, shards: ShardSet, cfg: DataConfig, *, train: bool, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:  # fmt: skip
        self.cfg, self.train, self.rank, self.world_size = cfg, train, rank, world_size
        self.device = torch.device(device)
        self.batch_size = cfg.batch_size
        self.num_samples = shards.num_samples
        self.shards_desc = f"{len(shards.urls)} shards from {shards.urls[0]}"
        lo, hi = _shard_range(self.num_samples, rank, world_size)
        self.rank_samples = hi - lo
        on_gpu = self.device.type == "cuda"
        clips = 1 if train else cfg.test_clips
        meta = _Meta(shards.key_ids(), cfg.sampling, cfg.num_frames, cfg.sampling_rate, train, clips,
                     cfg.flip_label_map)  # fmt: skip
        self.pipe = _pipeline(
            shards, meta, cfg, train=train, rank=rank, world_size=world_size,
            decoder="mixed" if on_gpu else "cpu", batch_size=self.batch_size,
            num_threads=max(1, cfg.num_workers), seed=seed * 1009 + rank,
            device_id=(self.device.index or 0) if on_gpu else None,
        )  # fmt: skip
        meta = self.pipe.reader_meta("reader")
        per_shard = -(-meta["epoch_size_padded"] // meta["number_of_shards"])
        self._eval_steps = -(-per_shard // self.batch_size)
        self._pending = 0  # evaluation steps of an unfinished pass still queued in the reader

    def __len__(self) -> int:
        if self.train:
            return (self.num_samples // self.world_size) // self.batch_size
        return -(-self.rank_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """No-op: the reader reshuffles continuously; kept so both loaders share one interface."""

    def _to_torch(self, tl, transient: bool = False) -> torch.Tensor:
        """A DALI batch as a torch tensor on the loader's device. ``transient`` (CPU only): a zero-copy view
        of DALI's buffer, valid until the next ``pipe.run()``; used for the video, which is normalized into
        a fresh tensor right away."""
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        t = tl.as_tensor()
        if self.device.type == "cpu":
            a = np.asarray(t)
            return torch.from_numpy(a if transient else a.copy())
        out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=self.device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out

    def _run(self):
        try:
            return self.pipe.run()
        except RuntimeError as e:
            raise RuntimeError(
                f"the DALI loader failed on {self.shards_desc} (DALI's message below names the "
                "shard:offset:key). DALI cannot skip a sample: check the shards with `marvit verify ROOT`, "
                "or use the PyAV backend "
                f"(data.backend=pyav), which skips and counts videos that do not decode.\n{e}"
            ) from e

    def __iter__(self):
        while self._pending:  # an earlier pass stopped early: drain it so this one starts at the shard start
            self._run()
            self._pending -= 1
        if self.train:
            for _ in range(len(self)):
                outs = self._run()
                video, label = self._to_torch(outs[0], transient=True), self._to_torch(outs[1])
                # (B, R, T, S, S, 3) uint8 -> (B * R, 3, T, S, S) float
                r = video.shape[1]
                video = normalize(video.flatten(0, 1), self.cfg.mean, self.cfg.std)
                yield {"video": erase_clips_(video, self.cfg.reprob), "label": label.repeat_interleave(r)}
            return
        # Evaluation: DALI pads every rank's shard to the largest one (ceil(N / world_size) samples, the
        # padding after the real ones) and the last batch to full size; run every padded step so the next
        # pass starts at the shard start, and hand over only real samples.
        self._pending = self._eval_steps
        left = self.rank_samples
        for _ in range(self._eval_steps):
            outs = self._run()
            self._pending -= 1
            keep = min(left, self.batch_size)
            left -= keep
            if keep:
                video = self._to_torch(outs[0], transient=True)
                label, vid = self._to_torch(outs[1]), self._to_torch(outs[2])
                yield _test_views(video[:keep], label[:keep], vid[:keep], self.cfg, self.device)


def _test_views(video: torch.Tensor, label: torch.Tensor, vid: torch.Tensor, cfg: DataConfig,
                device: torch.device) -> dict[str, torch.Tensor]:  # fmt: skip
    """uint8 (B, crops, clips*T, S, S, 3) -> float views (B * clips * crops, 3, T, S, S);
    view = clip * crops + crop."""
    b, crops, kt, h, w, c = video.shape
    clips = cfg.test_clips
    video = video.view(b, crops, clips, kt // clips, h, w, c).transpose(1, 2)  # (B, clips, crops, T, S, S, 3)
    v = clips * crops
    return {
        "video": normalize(video.reshape(b * v, kt // clips, h, w, c), cfg.mean, cfg.std),
        "label": label.to(device).repeat_interleave(v),
        "video_id": vid.to(device).repeat_interleave(v),
        "view": torch.arange(v, device=device).repeat(b),
    }


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
