"""A conversion split over a cluster: ``marvit convert ... --part I/N`` and ``marvit manifest merge OUT``.

The split's conversion order (the seeded permutation, see ``convert.py``) is cut into windows of
``shard_size`` positions, one shard each (see ``writer.py``); part I of N converts the contiguous run of
windows ``[I * W // N, (I + 1) * W // N)`` of the ``W`` windows. Every part lists the whole split and decides
the classes from it (the same inputs give every part the same classes, order and fingerprint), writes its
own shards (named by window, so no two parts write the same name) and keeps its own resume file
(``OUT/.{split}.part-IofN.progress.json``). A finished part writes its partial manifest
``OUT/parts/{split}.IofN.json``: its shards (with the positions they cover), skipped files and short clips,
and what the one manifest needs (fingerprint, classes, format, source, order).

Parts run as N independent jobs of any scheduler (a Slurm job array, a Kubernetes indexed job, ``xargs
-P``) on machines that share the output directory; a killed part is rerun alone and resumes. When all N
have finished, :func:`merge` checks that every part is there, finished, and agrees with the others, that
each shard is on disk with its recorded size, and writes the split into ``manifest.json``: the same entry
(samples, shards and checksums, classes, skipped files, short clips, order) as a one-part conversion of
the same inputs writes.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from marvit.errors import InputError
from marvit.pipeline.dirlock import manifest_lock
from marvit.pipeline.manifest import atomic_write_json, check_split, index_path
from marvit.pipeline.writer import Progress, split_entry, write_manifest

PARTS_DIR = "parts"


def parse_part(text: str | tuple[int, int]) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N; I counts from 0 as Slurm's array index and Kubernetes' completion index do)."""
    if isinstance(text, tuple):
        i, n = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise InputError(f"--part {text!r}: expected I/N, e.g. 0/3 (part I of N, I from 0 to N-1)")
        i, n = int(m.group(1)), int(m.group(2))
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--part {i}/{n}: need N >= 1 and 0 <= I < N (I counts from 0)")
    return i, n


def part_windows(n_items: int, shard_size: int, part: int, parts: int) -> range:
    """The shard windows part ``part`` of ``parts`` converts (contiguous; together they cover them all)."""
    w = -(-n_items // shard_size)
    return range(part * w // parts, (part + 1) * w // parts)


def part_span(n_items: int, shard_size: int, windows: range) -> tuple[int, int]:
    """The positions ``[first, end)`` of the conversion order that ``windows`` cover."""
    return min(windows.start * shard_size, n_items), min(windows.stop * shard_size, n_items)


def part_path(out: Path, split: str, part: int, parts: int) -> Path:
    return Path(out) / PARTS_DIR / f"{split}.{part}of{parts}.json"


def progress_name(split: str, part: int, parts: int) -> str:
    """The resume file of a part (one part: the plain conversion's name)."""
    return f".{split}.progress.json" if parts == 1 else f".{split}.part-{part}of{parts}.progress.json"


def write_part(out: Path, split: str, part: int, parts: int, prog: Progress, info: dict) -> Path:
    """The finished part's partial manifest: its records (with positions) and the split's shared facts."""
    path = part_path(out, split, part, parts)
    path.parent.mkdir(exist_ok=True)
    atomic_write_json(path, {"split": split, "part": [part, parts], "span": list(prog.span), "finished": True,
                             "fingerprint": prog.fingerprint, "shards": prog.shards, "skipped": prog.skipped,
                             "short": prog.short, **info})  # fmt: skip
    return path


def finished_part(out: Path, split: str, part: int, parts: int, fp: str) -> dict | None:
    """The partial manifest of a finished part with fingerprint ``fp`` whose shards are intact, else None."""
    from marvit.pipeline.writer import shard_ok

    try:
        rec = json.loads(part_path(out, split, part, parts).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("fingerprint") != fp or not all(shard_ok(out, r) for r in rec.get("shards", [])):
        return None
    return rec


def _read_parts(out: Path, split: str) -> list[dict]:
    """Every part of ``split`` (all of one N, all finished, agreeing), in part order; InputError otherwise."""
    found: dict[int, dict[int, Path]] = {}
    pat = re.compile(rf"^{re.escape(split)}\.(\d+)of(\d+)\.json$")
    d = out / PARTS_DIR
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        m = pat.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if not found:
        raise InputError(
            f"{d}: no finished part of split {split!r} (run `marvit convert ... --part I/N` first)"
        )
    if len(found) > 1:
        raise InputError(f"{d}: split {split!r} has parts of several splittings (N = {sorted(found)}); "
                         "remove the ones of the splitting you do not want")  # fmt: skip
    (n, have), = found.items()  # fmt: skip
    missing = [i for i in range(n) if i not in have]
    if missing:
        running = [i for i in missing if (out / f".{split}.part-{i}of{n}.progress.json").exists()]
        raise InputError(
            f"{out}: split {split!r}: parts {missing} of 0..{n - 1} have not finished"
            + (f" ({running} started: running, or killed and to be rerun)" if running else "")
            + "; run them (a killed part resumes), then merge again"
        )
    try:
        recs = [json.loads(have[i].read_text()) for i in range(n)]
    except (OSError, ValueError) as e:
        raise InputError(f"{d}: a part's manifest cannot be read ({e}); rerun that part") from None
    first = recs[0]
    for i, r in enumerate(recs):
        for key in ("fingerprint", "classes", "order", "format"):
            if r.get(key) != first.get(key):
                raise InputError(f"{have[i]}: its {key} differs from part 0's: the parts converted different "
                                 "inputs or settings; rerun them with the same ones")  # fmt: skip
        if not r.get("finished"):
            raise InputError(f"{have[i]}: not finished")
    spans = [tuple(r["span"]) for r in recs]
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:])) or spans[0][0] != 0:
        raise InputError(f"{d}: the parts' positions {spans} do not cover the split without gaps")
    return recs


