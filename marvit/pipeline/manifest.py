"""The shard directory's layout and its ``manifest.json``, shared by convert, verify and the loaders.

Layout of a ``marvit convert`` output directory OUT::

    OUT/manifest.json            classes and, per split, shards (name, samples, sha256), skipped files
    OUT/{split}-000000.tar       WebDataset shard: KEY.mp4 (H.264), KEY.cls (b"3"), KEY.json (metadata)
    OUT/{split}-000000.idx       its DALI index (``wds2idx``)

manifest.json::

    {"classes": [name, ...],                       # index order; one list for every split
     "flip_map": {"0": 1, ...},                   # optional: class index after a horizontal flip
     "splits": {"train": {"num_samples": int,
                          "shards": [{"name": "train-000000.tar", "samples": int, "sha256": hex,
                                      "bytes": int}],
                          "skipped": [{"path": str, "reason": str}],
                          "short": {"min_frames": 16, "policy": "keep" | "skip", "count": int,
                                    "clips": [{"path": str, "frames": int}]},
                          "order": {"seed": int, "sha256": hex, "kind": "permutation"},
                          "format": {"gop": int, "all_intra": bool, "fastdecode": bool, "crf": int, ...},
                          "source": {...}, "fingerprint": hex, ...}},
     "marvit_version": str, "updated": iso time}

Every file is written to a temporary name and renamed into place, so a reader sees the old or the new
version, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from marvit.pipeline.remote import file_url, is_remote, read_url, redact

MANIFEST = "manifest.json"
SPLIT_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")  # no '-' or '.': shard names and keys stay parseable


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def index_path(tar_path: str | Path) -> Path:
    """The DALI index beside a shard: same stem, ``.idx``."""
    p = Path(tar_path)
    return p.with_name(p.name[: -len(".tar")] + ".idx") if p.name.endswith(".tar") else p.with_suffix(".idx")


def read_index(path: str | Path) -> list[list[tuple[str, int, int, str | None]]]:
    """A DALI webdataset index (``v1.2 N``, then per sample ``ext offset size name`` for each member; v1.1
    has no names): per sample, (extension, data offset, size, member name or None) of each member."""
    return parse_index(Path(path).read_text(), str(path))


def parse_index(text: str, path: str) -> list[list[tuple[str, int, int, str | None]]]:
    """:func:`read_index` of an index's text (``path`` names it in errors)."""
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v") or not head[1].isdigit():
        raise ValueError(f"{path}: not a DALI webdataset index (first line {lines[:1]}, expected 'v1.2 N')")
    step = 4 if head[0] >= "v1.2" else 3  # v1.2 adds the member's name
    samples = []
    for line in lines[1 : 1 + int(head[1])]:
        f = line.split()
        if not f or len(f) % step:
            raise ValueError(f"{path}: bad line {line[:60]!r}")
        samples.append([(f[j], int(f[j + 1]), int(f[j + 2]), f[j + 3] if step == 4 else None)
                        for j in range(0, len(f), step)])  # fmt: skip
    if len(samples) != int(head[1]):
        raise ValueError(f"{path}: header says {head[1]} samples, found {len(samples)}")
    return samples


def split_files_re(split: str) -> re.Pattern[str]:
    """Every file a conversion of ``split`` may leave: shards, indexes and their temporary versions
    (``NAME.PID-TOKEN.tmp``, unique per process). Group 1 is the shard number."""
    return re.compile(rf"^{re.escape(split)}-(\d{{6}})\.(?:tar|idx)(?:(?:\.[0-9a-f-]+)?\.tmp)?$")


def check_split(split: str) -> None:
    if not SPLIT_RE.match(split):
        raise ValueError(f"split={split!r}: must be 1-32 letters, digits or '_' (it names shards and keys)")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def writable_dir(path: str | Path, key: str) -> Path:
    """Create ``path`` and check a file can be written in it, before any work; else an InputError naming
    ``key`` (the option or config key that gave the path)."""
    from marvit.errors import InputError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(
            f"{key}={str(path)!r}: cannot write there ({e.strerror or e}); choose a writable directory"
        ) from None
    return path


def atomic_write_json(path: str | Path, obj: Any, indent: int = 1) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(out: str | Path) -> dict | None:
    """The manifest of ``out`` or None when there is none; a malformed one raises ValueError."""
    if isinstance(out, str) and is_remote(out):  # a URL root (see remote.py): read it from the storage
        return _load_remote_manifest(out)
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    return _parse_manifest(path.read_bytes(), str(path))


def _load_remote_manifest(root: str) -> dict | None:
    url = file_url(root, MANIFEST)
    try:
        data = read_url(url)
    except OSError as e:  # not there, not readable, no credentials: the storage tool's reason, redacted
        raise ValueError(f"{redact(url)}: cannot be read ({e})") from None
    return _parse_manifest(data, redact(url))


def _parse_manifest(data: bytes, path: str) -> dict:
    try:
        m = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if (
        not isinstance(m, dict)
        or not isinstance(m.get("classes"), list)
        or not isinstance(m.get("splits"), dict)
    ):
        raise ValueError(f"{path}: expected an object with 'classes' (a list) and 'splits' (an object)")
    return m
