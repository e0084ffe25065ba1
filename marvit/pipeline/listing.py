"""What ``marvit convert`` converts: a data set's listing as users have it, and the one class list.

Four layouts: ``folder`` (class-per-folder trees such as UCF101/HMDB51), ``kinetics`` (the official CSV
over a folder of clips), ``ssv2`` (the official JSON files over ``{id}.webm``; the labels JSON is found
beside the annotations, as ``labels/labels.json`` sits beside ``labels/train.json``, when ``--labels`` is
not given) and ``list`` (``path label_index`` lines, names from ``--labels`` or ``classes.txt`` beside
it). :func:`read_listing` returns the items in listing order and what the source says about classes.

The class list is decided once, in :func:`decide_classes`, from that listing and the manifest already in
the output directory. The first converted split fixes ``classes`` (folder/kinetics: sorted names, or the
order of a ``--labels`` file; ssv2: the labels file's indices; list: its indices, named by the class list
when there is one). A later split must use those classes: a label name the manifest lacks, or a name at a
different index, is refused rather than silently renumbering anything (convert the split with every
class first, or pass ``--labels`` with the full class list). A list file without names is read as
indices and named with the manifest's classes.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from marvit.errors import InputError
from marvit.pipeline.manifest import MANIFEST

FORMATS = ("folder", "kinetics", "ssv2", "list")


class ConvertError(InputError):
    """Inputs that cannot be converted as asked; the message names the file, key or value and the fix."""


@dataclass(frozen=True)
class Item:
    """One video of the source listing."""

    path: Path | None  # None: the listing names a file that does not exist
    source: str  # as the listing names it (relative where it can be)
    label: str  # a class name, or the decimal index where the source has no names (see Listing.named)


@dataclass(frozen=True)
class Listing:
    """A split's items in listing order and the source's own view of its classes."""

    items: list[Item]
    classes: list[str]  # the source's class list (for an unnamed list file: "0".."max index")
    explicit: bool  # the indices are fixed by a file (ssv2 labels, --labels, a list file's class list)
    named: bool  # labels are names; False for a list file without a class list (indices only)
    labels_file: Path | None  # the class-list file used, recorded in the manifest


# --------------------------------------------------------------------------------------------------------
# The four layouts
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


def read_classes_file(path: Path) -> list[str]:
    """A class list: a text file (one name per line), a JSON list, or a JSON object {name: index}."""
    if not path.is_file():
        raise ConvertError(f"labels file {path}: does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConvertError(f"labels file {path}: not UTF-8 text ({e})") from e
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConvertError(f"labels file {path}: not valid JSON ({e})") from e
        if isinstance(obj, list) and obj and all(isinstance(n, str) for n in obj):
            return obj
        if isinstance(obj, dict) and obj:
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


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConvertError(f"{what} {path}: not UTF-8 text ({e})") from e


def _read_folder(src: Path) -> Listing:
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        raise ConvertError(f"source {src}: no class folders (expected SRC/CLASS/video files)")
    items = []
    for name in classes:
        for p in sorted((src / name).rglob("*")):
            if p.is_file() and not any(q.startswith(".") for q in p.relative_to(src).parts):
                items.append(Item(p, p.relative_to(src).as_posix(), name))
    if not items:
        raise ConvertError(f"source {src}: the class folders {classes[:5]} hold no files")
    return Listing(items, classes, explicit=False, named=True, labels_file=None)


def _read_kinetics(src: Path, annotations: Path, split: str) -> Listing:
    try:
        with open(annotations, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ConvertError(f"annotations file {annotations}: not a readable CSV ({e})") from e
    need = {"label", "youtube_id", "time_start", "time_end"}
    if not rows or not need <= set(rows[0]):
        have = sorted(k for k in rows[0] if k) if rows else []
        raise ConvertError(
            f"annotations file {annotations}: expected CSV columns {sorted(need)} (and 'split'); found {have}"
        )
    if "split" in rows[0]:
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:  # the official files hold one split each, e.g. validate.csv says "val"
            print(f"convert: {annotations} has no rows with split={split!r}; taking all {len(rows)} rows",
                  file=sys.stderr)  # fmt: skip
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
    return Listing(items, sorted({it.label for it in items}), explicit=False, named=True, labels_file=None)


def _read_ssv2(src: Path, annotations: Path, labels: Path | None) -> Listing:
    if labels is None:
        beside = annotations.parent / "labels.json"  # SSv2's layout: labels/labels.json, labels/train.json
        if not beside.is_file():
            raise ConvertError(
                f"--format ssv2 needs --labels (the labels JSON, {{template name: index}}); none given and "
                f"{beside} (where SSv2 keeps it, beside the annotations) does not exist"
            )
        labels = beside
    classes = read_classes_file(labels)
    known = set(classes)
    try:
        entries = json.loads(_read_text(annotations, "annotations file"))
    except json.JSONDecodeError as e:
        raise ConvertError(f"annotations file {annotations}: not valid JSON ({e})") from e
    if not isinstance(entries, list) or not entries:
        raise ConvertError(
            f"annotations file {annotations}: expected a non-empty list of "
            "{'id', 'label', 'template', 'placeholders'}"
        )
    index = _stem_index(src)
    items = []
    for n, e in enumerate(entries):
        if not isinstance(e, dict) or "id" not in e or "template" not in e:
            raise ConvertError(
                f"annotations file {annotations}: entry {n} lacks 'id' or 'template' ({str(e)[:80]}); the "
                "test set carries no labels and cannot be converted for training or evaluation"
            )
        name = str(e["template"]).replace("[", "").replace("]", "")  # as the official code derives it
        if name not in known:
            raise ConvertError(
                f"annotations file {annotations}: entry {n} (id {e['id']}): template {name!r} is not in {labels}"
            )
        path = index.get(str(e["id"]))
        items.append(Item(path, path.relative_to(src).as_posix() if path else f"{e['id']}.webm", name))
    return Listing(items, classes, explicit=True, named=True, labels_file=labels)


def _read_list(src: Path, annotations: Path, labels: Path | None) -> Listing:
    base = annotations.parent
    entries = []
    for n, line in enumerate(_read_text(annotations, "annotations file").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise ConvertError(f"{annotations}:{n}: expected 'path label_index', got {line!r}")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise ConvertError(f"annotations file {annotations}: no 'path label' lines")
    if labels is None and (base / "classes.txt").is_file():
        labels = base / "classes.txt"
    top = max(i for _, i in entries)
    classes = read_classes_file(labels) if labels else [str(i) for i in range(top + 1)]
    if top >= len(classes):
        raise ConvertError(f"{annotations}: label index {top} but {labels} names only {len(classes)} classes")
    items = []
    for rel, i in entries:
        p = Path(rel)
        cands = [p] if p.is_absolute() else [base / p, src / p]
        path = next((c for c in cands if c.is_file()), None)
        items.append(Item(path, rel, classes[i]))
    named = labels is not None
    return Listing(items, classes, explicit=named, named=named, labels_file=labels)


def read_listing(src: Path, fmt: str, annotations: Path | None, labels: Path | None, split: str) -> Listing:
    """The split's items in listing order and the source's classes; bad inputs raise ConvertError."""
    if fmt not in FORMATS:
        raise ConvertError(f"format {fmt!r}: expected one of {list(FORMATS)}")
    if not src.exists():
        raise ConvertError(f"source {src}: does not exist")
    if not src.is_dir():
        raise ConvertError(f"source {src}: not a directory")
    if fmt != "folder":
        if annotations is None:
            raise ConvertError(f"--format {fmt} needs --annotations")
        if not annotations.is_file():
            raise ConvertError(f"annotations file {annotations}: does not exist")
    if fmt == "ssv2":
        return _read_ssv2(src, annotations, labels)
    if fmt == "list":
        return _read_list(src, annotations, labels)
    listing = _read_folder(src) if fmt == "folder" else _read_kinetics(src, annotations, split)
    if labels is None:
        return listing
    full = read_classes_file(labels)  # a full class list fixes the order (e.g. all 400 Kinetics classes)
    missing = sorted({it.label for it in listing.items} - set(full))
    if missing:
        raise ConvertError(f"labels file {labels}: lacks classes used by the source: {missing[:10]}")
    return replace(listing, classes=full, explicit=True, labels_file=labels)


# --------------------------------------------------------------------------------------------------------
# The class list, decided once
# --------------------------------------------------------------------------------------------------------


def decide_classes(listing: Listing, manifest: dict | None) -> tuple[list[str], list[Item]]:
    """The output's class list after adding this split, and the items labelled with its names.

    The first split's classes are the source's. Later splits keep the manifest's list: unnamed indices
    are named by it; names must all be in it, and explicit indices must agree with it."""
    have = list((manifest or {}).get("classes") or [])
    if not have:
        return listing.classes, listing.items
    if not listing.named:  # a list file without names: indices are all it has, the manifest names them
        if len(listing.classes) > len(have):
            raise ConvertError(
                f"the source uses class index {len(listing.classes) - 1}; {MANIFEST} has {len(have)} classes"
            )
        return have, [replace(it, label=have[int(it.label)]) for it in listing.items]
    unknown = sorted({it.label for it in listing.items} - set(have))
    if unknown:
        raise ConvertError(
            f"classes {unknown[:10]} are not in {MANIFEST}'s {len(have)} classes; splits must share one "
            "class list: convert the split holding every class first, or pass --labels with the full list"
        )
    if listing.explicit:
        for i, (a, b) in enumerate(zip(have, listing.classes)):
            if a != b:
                raise ConvertError(f"class index {i} is {b!r} here but {a!r} in {MANIFEST}")
    return have, listing.items


def flip_map(listing: Listing, annotations: Path | None, classes: list[str]) -> dict | None:
    """A ``flip_map.json`` beside a list file (``marvit synth`` writes one), in the output's indices."""
    path = annotations.parent / "flip_map.json" if annotations is not None else None
    if path is None or not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        by_name = {listing.classes[int(k)]: listing.classes[int(v)] for k, v in raw.items()}
        if not listing.named:  # source indices -> the output's names
            by_name = {classes[int(a)]: classes[int(b)] for a, b in by_name.items()}
        return {str(classes.index(a)): classes.index(b) for a, b in by_name.items()
                if a in classes and b in classes}  # fmt: skip
    except (ValueError, IndexError, AttributeError, json.JSONDecodeError) as e:
        print(f"convert: ignoring {path}: {e}", file=sys.stderr)
        return None
