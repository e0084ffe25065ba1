"""``marvit verify``: every shard of a ``marvit convert`` output checked against its manifest.

Per shard: the file exists and its sha256 is the manifest's; the tar reads and holds the recorded number
of samples, each with ``.mp4``, ``.cls`` and ``.json``; the class index and the ``.json`` label agree with
the manifest's classes; the video decodes completely to the frame count the ``.json`` claims; a sample
re-encoded by ``marvit convert`` has its keyframes where its ``keyint`` says (closed GOPs of that length:
what the loaders' seeking relies on); the DALI index matches the tar's member offsets. Shards run in a
process pool; the report (``ok`` False on any problem) is printed and written to ``verify.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from marvit.errors import InputError
from marvit.pipeline.manifest import (
    MANIFEST,
    atomic_write_bytes,
    index_path,
    load_manifest,
    read_index,
    sha256_file,
    split_files_re,
)
from marvit.pipeline.video import VideoError, keyframes, probe, run_jobs


def failure_reason(e: BaseException) -> str:
    """One line for why a video could not be used (the path is listed beside it, so not repeated)."""
    if isinstance(e, VideoError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return "missing file"
    name = type(e).__name__
    detail = getattr(e, "strerror", None) or str(e)  # FFmpeg errors: without the path, which we list
    if "InvalidData" in name:
        return f"not a readable video ({detail})"
    return f"{name}: {detail}"


def _check_sample(key: str, m: dict[str, tuple[bytes, int]], classes: list[str], bad) -> bool:
    """Checks of one sample's members; True when its video decoded."""
    lacking = sorted({"mp4", "cls", "json"} - set(m))
    if lacking:
        bad(f"{key}: lacks {', '.join('.' + x for x in lacking)}")
        return False
    try:
        cls = int(m["cls"][0].decode("ascii"))
        meta = json.loads(m["json"][0])
    except (ValueError, UnicodeDecodeError) as e:
        bad(f"{key}: unreadable .cls/.json ({e})")
        return False
    if not 0 <= cls < len(classes):
        bad(f"{key}: class {cls} outside 0..{len(classes) - 1}")
    elif meta.get("label") != classes[cls]:
        bad(f"{key}: .json label {meta.get('label')!r} but .cls {cls} is {classes[cls]!r}")
    try:
        info = probe(m["mp4"][0], threads=1)
    except Exception as e:  # noqa: BLE001 - report, never crash, on a damaged video
        bad(f"{key}: video does not decode ({failure_reason(e)})")
        return False
    if meta.get("frames") != info.frames:
        bad(f"{key}: decodes to {info.frames} frames, .json says {meta.get('frames')}")
    keyint = meta.get("keyint")
    if isinstance(keyint, int) and keyint >= 1:
        want = list(range(0, info.frames, keyint))
        got = keyframes(m["mp4"][0])
        if got != want:
            bad(f"{key}: keyframes at {got[:8]}..., the .json's keyint {keyint} means {want[:8]}...")
    return True


