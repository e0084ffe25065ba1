"""``marvit convert``: one split of a data set as users have it -> checked, shuffled WebDataset shards.

The jobs live in three modules: :mod:`.listing` reads the four source layouts and decides the class list
once; :mod:`.writer` writes shards, records progress and assembles the manifest; :mod:`.verify` checks
the result (``marvit verify``). This module runs a conversion: it lists the split, fixes the order,
checks and encodes every video in a process pool and hands the good ones to the shard writer.

Order. Real listings arrive sorted by class (class folders, Kinetics CSVs by label), and loaders shuffle
only within a window, so samples are written in a seeded random permutation of the listing
(``--seed``): every shard mixes classes. The seed and the order's sha256 go into the manifest; the same
inputs and seed give the same order, which is what resuming relies on (see :mod:`.writer`).

Per video: decode it completely (a file that cannot be used, being missing, empty, corrupt, truncated
or not a video, is skipped and listed with its reason; it never stops a run), then re-encode it to H.264
yuv420p mp4 with the chosen :class:`~marvit.pipeline.video.Encoding` (closed GOP, ``--all-intra``,
x264's fastdecode tune; the defaults come from docs/encoding.md) at a short side (never upscaled), or
with ``--copy`` keep the original bytes when they are already H.264 yuv420p in mp4. A clip with fewer
frames than ``--min-frames`` (what a model's clip needs) is flagged: kept (a loader repeats its last
frame) or skipped with ``--short skip``; either way it is listed in the manifest and a warning printed.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from marvit.pipeline.encoding import (
    DEFAULT_CRF,
    DEFAULT_FASTDECODE,
    DEFAULT_GOP,
    DEFAULT_MIN_FRAMES,
    DEFAULT_SHARD_SIZE,
    DEFAULT_SHORT_SIDE,
    Encoding,
)
from marvit.pipeline.listing import (
    FORMATS,
    ConvertError,
    Item,
    Listing,
    decide_classes,
    flip_map,
    read_listing,
)
from marvit.pipeline.manifest import MANIFEST, check_split, load_manifest
from marvit.pipeline.verify import check_shard, failure_reason, verify, verify_dir
from marvit.pipeline.video import probe, run_jobs, transcode_h264
from marvit.pipeline.writer import (
    Progress,
    ShardWriter,
    fingerprint,
    order_digest,
    sample_key,
    shard_ok,
    split_entry,
    write_manifest,
)

__all__ = ["convert", "convert_split", "verify", "verify_dir", "check_shard", "ConvertError", "Item",
           "Listing", "FORMATS", "ShardWriter", "process_video"]  # fmt: skip

COPYABLE_PIX_FMTS = ("yuv420p", "yuvj420p")
SHORT_POLICIES = ("keep", "skip")


# --------------------------------------------------------------------------------------------------------
# Per-video work (runs in worker processes)
# --------------------------------------------------------------------------------------------------------


def process_video(
    path: str, short_side: int, copy: bool, threads: int, encoding: Encoding | None = None
) -> dict:
    """Check one video and produce the bytes to store; never raises for a bad file (``ok`` False)."""
    enc = encoding or Encoding()
    try:
        if copy:
            info = probe(path, threads=threads)
            if info.codec == "h264" and "mp4" in info.container and info.pix_fmt in COPYABLE_PIX_FMTS:
                meta = dict(frames=info.frames, fps=info.fps, width=info.width, height=info.height,
                            codec="h264", copied=True)  # fmt: skip
                return {"ok": True, "data": Path(path).read_bytes(), "meta": meta}
            why = (
                f"copy: {info.codec}/{info.pix_fmt} in {info.container.split(',')[0]} re-encoded to h264/mp4"
            )
        else:
            why = None
        data, src_info, out = transcode_h264(path, short_side=short_side, threads=threads, encoding=enc)
        meta = dict(frames=out.frames, fps=out.fps, width=out.width, height=out.height, codec="h264",
                    copied=False, keyint=enc.gop, source_codec=src_info.codec, source_width=src_info.width,
                    source_height=src_info.height)  # fmt: skip
        if why:
            meta["note"] = why
        return {"ok": True, "data": data, "meta": meta}
    except Exception as e:  # noqa: BLE001 - any failure of one file is that file's problem, not the run's
        return {"ok": False, "reason": failure_reason(e)}


def _work(job: tuple) -> tuple[int, dict]:
    pos, path, short_side, copy, threads, enc = job
    return pos, process_video(path, short_side, copy, threads, enc)


# --------------------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------------------


def conversion_order(n: int, seed: int) -> list[int]:
    """The listing positions in the order they are written: a permutation drawn from ``seed``."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def _check_args(split: str, shard_size: int, short_side: int, min_frames: int, short: str) -> None:
    try:
        check_split(split)
    except ValueError as e:
        raise ConvertError(str(e)) from e
    if shard_size < 1:
        raise ConvertError(f"shard_size={shard_size}: must be >= 1")
    if short_side < 2:
        raise ConvertError(f"short_side={short_side}: must be >= 2")
    if min_frames < 1:
        raise ConvertError(f"min_frames={min_frames}: must be >= 1")
    if short not in SHORT_POLICIES:
        raise ConvertError(f"short={short!r}: expected one of {list(SHORT_POLICIES)}")


