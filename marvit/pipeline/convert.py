"""``marvit convert`` and ``marvit verify``: data sets as users have them -> checked WebDataset shards.

Conversion reads one split of a data set in one of four layouts (``folder``: class-per-folder trees such
as UCF101/HMDB51; ``kinetics``: the official CSV over a folder of clips; ``ssv2``: the official JSON files
over ``{id}.webm``; ``list``: ``path label`` lines), decodes every video completely to check it, re-encodes
it to H.264 yuv420p mp4 with a short closed GOP at a short side (never upscaled), or with ``copy`` keeps
the original bytes when they are already H.264 yuv420p in mp4, and writes ``{split}-NNNNNN.tar`` shards
with a DALI index each and ``manifest.json`` (see ``manifest.py``). A file that cannot be used (missing,
empty, corrupt, truncated, not a video) is skipped and listed with its reason; it never stops a run.

Resuming. Samples keep the order of the source listing, and a shard is cut every ``shard_size`` good
samples, so the shard a sample lands in depends only on the data. Each shard is written to ``NAME.tmp``
and renamed when complete; then ``.{split}.progress.json`` records it (name, samples, sha256, the source
items it consumed). A rerun with the same inputs keeps the recorded shards whose checksum still matches,
discards temporary and unrecorded files, and continues after the last kept shard: no sample is lost or
written twice. Different inputs or settings start the split over.

Classes. The first converted split fixes ``classes`` (folder/kinetics: sorted names; ssv2: the labels
file's indices; list: the indices in the file, names from ``--labels`` or ``classes.txt`` beside it).
A later split must use those classes: a label name the manifest lacks, or a name at a different index,
is refused with an error rather than silently renumbering anything (convert the split with every class
first, or pass ``--labels`` with the full class list).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from marvit.pipeline.manifest import (
    MANIFEST,
    atomic_write_bytes,
    atomic_write_json,
    check_split,
    index_path,
    load_manifest,
    read_index,
    sha256_file,
    shard_name,
    split_files_re,
)
from marvit.pipeline.video import (
    DEFAULT_CRF,
    DEFAULT_GOP,
    VideoError,
    probe,
    run_jobs,
    transcode_h264,
)

FORMATS = ("folder", "kinetics", "ssv2", "list")
TAR_MTIME = 946684800  # fixed member times (2000-01-01) so a shard's bytes depend on its content only
COPYABLE_PIX_FMTS = ("yuv420p", "yuvj420p")


class ConvertError(ValueError):
    """Inputs that cannot be converted as asked; the message names the file, key or value and the fix."""


@dataclass
class Item:
    """One video of the source listing, in conversion order."""

    path: Path | None  # None: the listing names a file that does not exist
    source: str  # as the listing names it (relative where it can be)
    label: str


# --------------------------------------------------------------------------------------------------------
# Reading the four source layouts
# --------------------------------------------------------------------------------------------------------


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _stem_index(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by its stem (first found in sorted order wins)."""
    index: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and _visible(p):
            index.setdefault(p.stem, p)
    return index


