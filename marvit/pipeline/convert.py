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

import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from marvit.pipeline.dirlock import ConvertLock, manifest_lock
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
from marvit.pipeline.manifest import MANIFEST, check_split, load_manifest, writable_dir
from marvit.pipeline.parts import (
    PARTS_DIR,
    finished_part,
    parse_part,
    part_span,
    part_windows,
    progress_name,
    write_part,
)
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

__all__ = ["convert", "convert_split", "run_conversion", "ConvertOptions", "verify", "verify_dir", "check_shard", "ConvertError", "Item",
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


@dataclass
class ConvertOptions:
    """What ``marvit convert`` is asked to do: one field per option (the CLI's flags carry these names), so
    a new option is one field here and one flag in ``cli.py``."""

    src: str | Path
    out: str | Path
    fmt: str
    annotations: str | Path | None = None
    labels: str | Path | None = None
    split: str = "train"
    short_side: int = DEFAULT_SHORT_SIDE
    copy: bool = False
    shard_size: int = DEFAULT_SHARD_SIZE
    workers: int = 2
    progress: bool = True
    seed: int = 0
    gop: int = DEFAULT_GOP
    all_intra: bool = False
    fastdecode: bool = DEFAULT_FASTDECODE
    crf: int = DEFAULT_CRF
    min_frames: int = DEFAULT_MIN_FRAMES
    short: str = "keep"
    part: str | tuple[int, int] = "0/1"  # I/N: the I-th of N parts of the split (parts.py)

    def check(self) -> tuple[int, int]:
        """Refuse values that cannot be converted (ConvertError); returns the part (I, N)."""
        try:
            check_split(self.split)
        except ValueError as e:
            raise ConvertError(str(e)) from e
        for key, low in (("shard_size", 1), ("short_side", 2), ("min_frames", 1)):
            if getattr(self, key) < low:
                raise ConvertError(f"{key}={getattr(self, key)}: must be >= {low}")
        if self.short not in SHORT_POLICIES:
            raise ConvertError(f"short={self.short!r}: expected one of {list(SHORT_POLICIES)}")
        self.encoding()  # its own checks (gop, crf)
        return parse_part(self.part)

    def encoding(self) -> Encoding:
        return Encoding(gop=1 if self.all_intra else self.gop, fastdecode=self.fastdecode, crf=self.crf)

    def settings(self) -> dict:
        """What the shards' bytes depend on besides the inputs (in the fingerprint; version 3: windows)."""
        return dict(format=self.fmt, split=self.split, short_side=self.short_side, copy=self.copy,
                    shard_size=self.shard_size, seed=self.seed, min_frames=self.min_frames, short=self.short,
                    **self.encoding().as_dict(), version=3)  # fmt: skip


def convert_split(*args: Any, **kwargs: Any) -> dict:
    """Convert one split (or one part of it); ``ConvertOptions(*args, **kwargs)``. Returns the split's
    manifest entry (a part: its partial manifest). Raises ConvertError (an InputError) for inputs that
    cannot be converted as asked."""
    return run_conversion(ConvertOptions(*args, **kwargs))


def run_conversion(o: ConvertOptions) -> dict:
    """Lists the split, takes the output's lock for this split and part, converts, records the result."""
    t0 = time.perf_counter()
    part, parts = o.check()
    out = Path(o.out)
    ann = Path(o.annotations) if o.annotations else None
    listing = read_listing(Path(o.src), o.fmt, ann, Path(o.labels) if o.labels else None, o.split)
    if out.exists() and not out.is_dir():
        raise ConvertError(f"output {out}: exists and is not a directory")
    writable_dir(out, "out")
    with ConvertLock(out, o.split, part, parts):
        return _convert_locked(o, listing, part, parts, t0)


def _convert_locked(o: ConvertOptions, listing: Listing, part: int, parts: int, t0: float) -> dict:
    out, split = Path(o.out), o.split
    try:
        manifest = load_manifest(out)
    except ValueError as e:
        raise ConvertError(str(e)) from e
    classes, items = decide_classes(listing, manifest)
    order = conversion_order(len(items), o.seed)
    fp = fingerprint(items, order, classes, o.settings())
    windows = part_windows(len(items), o.shard_size, part, parts)
    span = part_span(len(items), o.shard_size, windows)
    tag = f"{split}" if parts == 1 else f"{split} part {part}/{parts}"

    # Finished already? Then there is nothing to do but say so.
    # (a part: its partial manifest, or the merged split when the merge has already happened)
    done = (manifest or {}).get("splits", {}).get(split)
    done = (
        done
        if parts == 1 or (done and done.get("fingerprint") == fp)
        else finished_part(out, split, part, parts, fp)
    )
    if done and done.get("fingerprint") == fp and all(shard_ok(out, r) for r in done["shards"]):
        (out / progress_name(split, part, parts)).unlink(missing_ok=True)
        n = done.get("num_samples", sum(r["samples"] for r in done["shards"]))
        print(f"convert {tag}: up to date ({n} samples in {len(done['shards'])} shards)")
        return done

    # Resume from the recorded shards that are still intact; anything else of this part's windows goes.
    # a part clears only its own windows (the last part also those past the end: an older, longer run's)
    own = None if parts == 1 else range(windows.start, 10**6 if part == parts - 1 else windows.stop)
    prog = Progress.resume(out, split, fp, span, own, progress_name(split, part, parts))
    if prog.shards:
        print(f"convert {tag}: resuming after {len(prog.shards)} complete shards (position {prog.start} of "
              f"{span[0]}..{span[1]})")  # fmt: skip
    prog.save()
    counts = _write_shards(o, items, order, classes, prog, tag)

    fmt_info = {"container": "mp4", "codec": "h264", "pix_fmt": "yuv420p", **o.encoding().as_dict(),
                "short_side": o.short_side, "copy": o.copy}  # fmt: skip
    source = {"path": str(Path(o.src).resolve()), "format": o.fmt, "annotations": str(o.annotations)
              if o.annotations else None, "labels": str(listing.labels_file) if listing.labels_file else None,
              "items": len(items)}  # fmt: skip
    info = dict(format=fmt_info, source=source, order={"seed": o.seed, "sha256": order_digest(order),
                "kind": "permutation"}, short_policy={"min_frames": o.min_frames, "policy": o.short},
                seconds=round(time.perf_counter() - t0, 3),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    if counts is not None:  # counts of this run's encoder choices (a resumed run only knows its own)
        info["copied"], info["reencoded"] = counts
    flip = (
        flip_map(listing, Path(o.annotations) if o.annotations else None, classes)
        if o.fmt == "list"
        else None
    )
    if parts > 1:
        path = write_part(out, split, part, parts, prog, {**info, "classes": classes, "flip_map": flip})
        prog.remove()
        print(f"convert {tag}: {sum(r['samples'] for r in prog.shards)} samples in {len(prog.shards)} shards, "
              f"{len(prog.skipped)} skipped -> {path}")  # fmt: skip
        return json.loads(path.read_text())
    entry = split_entry(prog, fmt_info=info["format"], source=source, order=info["order"],
                        short=info["short_policy"], seconds=info["seconds"], created=info["created"])  # fmt: skip
    if counts is not None:
        entry["copied"], entry["reencoded"] = counts
    with manifest_lock(out):
        write_manifest(out, split, entry, classes, flip)
    prog.remove()
    for p in (out / PARTS_DIR).glob(f"{split}.*of*.json"):  # an earlier splitting's parts: superseded
        p.unlink()
    _warn_short(split, entry["short"])
    return entry


def _hold() -> None:
    """Tests only: MARVIT_CONVERT_HOLD_FILE=F holds a conversion after its first shard while F exists (a
    test that needs a conversion alive at a known point: a second writer, a killed part)."""
    f = os.environ.get("MARVIT_CONVERT_HOLD_FILE")
    deadline = time.time() + 600
    while f and Path(f).exists() and time.time() < deadline:
        time.sleep(0.05)


def _write_shards(o: ConvertOptions, items: list[Item], order: list[int], classes: list[str], prog: Progress,
                  tag: str) -> tuple[int, int] | None:  # fmt: skip
    """Convert positions ``prog.start .. prog.span[1]``: window w's good samples into shard w; the progress
    file saved after each window. Returns (copied, re-encoded) when this run did the whole part."""
    first, end = prog.start, prog.span[1]
    class_index = {n: i for i, n in enumerate(classes)}
    threads = 1 if o.workers > 1 else 0
    enc = o.encoding()
    jobs = [(p, str(items[order[p]].path), o.short_side, o.copy, threads, enc)
            for p in range(first, end) if items[order[p]].path is not None]  # fmt: skip
    writer: ShardWriter | None = None
    n_copied = n_reencoded = 0
    bar = tqdm(total=end - prog.span[0], initial=first - prog.span[0], desc=f"convert {tag}", unit="video",
               disable=not o.progress, file=sys.stderr)  # fmt: skip
    pending = run_jobs(_work, jobs, o.workers)
    try:
        nxt = next(pending, None)
        for p in range(first, end):
            i = order[p]
            it = items[i]
            if it.path is None:
                res = {"ok": False, "reason": "missing file"}
            else:
                assert nxt is not None and nxt[0] == p
                res = nxt[1]
                nxt = next(pending, None)
            res = _check_short(res, o, prog, p, it.source)
            if not res["ok"]:
                prog.skipped.append({"pos": p, "path": it.source, "reason": res["reason"]})
            else:
                if writer is None:
                    writer = ShardWriter(Path(o.out), o.split, p // o.shard_size)
                meta = {"label": it.label, "class": class_index[it.label], "source": it.source, **res["meta"]}
                writer.add(sample_key(o.split, i, it.source), res["data"], class_index[it.label], meta)
                n_copied += bool(res["meta"].get("copied"))
                n_reencoded += not res["meta"].get("copied")
            if (p + 1) % o.shard_size == 0 or p + 1 == end:  # the window's last position
                if writer is not None:
                    w0 = (p // o.shard_size) * o.shard_size
                    prog.shards.append({**writer.finish(), "first_pos": w0, "end_pos": p + 1})
                    writer = None
                prog.start = p + 1
                prog.save()
                if len(prog.shards) == 1:
                    _hold()
            bar.update()
            bar.set_postfix(shards=len(prog.shards), skipped=len(prog.skipped), refresh=False)
    finally:
        pending.close()  # on an error or interrupt: cancel queued work; a temp shard stays for the rerun
    bar.close()
    return (n_copied, n_reencoded) if first == prog.span[0] else None


def _check_short(res: dict, o: ConvertOptions, prog: Progress, p: int, source: str) -> dict:
    """Record a clip shorter than ``min_frames``; with ``short=skip`` it becomes a skip."""
    if res["ok"] and res["meta"]["frames"] < o.min_frames:
        prog.short.append({"pos": p, "path": source, "frames": res["meta"]["frames"]})
        if o.short == "skip":
            return {
                "ok": False,
                "reason": f"short: {res['meta']['frames']} frames, fewer than min_frames={o.min_frames}",
            }
    return res


def convert(**kwargs: Any) -> int:
    """``marvit convert``: convert one split (or part) and print a summary; ``kwargs`` are
    :class:`ConvertOptions` fields. Bad inputs raise ConvertError (an InputError: the CLI prints its one
    line and exits 2)."""
    o = ConvertOptions(**kwargs)
    e = run_conversion(o)
    if "num_samples" not in e:  # a part: its summary is printed; `marvit manifest merge` writes the manifest
        part, parts = parse_part(o.part)
        print(f"  when all {parts} parts have finished: marvit manifest merge {o.out} --split {o.split}")
        return 0
    print(
        f"convert {o.split}: {e['num_samples']} samples in {len(e['shards'])} shards, "
        f"{len(e['skipped'])} skipped, {sum(s['bytes'] for s in e['shards']) / 1e6:.1f} MB, "
        f"{e['seconds']:.1f} s -> {Path(o.out) / MANIFEST}"
    )
    if "copied" in e and o.copy:
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
