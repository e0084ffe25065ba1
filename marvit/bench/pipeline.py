"""``marvit bench pipeline``: training-clip throughput of a marvit loader beside a naive video loader.

Both loaders produce the same thing from the same shards in the same run: normalized float clips
``(B, 3, frames, size, size)`` with Kinetics-style sampling (``frames`` frames at stride 4 from a random
window), random resized crop, flip and RandAugment m9 n2. The measured loader is ``build_loader`` with the
chosen backend (random erasing included). The baseline is written the way common video loaders are: the
videos as files (extracted from the shards before timing), a map-style dataset in ``workers`` DataLoader
workers that opens each file with PyAV, decodes from the start through the last needed frame and converts
every needed frame with ``frame.to_ndarray``, then transforms frame by frame with PIL/torchvision (timm's
RandAugment "rand-m9-n2" per frame, then one crop box and flip per clip, VideoMAE's order) and stacks.

The two loaders take turns over 3 rounds (so drifting background load hits both alike), each round on a
fresh iterator whose first batch (worker start-up, DALI warm-up) is timed apart as start-up; clips/s is
the steady state over ``clips`` clips in all. CPU milliseconds per clip (this process, DALI's threads and
the reaped workers) are reported too: on a machine shared with other jobs they are steadier than clips/s. DALI's pipeline may prefetch up to two batches while the
baseline is timed, a small bias in DALI's favour. Prints a table, or JSON with ``--json``; ``--out DIR``
writes ``DIR/pipeline.json``.

Decode work per clip is reported beside the speed: bytes read per clip (every member of a sample, as both
loaders read a sample whole; the naive loader reads the mp4 file) and decoded frames per clip. The loaders
do not report which frames they drew, so the decoded frames are the expectation over the shard set: for
each sample, many clips drawn with the same sampling as the loaders (16 frames at stride 4, a uniform
start), counted with the sample's own keyframe positions by the rule each loader's decoder follows
(:func:`marvit.pipeline.video.decoded_frames`): DALI's CPU decoder (2.1) decodes from the first frame
whatever it is asked (measured in :mod:`marvit.pipeline.dali_loader`; so ``from_start`` on a CPU); on a GPU, DALI's FramesDecoder source rule (``dali``: forward gaps of at most 10
frames decoded through, so at stride 4 it decodes from the keyframe before the first sampled frame to the
last; not measured here, no GPU), the PyAV loader's seek to the first frame's keyframe and decode through the last (``seek_once``,
unless the loader module names another rule in ``DECODE_RULE``), the naive loader from frame 0
(``from_start``).
"""

from __future__ import annotations

import json as jsonlib
import os
import platform
import resource
import tarfile
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from marvit.bench.timing import sync
from marvit.config import DataConfig
from marvit.errors import InputError
from marvit.pipeline import build_loader
from marvit.pipeline.manifest import MANIFEST, atomic_write_json
from marvit.pipeline.sampling import kinetics_train
from marvit.pipeline.shards import find_shards, parse_meta
from marvit.pipeline.video import decoded_frames, keyframes

ROUNDS = 3
DRAWS = 32  # sampled clips per sample for the expected decoded frames


def decode_rule(backend: str) -> str:
    """The decoded-frame rule of a loader's decoder (see the module docstring)."""
    if backend == "naive":
        return "from_start"
    if backend == "dali":
        import torch

        return "dali" if torch.cuda.is_available() else "from_start"  # see the module docstring
    from marvit.pipeline import pyav_loader

    return getattr(pyav_loader, "DECODE_RULE", "seek_once")


def _check_source(shards: str) -> None:
    """A missing or empty shard source is a bad input, named, before any work."""
    p = Path(shards)
    if p.is_dir():
        if not (p / MANIFEST).is_file():
            raise InputError(
                f"--shards {shards}: no {MANIFEST} there; expected a `marvit convert` output directory"
            )
        return
    import glob

    import braceexpand

    if not any(glob.glob(pat) for pat in braceexpand.braceexpand(shards)):
        raise InputError(f"--shards {shards}: no such directory, and no file matches it as a shard pattern")