def merge_split(out: str | Path, split: str = "train") -> dict:
    """Check the finished parts of ``split`` and write the split's entry into ``manifest.json``."""
    out = Path(out)
    check_split(split)
    if not out.is_dir():
        raise InputError(f"{out}: not a directory; expected a `marvit convert` output directory")
    recs = _read_parts(out, split)
    for r in recs:
        for s in r["shards"]:
            p = out / s["name"]
            if not p.is_file() or p.stat().st_size != s["bytes"] or not index_path(p).is_file():
                raise InputError(f"shard {p} of part {r['part'][0]}/{r['part'][1]}: missing, resized or "
                                 "without its index; rerun that part (it resumes) and merge again")  # fmt: skip
    first = recs[0]
    prog = Progress(out / ".merge", first["fingerprint"], (0, recs[-1]["span"][1]),
                    shards=[s for r in recs for s in r["shards"]],
                    skipped=[s for r in recs for s in r["skipped"]],
                    short=[s for r in recs for s in r["short"]])  # fmt: skip
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entry = split_entry(prog, fmt_info=first["format"], source=first["source"], order=first["order"],
                        short=first["short_policy"], seconds=max(r["seconds"] for r in recs),
                        created=created)  # fmt: skip
    if all("copied" in r for r in recs):
        entry["copied"] = sum(r["copied"] for r in recs)
        entry["reencoded"] = sum(r["reencoded"] for r in recs)
    entry["parts"] = len(recs)
    with manifest_lock(out):
        write_manifest(out, split, entry, first["classes"], first.get("flip_map"))
    for r in recs:
        part_path(out, split, *r["part"]).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # other splits' parts remain
        (out / PARTS_DIR).rmdir()
    return entry


def merge(out: str, split: str = "train") -> int:
    """``marvit manifest merge OUT --split S``: the finished parts of a split into the one manifest."""
    e = merge_split(out, split)
    print(f"merge {split}: {e['parts']} parts, {e['num_samples']} samples in {len(e['shards'])} shards, "
          f"{e['num_skipped']} skipped -> {Path(out) / 'manifest.json'}")  # fmt: skip
    if e["num_skipped"]:
        print(
            f"  skipped files are listed in the manifest (first: {e['skipped'][0]['path']})", file=sys.stderr
        )
    return 0