def convert_split(src: str | Path, out: str | Path, fmt: str, annotations: str | Path | None = None,
                  labels: str | Path | None = None, split: str = "train",
                  short_side: int = DEFAULT_SHORT_SIDE, copy: bool = False,
                  shard_size: int = DEFAULT_SHARD_SIZE, workers: int = 2, progress: bool = True, *,
                  seed: int = 0, gop: int = DEFAULT_GOP, all_intra: bool = False,
                  fastdecode: bool = DEFAULT_FASTDECODE, crf: int = DEFAULT_CRF,
                  min_frames: int = DEFAULT_MIN_FRAMES, short: str = "keep") -> dict:  # fmt: skip
    """Convert one split of ``src`` into shards under ``out``; returns the split's manifest entry.

    Raises ConvertError (an InputError) for inputs that cannot be converted as asked.
    """
    t0 = time.perf_counter()
    _check_args(split, shard_size, short_side, min_frames, short)
    enc = Encoding(gop=1 if all_intra else gop, fastdecode=fastdecode, crf=crf)
    src, out = Path(src), Path(out)
    ann = Path(annotations) if annotations else None
    listing = read_listing(src, fmt, ann, Path(labels) if labels else None, split)
    if out.exists() and not out.is_dir():
        raise ConvertError(f"output {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    try:
        manifest = load_manifest(out)
    except ValueError as e:
        raise ConvertError(str(e)) from e
    classes, items = decide_classes(listing, manifest)
    class_index = {n: i for i, n in enumerate(classes)}
    order = conversion_order(len(items), seed)

    settings = dict(format=fmt, split=split, short_side=short_side, copy=copy, shard_size=shard_size,
                    seed=seed, min_frames=min_frames, short=short, **enc.as_dict(), version=2)  # fmt: skip
    fp = fingerprint(items, order, classes, settings)

    # Finished already? Then there is nothing to do but say so.
    done = (manifest or {}).get("splits", {}).get(split)
    if done and done.get("fingerprint") == fp and all(shard_ok(out, r) for r in done["shards"]):
        (out / f".{split}.progress.json").unlink(missing_ok=True)
        print(f"convert {split}: up to date ({done['num_samples']} samples in {len(done['shards'])} shards)")
        return done

    # Resume from the recorded shards that are still intact; anything else of this split goes.
    prog = Progress.resume(out, split, fp)
    start = prog.start
    if prog.shards:
        print(f"convert {split}: resuming after {len(prog.shards)} complete shards ({start} of {len(items)})")
    prog.save()
    threads = 1 if workers > 1 else 0
    jobs = [(p, str(items[i].path), short_side, copy, threads, enc)
            for p, i in enumerate(order) if p >= start and items[i].path is not None]  # fmt: skip

    writer: ShardWriter | None = None
    first_pos = start
    n_copied = n_reencoded = 0
    bar = tqdm(total=len(items), initial=start, desc=f"convert {split}", unit="video", disable=not progress,
               file=sys.stderr)  # fmt: skip
    pending = run_jobs(_work, jobs, workers)
    try:
        nxt = next(pending, None)
        for p in range(start, len(items)):
            i = order[p]
            it = items[i]
            if it.path is None:
                res = {"ok": False, "reason": "missing file"}
            else:
                assert nxt is not None and nxt[0] == p
                res = nxt[1]
                nxt = next(pending, None)
            if res["ok"] and res["meta"]["frames"] < min_frames:
                prog.short.append({"pos": p, "path": it.source, "frames": res["meta"]["frames"]})
                if short == "skip":
                    reason = f"short: {res['meta']['frames']} frames, fewer than min_frames={min_frames}"
                    res = {"ok": False, "reason": reason}
            if not res["ok"]:
                prog.skipped.append({"pos": p, "path": it.source, "reason": res["reason"]})
            else:
                if writer is None:
                    writer, first_pos = ShardWriter(out, split, len(prog.shards)), p
                cls = class_index[it.label]
                meta = {"label": it.label, "class": cls, "source": it.source, **res["meta"]}
                writer.add(sample_key(split, i, it.source), res["data"], cls, meta)
                n_copied += bool(res["meta"].get("copied"))
                n_reencoded += not res["meta"].get("copied")
                if writer.samples == shard_size:
                    prog.shards.append({**writer.finish(), "first_pos": first_pos, "end_pos": p + 1})
                    writer = None
                    prog.save()
            bar.update()
            bar.set_postfix(shards=len(prog.shards), skipped=len(prog.skipped), refresh=False)
        if writer is not None:
            prog.shards.append({**writer.finish(), "first_pos": first_pos, "end_pos": len(items)})
    finally:
        pending.close()  # on an error or interrupt: cancel queued work; a temp shard stays for the rerun
    bar.close()

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    fmt_info = {"container": "mp4", "codec": "h264", "pix_fmt": "yuv420p", **enc.as_dict(),
                "short_side": short_side, "copy": copy}  # fmt: skip
    source = {"path": str(src.resolve()), "format": fmt, "annotations": str(ann) if ann else None,
              "labels": str(listing.labels_file) if listing.labels_file else None,
              "items": len(items)}  # fmt: skip
    entry = split_entry(prog, fmt_info=fmt_info, source=source,
                        order={"seed": seed, "sha256": order_digest(order), "kind": "permutation"},
                        short={"min_frames": min_frames, "policy": short}, seconds=time.perf_counter() - t0,
                        created=created)  # fmt: skip
    if start == 0:  # counts of this run's encoder choices (a resumed run only knows its own)
        entry["copied"], entry["reencoded"] = n_copied, n_reencoded
    flip = flip_map(listing, ann, classes) if fmt == "list" else None
    write_manifest(out, split, entry, classes, flip)
    prog.remove()
    _warn_short(split, entry["short"])
    return entry


def convert(src: str, out: str, fmt: str, annotations: str | None = None, labels: str | None = None,
            split: str = "train", short_side: int = DEFAULT_SHORT_SIDE, copy: bool = False,
            shard_size: int = DEFAULT_SHARD_SIZE,
            workers: int = 2, seed: int = 0, gop: int = DEFAULT_GOP, all_intra: bool = False,
            fastdecode: bool = DEFAULT_FASTDECODE, crf: int = DEFAULT_CRF,
            min_frames: int = DEFAULT_MIN_FRAMES, short: str = "keep") -> int:  # fmt: skip
    """``marvit convert``: convert one split and print a summary. Bad inputs raise ConvertError (an
    InputError: the CLI prints its one line and exits 2)."""
    e = convert_split(src, out, fmt, annotations, labels, split, short_side, copy, shard_size, workers,
                      seed=seed, gop=gop, all_intra=all_intra, fastdecode=fastdecode, crf=crf,
                      min_frames=min_frames, short=short)  # fmt: skip
    print(
        f"convert {split}: {e['num_samples']} samples in {len(e['shards'])} shards, "
        f"{len(e['skipped'])} skipped, {sum(s['bytes'] for s in e['shards']) / 1e6:.1f} MB, "
        f"{e['seconds']:.1f} s -> {Path(out) / MANIFEST}"
    )
    if "copied" in e and copy:
        print(
            f"  --copy: {e['copied']} kept as they were, {e['reencoded']} re-encoded (not H.264 yuv420p mp4)"
        )
    for s in e["skipped"][:20]:
        print(f"  skipped {s['path']}: {s['reason']}")
    if len(e["skipped"]) > 20:
        print(f"  ... and {len(e['skipped']) - 20} more (see the manifest)")
    return 0


def _warn_short(split: str, short: dict) -> None:
    if not short.get("count"):
        return
    what = ("kept: a loader repeats their last frame" if short["policy"] == "keep"
            else "skipped")  # fmt: skip
    listed = ", ".join(f"{c['path']} ({c['frames']})" for c in short["clips"][:5])
    more = f" and {short['count'] - 5} more" if short["count"] > 5 else ""
    print(
        f"warning: convert {split}: {short['count']} clips have fewer than min_frames={short['min_frames']} "
        f"frames ({what}; listed in the manifest under 'short'): {listed}{more}",
        file=sys.stderr,
    )