def _read_classes_file(path: Path) -> list[str]:
    """A class list: a text file (one name per line), a JSON list, or a JSON object {name: index}."""
    if not path.is_file():
        raise ConvertError(f"labels file {path}: does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConvertError(f"labels file {path}: not valid JSON ({e})") from e
        if isinstance(obj, list) and all(isinstance(n, str) for n in obj):
            return obj
        if isinstance(obj, dict):
            try:
                pairs = sorted((int(v), str(k)) for k, v in obj.items())
            except (TypeError, ValueError) as e:
                raise ConvertError(
                    f"labels file {path}: expected {{name: index}} with integer indices"
                ) from e
            if [i for i, _ in pairs] != list(range(len(pairs))):
                raise ConvertError(f"labels file {path}: indices must be 0..{len(pairs) - 1}, each once")
            return [n for _, n in pairs]
        raise ConvertError(f"labels file {path}: expected a list of names or an object {{name: index}}")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ConvertError(f"labels file {path}: no class names in it")
    return names


def _read_folder(src: Path) -> tuple[list[Item], list[str], bool]:
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        raise ConvertError(f"{src}: no class folders (expected SRC/CLASS/video files)")
    items = []
    for name in classes:
        for p in sorted((src / name).rglob("*")):
            if p.is_file() and not any(q.startswith(".") for q in p.relative_to(src).parts):
                items.append(Item(p, p.relative_to(src).as_posix(), name))
    return items, classes, False


def _read_kinetics(src: Path, annotations: Path, split: str) -> tuple[list[Item], list[str], bool]:
    with open(annotations, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "youtube_id", "time_start", "time_end"}
    if not rows or not need <= set(rows[0]):
        have = sorted(rows[0]) if rows else []
        raise ConvertError(f"{annotations}: expected CSV columns {sorted(need)} (and 'split'); found {have}")
    if "split" in rows[0]:
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:  # the official files hold one split each, e.g. validate.csv says "val"
            print(f"convert: {annotations} has no rows with split={split!r}; taking all {len(rows)} rows")
            chosen = rows
        rows = chosen
    index = _stem_index(src)
    items = []
    for n, r in enumerate(rows, start=2):
        try:
            stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        except (TypeError, ValueError) as e:
            raise ConvertError(f"{annotations}:{n}: time_start/time_end must be numbers, got {r}") from e
        path = index.get(stem)
        items.append(Item(path, path.relative_to(src).as_posix() if path else stem + ".mp4", r["label"]))
    return items, sorted({it.label for it in items}), False


def _read_ssv2(src: Path, annotations: Path, labels: Path | None) -> tuple[list[Item], list[str], bool]:
    if labels is None:
        raise ConvertError("--format ssv2 needs --labels (the labels JSON, {template name: index})")
    classes = _read_classes_file(labels)
    known = set(classes)
    try:
        entries = json.loads(annotations.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConvertError(f"{annotations}: not valid JSON ({e})") from e
    if not isinstance(entries, list):
        raise ConvertError(f"{annotations}: expected a list of {{'id', 'label', 'template', 'placeholders'}}")
    index = _stem_index(src)
    items = []
    for n, e in enumerate(entries):
        if not isinstance(e, dict) or "id" not in e or "template" not in e:
            raise ConvertError(
                f"{annotations}: entry {n} lacks 'id' or 'template' ({str(e)[:80]}); the test set carries no "
                "labels and cannot be converted for training or evaluation"
            )
        name = e["template"].replace("[", "").replace("]", "")  # as the official code derives the class
        if name not in known:
            raise ConvertError(
                f"{annotations}: entry {n} (id {e['id']}): template {name!r} is not in {labels}"
            )
        path = index.get(str(e["id"]))
        items.append(Item(path, path.relative_to(src).as_posix() if path else f"{e['id']}.webm", name))
    return items, classes, True


def _read_list(src: Path, annotations: Path, labels: Path | None) -> tuple[list[Item], list[str], bool]:
    base = annotations.parent
    entries = []
    for n, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise ConvertError(f"{annotations}:{n}: expected 'path label_index', got {line!r}")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise ConvertError(f"{annotations}: no 'path label' lines")
    if labels is None and (base / "classes.txt").is_file():
        labels = base / "classes.txt"
    named = labels is not None
    top = max(i for _, i in entries)
    classes = _read_classes_file(labels) if named else [str(i) for i in range(top + 1)]
    if top >= len(classes):
        raise ConvertError(f"{annotations}: label index {top} but {labels} names only {len(classes)} classes")
    items = []
    for rel, i in entries:
        p = Path(rel)
        cands = [p] if p.is_absolute() else [base / p, src / p]
        path = next((c for c in cands if c.is_file()), None)
        items.append(Item(path, rel, classes[i]))
    return items, classes, named


def read_source(src: Path, fmt: str, annotations: Path | None, labels: Path | None, split: str):
    """(items in conversion order, the source's class list, whether its indices are explicit)."""
    if fmt not in FORMATS:
        raise ConvertError(f"format {fmt!r}: expected one of {list(FORMATS)}")
    if not src.is_dir():
        raise ConvertError(f"source {src}: not a directory")
    if fmt != "folder":
        if annotations is None:
            raise ConvertError(f"--format {fmt} needs --annotations")
        if not annotations.is_file():
            raise ConvertError(f"annotations file {annotations}: does not exist")
    if fmt == "folder":
        items, classes, explicit = _read_folder(src)
    elif fmt == "kinetics":
        items, classes, explicit = _read_kinetics(src, annotations, split)
    elif fmt == "ssv2":
        return _read_ssv2(src, annotations, labels)
    else:
        return _read_list(src, annotations, labels)
    if labels is not None:  # a full class list fixes the order (e.g. all 400 Kinetics classes)
        full = _read_classes_file(labels)
        missing = sorted({it.label for it in items} - set(full))
        if missing:
            raise ConvertError(f"{labels}: lacks classes used by the source: {missing[:10]}")
        return items, full, True
    return items, classes, explicit


def reconcile_classes(manifest: dict | None, classes: list[str], explicit: bool, named: bool,
                      used: set[str]) -> list[str]:  # fmt: skip
    """The class list after adding this split; refuses anything that would renumber existing classes."""
    if manifest is None or not manifest.get("classes"):
        return classes
    have = list(manifest["classes"])
    if not named:  # a list file without names: indices are all it has, the manifest names them
        if len(classes) > len(have):
            raise ConvertError(
                f"the source uses class index {len(classes) - 1}; the manifest has {len(have)}"
            )
        return have
    unknown = sorted(used - set(have))
    if unknown:
        raise ConvertError(
            f"classes {unknown[:10]} are not in {MANIFEST}'s {len(have)} classes; splits must share one "
            "class list: convert the split holding every class first, or pass --labels with the full list"
        )
    if explicit:
        clash = [(i, a, b) for i, (a, b) in enumerate(zip(have, classes)) if a != b]
        if clash:
            i, a, b = clash[0]
            raise ConvertError(f"class index {i} is {b!r} here but {a!r} in {MANIFEST}")
    return have


# --------------------------------------------------------------------------------------------------------
# Per-video work (runs in worker processes)
# --------------------------------------------------------------------------------------------------------


def _reason(e: BaseException) -> str:
    if isinstance(e, VideoError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return "missing file"
    name = type(e).__name__
    detail = getattr(e, "strerror", None) or str(e)  # FFmpeg errors: without the path, which we list
    if "InvalidData" in name:
        return f"not a readable video ({detail})"
    return f"{name}: {detail}"


def process_video(path: str, short_side: int, copy: bool, threads: int) -> dict:
    """Check one video and produce the bytes to store; never raises for a bad file (``ok`` False)."""
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
        data, src_info, out = transcode_h264(path, short_side=short_side, threads=threads)
        meta = dict(frames=out.frames, fps=out.fps, width=out.width, height=out.height, codec="h264",
                    copied=False, source_codec=src_info.codec, source_width=src_info.width,
                    source_height=src_info.height)  # fmt: skip
        if why:
            meta["note"] = why
        return {"ok": True, "data": data, "meta": meta}
    except Exception as e:  # noqa: BLE001 - any failure of one file is that file's problem, not the run's
        return {"ok": False, "reason": _reason(e)}


def _work(job: tuple) -> tuple[int, dict]:
    index, path, short_side, copy, threads = job
    return index, process_video(path, short_side, copy, threads)


# --------------------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------------------


def _sanitize(s: str, n: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", s)[:n].strip("_") or "v"


def sample_key(split: str, index: int, source: str) -> str:
    """Unique, dot-free and slash-free: the split, the item's position and a readable stem."""
    return f"{split}_{index:07d}_{_sanitize(Path(source).stem)}"


def write_index(tar_path: Path, idx_path: Path) -> None:
    """Write the DALI index of ``tar_path`` with DALI's bundled ``wds2idx`` (module, else the script)."""
    try:
        from wds2idx import IndexCreator  # shipped with nvidia-dali as a top-level module
    except ImportError:
        IndexCreator = None
    if IndexCreator is not None:
        with IndexCreator(str(tar_path), str(idx_path), verbose=False) as ic:
            ic.create_index()
    else:
        subprocess.run(["wds2idx", str(tar_path), str(idx_path)], check=True, capture_output=True)


class ShardWriter:
    """One shard written under ``NAME.tmp``; ``finish`` indexes it and renames both into place."""

    def __init__(self, out: Path, split: str, number: int):
        self.path = out / shard_name(split, number)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        # open across many ``add`` calls; ``finish`` or ``abandon`` closes them
        self.file = open(self.tmp, "wb")  # noqa: SIM115
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.samples = 0

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, data: bytes, cls: int, meta: dict) -> None:
        self._member(f"{key}.cls", str(cls).encode("ascii"))
        self._member(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        self._member(f"{key}.mp4", data)
        self.samples += 1

    def finish(self) -> dict:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        idx = index_path(self.path)
        idx_tmp = idx.with_name(idx.name + ".tmp")
        write_index(self.tmp, idx_tmp)
        os.replace(self.tmp, self.path)
        os.replace(idx_tmp, idx)
        return {"name": self.path.name, "samples": self.samples, "sha256": sha256_file(self.path),
                "bytes": self.path.stat().st_size}  # fmt: skip

    def abandon(self) -> None:
        self.tar.close()
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _shard_ok(out: Path, rec: dict) -> bool:
    p = out / rec["name"]
    return p.is_file() and index_path(p).is_file() and sha256_file(p) == rec["sha256"]


def _clear_split_files(out: Path, split: str, keep_shards: set[str]) -> None:
    """Remove every shard, index and temp file of ``split`` except the kept shards and their indexes."""
    keep = keep_shards | {index_path(out / n).name for n in keep_shards}
    pat = split_files_re(split)
    for p in out.iterdir():
        if pat.match(p.name) and p.name not in keep:
            p.unlink()


def _fingerprint(items: list[Item], classes: list[str], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps(classes).encode())
    for it in items:
        size = it.path.stat().st_size if it.path else -1
        h.update(f"{it.source}\0{it.label}\0{size}\n".encode())
    return h.hexdigest()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("marvit")
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------------------


def convert_split(src: str | Path, out: str | Path, fmt: str, annotations: str | Path | None = None,
                  labels: str | Path | None = None, split: str = "train", short_side: int = 320,
                  copy: bool = False, shard_size: int = 256, workers: int = 2,
                  progress: bool = True) -> dict:  # fmt: skip
    """Convert one split of ``src`` into shards under ``out``; returns the split's manifest entry.

    Raises ConvertError (a ValueError) for inputs that cannot be converted as asked.
    """
    t0 = time.perf_counter()
    try:
        check_split(split)
    except ValueError as e:
        raise ConvertError(str(e)) from e
    if shard_size < 1:
        raise ConvertError(f"shard_size={shard_size}: must be >= 1")
    if short_side < 2:
        raise ConvertError(f"short_side={short_side}: must be >= 2")
    src, out = Path(src), Path(out)
    ann = Path(annotations) if annotations else None
    lab = Path(labels) if labels else None
    items, src_classes, explicit = read_source(src, fmt, ann, lab, split)
    if fmt == "list" and lab is None and (ann.parent / "classes.txt").is_file():
        lab = ann.parent / "classes.txt"  # what _read_list used: recorded in the manifest
    named = explicit or fmt != "list"  # a list file without a class list has indices, not names
    out.mkdir(parents=True, exist_ok=True)
    try:
        manifest = load_manifest(out)
    except ValueError as e:
        raise ConvertError(str(e)) from e
    classes = reconcile_classes(manifest, src_classes, explicit, named, {it.label for it in items})
    if not named and manifest and manifest.get("classes"):  # relabel index names with the manifest's
        items = [Item(it.path, it.source, classes[int(it.label)]) for it in items]
    class_index = {n: i for i, n in enumerate(classes)}

    settings = dict(format=fmt, split=split, short_side=short_side, copy=copy, shard_size=shard_size,
                    gop=DEFAULT_GOP, crf=DEFAULT_CRF, version=1)  # fmt: skip
    fingerprint = _fingerprint(items, classes, settings)
    progress_path = out / f".{split}.progress.json"

    # Finished already? Then there is nothing to do but say so.
    done = (manifest or {}).get("splits", {}).get(split)
    if done and done.get("fingerprint") == fingerprint and all(_shard_ok(out, r) for r in done["shards"]):
        progress_path.unlink(missing_ok=True)
        print(f"convert {split}: up to date ({done['num_samples']} samples in {len(done['shards'])} shards)")
        return done

    # Resume from the recorded shards that are still intact; anything else of this split goes.
    shards: list[dict] = []
    skipped: list[dict] = []
    start = 0
    if progress_path.exists():
        try:
            state = json.loads(progress_path.read_text())
        except json.JSONDecodeError:
            state = {}
        if state.get("fingerprint") == fingerprint:
            for rec in state.get("shards", []):
                if not _shard_ok(out, rec):
                    break
                shards.append(rec)
            start = shards[-1]["end_item"] if shards else 0
            skipped = [s for s in state.get("skipped", []) if s["item"] < start]
            if shards:
                print(f"convert {split}: resuming after {len(shards)} complete shards (item {start})")
    _clear_split_files(out, split, {r["name"] for r in shards})

    def save_state() -> None:
        atomic_write_json(progress_path, {"fingerprint": fingerprint, "shards": shards, "skipped": skipped})

    save_state()
    jobs = [(i, str(it.path), short_side, copy, 1 if workers > 1 else 0)
            for i, it in enumerate(items) if i >= start and it.path is not None]  # fmt: skip
    missing = {i for i, it in enumerate(items) if i >= start and it.path is None}

    writer: ShardWriter | None = None
    first_item = start
    n_copied = n_reencoded = 0
    bar = tqdm(total=len(items), initial=start, desc=f"convert {split}", unit="video", disable=not progress,
               file=sys.stderr)  # fmt: skip

    pending = run_jobs(_work, jobs, workers)
    try:
        nxt = next(pending, None)
        for i in range(start, len(items)):
            it = items[i]
            if i in missing:
                res = {"ok": False, "reason": "missing file"}
            else:
                assert nxt is not None and nxt[0] == i
                res = nxt[1]
                nxt = next(pending, None)
            if not res["ok"]:
                skipped.append({"item": i, "path": it.source, "reason": res["reason"]})
            else:
                if writer is None:
                    writer, first_item = ShardWriter(out, split, len(shards)), i
                cls = class_index[it.label]
                meta = {"label": it.label, "class": cls, "source": it.source, **res["meta"]}
                writer.add(sample_key(split, i, it.source), res["data"], cls, meta)
                n_copied += bool(res["meta"].get("copied"))
                n_reencoded += not res["meta"].get("copied")
                if writer.samples == shard_size:
                    shards.append({**writer.finish(), "first_item": first_item, "end_item": i + 1})
                    writer = None
                    save_state()
            bar.update()
            bar.set_postfix(shards=len(shards), skipped=len(skipped), refresh=False)
        if writer is not None:
            shards.append({**writer.finish(), "first_item": first_item, "end_item": len(items)})
    finally:
        pending.close()  # on an error or interrupt: cancel queued work; a temp shard stays for the rerun
    bar.close()

    entry = {
        "num_samples": sum(r["samples"] for r in shards),
        "shards": [{k: r[k] for k in ("name", "samples", "sha256", "bytes")} for r in shards],
        "skipped": [{"path": s["path"], "reason": s["reason"]} for s in skipped],
        "num_skipped": len(skipped),
        "format": {
            "container": "mp4",
            "codec": "h264",
            "pix_fmt": "yuv420p",
            "gop": DEFAULT_GOP,
            "crf": DEFAULT_CRF,
            "short_side": short_side,
            "copy": copy,
        },  # fmt: skip
        "source": {
            "path": str(src.resolve()),
            "format": fmt,
            "annotations": str(ann) if ann else None,
            "labels": str(lab) if lab else None,
            "items": len(items),
        },  # fmt: skip
        "fingerprint": fingerprint,
        "seconds": round(time.perf_counter() - t0, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if start == 0:  # counts of this run's encoder choices (a resumed run only knows its own)
        entry["copied"], entry["reencoded"] = n_copied, n_reencoded
    manifest = load_manifest(out) or {"classes": classes, "splits": {}}
    manifest["classes"] = classes
    flip = _flip_map(fmt, ann, src_classes, classes)
    if flip is not None:
        manifest["flip_map"] = flip
    manifest["splits"][split] = entry
    manifest["marvit_version"] = _version()
    manifest["updated"] = entry["created"]
    atomic_write_json(out / MANIFEST, manifest)
    progress_path.unlink(missing_ok=True)
    return entry


def _flip_map(fmt: str, ann: Path | None, src_classes: list[str], classes: list[str]) -> dict | None:
    """A ``flip_map.json`` beside a list file (``marvit synth`` writes one), in the manifest's indices."""
    if fmt != "list" or ann is None or not (ann.parent / "flip_map.json").is_file():
        return None
    try:
        raw = json.loads((ann.parent / "flip_map.json").read_text())
        by_name = {src_classes[int(k)]: src_classes[int(v)] for k, v in raw.items()}
        return {
            str(classes.index(a)): classes.index(b)
            for a, b in by_name.items()
            if a in classes and b in classes
        }
    except (ValueError, IndexError, AttributeError, json.JSONDecodeError) as e:
        print(f"convert: ignoring {ann.parent / 'flip_map.json'}: {e}", file=sys.stderr)
        return None


def convert(src: str, out: str, fmt: str, annotations: str | None = None, labels: str | None = None,
            split: str = "train", short_side: int = 320, copy: bool = False, shard_size: int = 256,
            workers: int = 2) -> int:  # fmt: skip
    """``marvit convert``: convert one split, print a summary; 2 on inputs that cannot be converted."""
    try:
        e = convert_split(src, out, fmt, annotations, labels, split, short_side, copy, shard_size, workers)
    except ConvertError as err:
        print(f"marvit convert: {err}", file=sys.stderr)
        return 2
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


# --------------------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------------------


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
        m = members[key]
        lacking = sorted({"mp4", "cls", "json"} - set(m))
        if lacking:
            bad(f"{key}: lacks {', '.join('.' + x for x in lacking)}")
            continue
        try:
            cls = int(m["cls"][0].decode("ascii"))
            meta = json.loads(m["json"][0])
        except (ValueError, UnicodeDecodeError) as e:
            bad(f"{key}: unreadable .cls/.json ({e})")
            continue
        if not 0 <= cls < len(classes):
            bad(f"{key}: class {cls} outside 0..{len(classes) - 1}")
        elif meta.get("label") != classes[cls]:
            bad(f"{key}: .json label {meta.get('label')!r} but .cls {cls} is {classes[cls]!r}")
        try:
            info = probe(m["mp4"][0], threads=1)
            res["videos"] += 1
            if meta.get("frames") != info.frames:
                bad(f"{key}: decodes to {info.frames} frames, .json says {meta.get('frames')}")
        except Exception as e:  # noqa: BLE001 - report, never crash, on a damaged video
            bad(f"{key}: video does not decode ({_reason(e)})")
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
    """Check every shard of every split; returns the report (``ok`` False on any problem)."""
    out = Path(out)
    report: dict[str, Any] = {"out": str(out), "ok": True, "splits": {}, "problems": [], "warnings": []}
    try:
        manifest = load_manifest(out)
    except ValueError as e:
        manifest = None
        report["problems"].append(str(e))
    if manifest is None:
        if not report["problems"]:
            report["problems"].append(f"{out / MANIFEST}: missing")
        report["ok"] = False
        return report
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
        if (out / f".{split}.progress.json").exists():
            report["warnings"].append(f"{split}: a conversion of this split is unfinished or running")
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


def verify(out: str, json: bool = False) -> int:  # noqa: A002 - the CLI's keyword
    """``marvit verify``: print the report (one JSON object with ``json``); 1 on any problem."""
    report = verify_dir(out, progress=not json)
    text = _json_dumps(report)
    # the JSON beside the printed report; a read-only data set still gets the report printed
    with contextlib.suppress(OSError):
        atomic_write_bytes(Path(out) / "verify.json", (text + "\n").encode())
    if json:
        print(text)
    else:
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


def _json_dumps(obj: Any) -> str:
    import json as _json  # the ``json`` parameter of ``verify`` shadows the module there

    return _json.dumps(obj, indent=1)