def check_shard(path: str, samples: int, sha256: str, classes: list[str]) -> dict:
    """Every check on one shard; returns {"shard", "samples", "videos", "problems": [str]}."""
    p = Path(path)
    res: dict[str, Any] = {"shard": p.name, "samples": 0, "videos": 0, "problems": []}
    bad = res["problems"].append
    if not p.is_file():
        bad("missing")
        return res
    if sha256_file(p) != sha256:
        bad("sha256 differs from the manifest")
    members: dict[str, dict[str, tuple[bytes, int]]] = {}
    order: list[str] = []
    try:
        with tarfile.open(p, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                if key not in members:
                    members[key] = {}
                    order.append(key)
                members[key][ext] = (tar.extractfile(m).read(), m.offset_data)
    except (tarfile.TarError, OSError, EOFError) as e:
        bad(f"unreadable tar: {e}")
    res["samples"] = len(order)
    if len(order) != samples:
        bad(f"{len(order)} samples, the manifest says {samples}")
    for key in order:
        res["videos"] += _check_sample(key, members[key], classes, bad)
    idx = index_path(p)
    if not idx.is_file():
        bad(f"index {idx.name} missing")
    else:
        try:
            entries = [[m[:3] for m in sample] for sample in read_index(idx)]
            want = [sorted((ext, off, len(data)) for ext, (data, off) in members[k].items()) for k in order]
            if [sorted(e) for e in entries] != want:
                bad(f"index {idx.name} does not match the tar's members")
        except (ValueError, IndexError) as e:
            bad(f"index {idx.name} unreadable ({e})")
    return res


def _check_job(job: tuple) -> dict:
    return check_shard(*job)


def verify_dir(out: str | Path, workers: int | None = None, progress: bool = True) -> dict:
    """Check every shard of every split; returns the report (``ok`` False on any problem).

    Raises InputError when ``out`` is not a conversion output (missing, not a directory, no or a
    malformed manifest.json): there is nothing to check."""
    out = Path(out)
    if not out.exists():
        raise InputError(f"{out}: does not exist; expected a `marvit convert` output directory")
    if not out.is_dir():
        raise InputError(f"{out}: not a directory; expected a `marvit convert` output directory")
    try:
        manifest = load_manifest(out)
    except ValueError as e:
        raise InputError(str(e)) from e
    if manifest is None:
        raise InputError(f"{out}: no {MANIFEST}; is this a `marvit convert` output directory?")
    report: dict[str, Any] = {"out": str(out), "ok": True, "splits": {}, "problems": [], "warnings": []}
    classes = manifest["classes"]
    jobs, owner = [], []
    for split, entry in manifest["splits"].items():
        shards = entry.get("shards", [])
        total = sum(s["samples"] for s in shards)
        if total != entry.get("num_samples"):
            report["problems"].append(
                f"{split}: shards hold {total} samples, num_samples says {entry.get('num_samples')}"
            )
        report["splits"][split] = {"shards": len(shards), "samples": 0, "videos": 0, "problems": 0}
        listed = {s["name"] for s in shards} | {index_path(out / s["name"]).name for s in shards}
        for p in sorted(out.iterdir()):
            if split_files_re(split).match(p.name) and p.name not in listed:
                report["warnings"].append(
                    f"{p.name}: not in the manifest (left by an unfinished conversion?)"
                )
        if (out / f".{split}.progress.json").exists() or list(out.glob(f".{split}.part-*.progress.json")):
            report["warnings"].append(f"{split}: a conversion of this split is unfinished or running")
        if list(out.glob(f"parts/{split}.*of*.json")):
            report["warnings"].append(f"{split}: finished parts not merged yet (`marvit manifest merge`)")
        short = entry.get("short") or {}
        if short.get("count"):
            report["warnings"].append(
                f"{split}: {short['count']} clips shorter than {short.get('min_frames')} frames "
                f"({short.get('policy')}; listed in the manifest)"
            )
        for s in shards:
            jobs.append((str(out / s["name"]), s["samples"], s["sha256"], classes))
            owner.append(split)
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = tqdm(total=len(jobs), desc="verify", unit="shard", disable=not progress, file=sys.stderr)

    for split, res in zip(owner, run_jobs(_check_job, jobs, workers)):
        s = report["splits"][split]
        s["samples"] += res["samples"]
        s["videos"] += res["videos"]
        s["problems"] += len(res["problems"])
        report["problems"] += [f"{split}/{res['shard']}: {msg}" for msg in res["problems"]]
        bar.update()
    bar.close()
    report["ok"] = not report["problems"]
    return report


def verify(out: str, as_json: bool = False) -> int:
    """``marvit verify``: print the report (one JSON object with ``as_json``); 1 on any problem."""
    report = verify_dir(out, progress=not as_json)
    text = json.dumps(report, indent=1)
    # the JSON beside the printed report; a read-only data set still gets the report printed
    with contextlib.suppress(OSError):
        atomic_write_bytes(Path(out) / "verify.json", (text + "\n").encode())
    if as_json:
        print(text)
        return 0 if report["ok"] else 1
    for split, s in report["splits"].items():
        state = "ok" if not s["problems"] else f"{s['problems']} problems"
        n = f"{s['shards']} shards, {s['samples']} samples, {s['videos']} videos decoded"
        print(f"{split}: {n}: {state}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    for p in report["problems"]:
        print(f"PROBLEM: {p}")
    print("verify: OK" if report["ok"] else f"verify: {len(report['problems'])} problems")
    return 0 if report["ok"] else 1
