"""Writing a split's shards so that a killed conversion resumes with every sample exactly once.

A conversion visits the split's items in one fixed order (a seeded permutation of the listing, see
``convert.py``) and cuts a shard every ``shard_size`` good samples, so the shard a sample lands in depends
only on the inputs, the settings and the seed. Each shard is written to ``NAME.tmp`` and renamed when
complete (its DALI index likewise); then ``.{split}.progress.json`` records it (name, samples, sha256,
the positions in the order it consumed) with the files skipped and the short clips seen so far. A rerun
whose :func:`fingerprint` matches keeps the recorded shards whose checksum still matches, discards
temporary and unrecorded files, and continues after the last kept shard. Different inputs or settings
start the split over. :func:`split_entry` assembles the split's manifest entry and :func:`write_manifest`
merges it into ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from marvit.pipeline.listing import Item
from marvit.pipeline.manifest import (
    MANIFEST,
    atomic_write_json,
    index_path,
    load_manifest,
    sha256_file,
    shard_name,
    split_files_re,
)

TAR_MTIME = 946684800  # fixed member times (2000-01-01) so a shard's bytes depend on its content only


def _sanitize(s: str, n: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", s)[:n].strip("_") or "v"


def sample_key(split: str, index: int, source: str) -> str:
    """Unique, dot-free and slash-free: the split, the item's listing position and a readable stem."""
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


def fingerprint(items: list[Item], order: list[int], classes: list[str], settings: dict) -> str:
    """What the split's shards depend on: settings, classes, the order and every item (name, label, size)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps(classes).encode())
    h.update(order_digest(order).encode())
    for it in items:
        size = it.path.stat().st_size if it.path else -1
        h.update(f"{it.source}\0{it.label}\0{size}\n".encode())
    return h.hexdigest()


def order_digest(order: list[int]) -> str:
    """sha256 of the conversion order (listing positions, in the order they are written)."""
    return hashlib.sha256(json.dumps([int(i) for i in order]).encode()).hexdigest()


def shard_ok(out: Path, rec: dict) -> bool:
    p = out / rec["name"]
    return p.is_file() and index_path(p).is_file() and sha256_file(p) == rec["sha256"]


def clear_split_files(out: Path, split: str, keep_shards: set[str]) -> None:
    """Remove every shard, index and temp file of ``split`` except the kept shards and their indexes."""
    keep = keep_shards | {index_path(out / n).name for n in keep_shards}
    pat = split_files_re(split)
    for p in out.iterdir():
        if pat.match(p.name) and p.name not in keep:
            p.unlink()


@dataclass
class Progress:
    """A split's recorded state: complete shards, and the skipped files and short clips before ``start``.

    ``start`` is the position in the conversion order after the last kept shard; positions of skipped
    and short entries are the ``pos`` keys."""

    path: Path
    fingerprint: str
    shards: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    short: list[dict] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.shards[-1]["end_pos"] if self.shards else 0

    @classmethod
    def resume(cls, out: Path, split: str, fp: str) -> Progress:
        """The intact recorded shards of an earlier run with the same fingerprint; removes everything else
        of the split (temporary shards, unrecorded or damaged files)."""
        path = out / f".{split}.progress.json"
        prog = cls(path, fp)
        try:
            state = json.loads(path.read_text()) if path.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            state = {}
        if state.get("fingerprint") == fp:
            for rec in state.get("shards", []):
                if not shard_ok(out, rec):
                    break
                prog.shards.append(rec)
            prog.skipped = [s for s in state.get("skipped", []) if s["pos"] < prog.start]
            prog.short = [s for s in state.get("short", []) if s["pos"] < prog.start]
        clear_split_files(out, split, {r["name"] for r in prog.shards})
        return prog

    def save(self) -> None:
        atomic_write_json(self.path, {"fingerprint": self.fingerprint, "shards": self.shards,
                                      "skipped": self.skipped, "short": self.short})  # fmt: skip

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def split_entry(prog: Progress, *, fmt_info: dict, source: dict, order: dict, short: dict, seconds: float,
                created: str) -> dict:  # fmt: skip
    """The split's manifest entry (see ``manifest.py``)."""
    return {
        "num_samples": sum(r["samples"] for r in prog.shards),
        "shards": [{k: r[k] for k in ("name", "samples", "sha256", "bytes")} for r in prog.shards],
        "skipped": [{"path": s["path"], "reason": s["reason"]} for s in prog.skipped],
        "num_skipped": len(prog.skipped),
        "short": {
            **short,
            "count": len(prog.short),
            "clips": [{"path": s["path"], "frames": s["frames"]} for s in prog.short],
        },  # fmt: skip
        "format": fmt_info,
        "source": source,
        "order": order,
        "fingerprint": prog.fingerprint,
        "seconds": round(seconds, 3),
        "created": created,
    }


def write_manifest(out: Path, split: str, entry: dict, classes: list[str], flip: dict | None) -> None:
    """Merge the split's entry into ``manifest.json`` (atomically), with the class list and flip map."""
    manifest = load_manifest(out) or {"classes": classes, "splits": {}}
    manifest["classes"] = classes
    if flip is not None:
        manifest["flip_map"] = flip
    manifest["splits"][split] = entry
    manifest["marvit_version"] = _version()
    manifest["updated"] = entry["created"]
    atomic_write_json(out / MANIFEST, manifest)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("marvit")
    except Exception:  # noqa: BLE001
        return "unknown"