class NaiveVideoDataset(Dataset):
    """The baseline: one video file per item, PyAV + to_ndarray per frame, PIL transforms per frame."""

    def __init__(self, items: list[tuple[str, int, int]], cfg: DataConfig) -> None:
        from timm.data.auto_augment import rand_augment_transform
        from torchvision import transforms as T

        self.items, self.cfg = items, cfg
        self.rrc = T.RandomResizedCrop(cfg.img_size, scale=(cfg.min_area, 1.0), ratio=(3 / 4, 4 / 3))
        self.ra = rand_augment_transform(f"rand-m{cfg.rand_augment_m}-n{cfg.rand_augment_n}", {})
        self.to_tensor = T.ToTensor()
        self.norm = T.Normalize(cfg.mean, cfg.std)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from torchvision.transforms import functional as F

        path, n, label = self.items[i]
        idx = kinetics_train(n, self.cfg.num_frames, self.cfg.sampling_rate, float(np.random.rand()))
        want, frames = set(idx.tolist()), {}
        with av.open(path) as c:
            for j, frame in enumerate(c.decode(video=0)):
                if j in want:
                    frames[j] = frame.to_ndarray(format="rgb24")
                if j >= idx.max():
                    break
        last = max(frames)
        imgs = [
            self.ra(Image.fromarray(frames[min(int(k), last)])) for k in idx
        ]  # RandAugment first, as VideoMAE
        top, left, h, w = self.rrc.get_params(imgs[0], self.rrc.scale, self.rrc.ratio)
        flip = np.random.rand() < 0.5
        out = []
        for img in imgs:
            img = F.resized_crop(img, top, left, h, w, [self.cfg.img_size] * 2)
            if flip:
                img = F.hflip(img)
            out.append(self.norm(self.to_tensor(img)))
        return torch.stack(out, 1), label  # (3, T, S, S)


def _extract(shards, tmp: Path) -> tuple[list[tuple[str, int, int]], list[int]]:
    """Write every sample's mp4 to ``tmp`` as a file: (path, frame count, label); and each sample's bytes."""
    items, parts, sizes = [], {}, []
    for url in shards.urls:
        with tarfile.open(url) as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = m.name.rpartition(".")
                parts.setdefault((url, key), {})[ext] = tf.extractfile(m).read()
    for (url, key), p in parts.items():
        if not {"mp4", "cls", "json"} <= p.keys():
            continue
        n, label = parse_meta(p["json"], p["cls"], f"{url} sample {key!r}")
        path = tmp / f"{len(items):06d}.mp4"
        path.write_bytes(p["mp4"])
        items.append((str(path), n, label))
        sizes.append(sum(len(v) for v in p.values()))
    return items, sizes


def decode_work(items: list[tuple[str, int, int]], cfg: DataConfig, rules: list[str], seed: int = 0) -> dict:
    """Expected decoded frames per clip under each rule, over ``DRAWS`` clips drawn per sample."""
    rng = np.random.default_rng(seed)
    total = dict.fromkeys(rules, 0)
    for path, n, _ in items:
        keys = keyframes(path)
        for _ in range(DRAWS):
            idx = kinetics_train(n, cfg.num_frames, cfg.sampling_rate, float(rng.random()))
            for r in rules:
                total[r] += decoded_frames(idx, keys, n, r)
    return {r: t / (DRAWS * max(1, len(items))) for r, t in total.items()}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (DALI's threads included) and its reaped children (workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _time(batches, clips: int, bar: tqdm) -> tuple[int, float, float, float, int]:
    """One round on a fresh iterator: (clips, seconds) for ``clips`` clips after the first batch, whose
    time (worker start-up, DALI graph warm-up) is returned apart; and the CPU seconds of the whole round
    (workers are reaped when it ends) with the clips they made, first batch included."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    it = batches()
    first = int(next(it).shape[0])
    startup = time.perf_counter() - t0
    done, t1 = 0, time.perf_counter()
    while done < clips:
        try:
            b = next(it)
        except StopIteration:  # a short epoch: start the next one
            it = batches()
            continue
        done += int(b.shape[0])
        bar.update(int(b.shape[0]))
    dt = time.perf_counter() - t1
    it.close()  # stops and reaps DataLoader workers
    return done, dt, startup, _cpu_seconds() - c0, done + first


PIPELINES = (1, 2, 4, 7)  # DALI pipelines per rank to measure (a GPU has up to 7 video decoder engines)


def pipelines_arg(text: str) -> tuple[int, ...]:
    """``--pipelines 1,2,4,7``: positive counts."""
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise InputError(f"--pipelines {text!r}: expected comma-separated positive counts, e.g. 1,2,4,7")
    return counts


def pipeline_sweep(cfg: DataConfig, split: str, shards: str, counts: tuple[int, ...], clips: int,
                   decoded_per_clip: float, device: torch.device) -> list[dict]:  # fmt: skip
    """Steady-state loader clips/s and decoded frames/s with each count of DALI pipelines per rank, over
    ``clips`` clips. Each pass over the epoch builds its graphs afresh: its first batch (graph build and
    warm-up) is timed apart as start-up, the rest as the steady state, the device synced at both ends.
    Decoded frames/s = clips/s x the expected decoded frames per clip (the same at any count)."""
    from dataclasses import replace

    rows = []
    for p in counts:
        loader = build_loader(replace(cfg, dali_pipelines=p), split, train=True, shards=shards, device=device)
        if len(loader) < 2:
            rows.append({"pipelines": p, "skipped": f"{len(loader)} batches per epoch: too few samples"})
            continue
        done, steady, startup = 0, 0.0, []
        while done < clips:
            t0 = time.perf_counter()
            it = iter(loader)
            next(it)
            sync(device)
            startup.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            for b in it:
                done += b["video"].shape[0]
            sync(device)
            steady += time.perf_counter() - t1
        rows.append({"pipelines": p, "clips": done, "seconds": steady, "clips_per_s": done / steady,
                     "decoded_frames_per_s": done / steady * decoded_per_clip,
                     "startup_s": float(np.median(startup))})  # fmt: skip
    return rows


def main(
    shards: str,
    backend: str = "dali",
    split: str = "train",
    batch: int = 4,
    clips: int = 64,
    workers: int = 2,
    frames: int = 16,
    size: int = 224,
    out: str | None = None,
    as_json: bool = False,
    pipelines: str = ",".join(map(str, PIPELINES)),
) -> int:
    _check_source(shards)
    counts = pipelines_arg(pipelines)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # DALI decodes on the GPU there
    cfg = DataConfig(backend=backend, num_frames=frames, img_size=size, test_short_side=size,
                     batch_size=batch, num_workers=workers, sampling="kinetics", sampling_rate=4)  # fmt: skip
    shard_set = find_shards(shards, split)
    loader = build_loader(cfg, split, train=True, shards=shards, device=device)

    def ours():
        for b in loader:
            sync(device)  # the batch is ready, not just queued
            yield b["video"]

    with tempfile.TemporaryDirectory(prefix="marvit_bench_") as tmp:
        items, sizes = _extract(shard_set, Path(tmp))
        rules = {backend: decode_rule(backend), "naive": decode_rule("naive")}
        work = decode_work(items, cfg, sorted(set(rules.values())))
        read = {
            backend: float(np.mean(sizes)),
            "naive": float(np.mean([Path(p).stat().st_size for p, _, _ in items])),
        }
        naive = DataLoader(NaiveVideoDataset(items, cfg), batch_size=batch, shuffle=True, num_workers=workers,
                           drop_last=True, persistent_workers=False)  # fmt: skip

        def baseline():
            for video, _ in naive:
                yield video

        # Interleaved rounds, so a change in the machine's background load hits both loaders alike.
        per = max(batch, -(-clips // ROUNDS))
        acc = {backend: [0, 0.0, [], 0.0, 0], "naive": [0, 0.0, [], 0.0, 0]}
        with tqdm(total=2 * ROUNDS * per, desc="bench pipeline", unit="clip") as bar:
            for _ in range(ROUNDS):
                for name, factory in ((backend, ours), ("naive", baseline)):
                    n, dt, startup, cpu, made = _time(factory, per, bar)
                    acc[name][0] += n
                    acc[name][1] += dt
                    acc[name][2].append(startup)
                    acc[name][3] += cpu
                    acc[name][4] += made
        loader = None  # its threads and buffers, before the sweep builds others
        sweep = (pipeline_sweep(cfg, split, shards, counts, clips, work[rules[backend]], device)
                 if backend == "dali" else [])  # fmt: skip
    results = [
        {"loader": name, "clips": n, "seconds": dt, "clips_per_s": n / dt, "frames_per_s": n * frames / dt,
         "decoded_frames_per_s": n / dt * work[rules[name]],
         "startup_s": float(np.median(st)), "cpu_ms_per_clip": 1000.0 * cpu / made,
         "decoded_frames_per_clip": work[rules[name]], "decode_rule": rules[name],
         "bytes_read_per_clip": read[name]}
        for name, (n, dt, st, cpu, made) in acc.items()
    ]  # fmt: skip
    report = {
        "backend": backend,
        "device": str(device),
        "shards": str(shards),
        "split": split,
        "samples": shard_set.num_samples,
        "frames": frames,
        "size": size,
        "batch": batch,
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "results": results,
        "speedup_vs_naive": results[0]["clips_per_s"] / results[1]["clips_per_s"],
        "cpu_ratio_naive_over_ours": results[1]["cpu_ms_per_clip"] / results[0]["cpu_ms_per_clip"],
        "pipelines": sweep,
    }
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "pipeline.json", report, indent=2)
    if as_json:
        print(jsonlib.dumps(report, indent=2))
        return 0
    print(f"pipeline bench: {shard_set.num_samples} {split} samples from {shards}, "
          f"clips {frames}x{size}x{size}, "
          f"batch {batch}, {workers} workers, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'loader':<8} {'clips/s':>9} {'frames/s':>10} {'CPU ms/clip':>12} {'decoded/clip':>13} "
          f"{'KB read/clip':>13} {'startup s':>10} {'clips':>6}  decode rule")  # fmt: skip
    for r in results:
        print(f"{r['loader']:<8} {r['clips_per_s']:>9.2f} {r['frames_per_s']:>10.1f} {r['cpu_ms_per_clip']:>12.1f} "
              f"{r['decoded_frames_per_clip']:>13.1f} {r['bytes_read_per_clip'] / 1e3:>13.1f} "
              f"{r['startup_s']:>10.2f} {r['clips']:>6}  {r['decode_rule']}")  # fmt: skip
    print(
        f"{backend} over the naive loader: {report['speedup_vs_naive']:.2f}x clips/s, "
        f"{report['cpu_ratio_naive_over_ours']:.2f}x less CPU per clip"
    )
    print(sweep_table(sweep))
    return 0


def sweep_table(sweep: list[dict]) -> str:
    """The pipeline sweep as text lines (empty without one)."""
    if not sweep:
        return ""
    lines = [f"{'DALI pipelines':>14} {'clips/s':>9} {'decoded frames/s':>17} {'startup s':>10}"]
    for r in sweep:
        if "skipped" in r:
            lines.append(f"{r['pipelines']:>14}  skipped: {r['skipped']}")
            continue
        lines.append(f"{r['pipelines']:>14} {r['clips_per_s']:>9.2f} {r['decoded_frames_per_s']:>17.0f} "
                     f"{r['startup_s']:>10.2f}")  # fmt: skip
    return "\n".join(lines)
