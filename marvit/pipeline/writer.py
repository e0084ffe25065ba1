"""Writing a split's shards so that a killed conversion resumes with every sample exactly once.

A conversion visits the split's items in one fixed order (a seeded permutation of the listing, see
``convert.py``) and cuts it into windows of ``shard_size`` positions: window w (positions
``[w * shard_size, (w + 1) * shard_size)``) becomes shard ``{split}-{w:06d}.tar`` with the window's good
samples (fewer where files were skipped; no shard where all were). So the shard a sample lands in, and the
shard's bytes, depend only on the inputs, the settings and the seed, never on what happened to other
windows: a conversion split into parts (``--part I/N``: each part a contiguous run of windows) writes
exactly the shards of the one-part conversion, and no two parts write the same name.

Each shard is written to ``NAME.PID-TOKEN.tmp`` (unique per process), hashed as it is written, renamed
when complete (its DALI index likewise) and read back: its checksum must be the one computed while writing,
so the progress file and the manifest record only bytes that were written and verified. The progress file
records each shard (name, samples, sha256, the positions it covers), the files skipped and the short clips
seen so far and where the run has got to. A rerun whose :func:`fingerprint` matches keeps the recorded
shards whose checksum still matches, discards temporary and unrecorded files of its own windows, and
continues after the last kept shard. Different inputs or settings start the part over.
:func:`split_entry` assembles the split's manifest entry and :func:`write_manifest` merges it into
``manifest.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
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


def temp_name(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process uses (pid and a random token)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


class _HashingFile:
    """The shard's file as tarfile writes it: every byte also goes into a sha256 (what was written)."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.n += len(b)
        return self.f.write(b)

    def tell(self) -> int:
        return self.f.tell()


class ShardWriter:
    """One shard written under a temporary name; ``finish`` indexes it and renames both into place."""

    def __init__(self, out: Path, split: str, number: int):
        self.path = out / shard_name(split, number)
        self.tmp = temp_name(self.path)
        # open across many ``add`` calls; ``finish`` or ``abandon`` closes them
        self.file = open(self.tmp, "wb")  # noqa: SIM115
        self.hashing = _HashingFile(self.file)
        self.tar = tarfile.open(fileobj=self.hashing, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
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
        idx_tmp = temp_name(idx)
        write_index(self.tmp, idx_tmp)
        os.replace(self.tmp, self.path)
        os.replace(idx_tmp, idx)
        # read back what is now under the final name: the record holds only bytes written and verified
        written, size = self.hashing.sha.hexdigest(), self.path.stat().st_size
        if sha256_file(self.path) != written or size != self.hashing.n:
            raise RuntimeError(
                f"{self.path}: its bytes on disk are not the {self.hashing.n} bytes just written (another "
                "process wrote there, or the disk returned other data); not recorded"
            )
        return {"name": self.path.name, "samples": self.samples, "sha256": written, "bytes": size}

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


def clear_split_files(out: Path, split: str, keep_shards: set[str], windows: range | None = None) -> None:
    """Remove every shard, index and temp file of ``split`` (of shard numbers in ``windows``: a part's own)
    except the kept shards and their indexes."""
    keep = keep_shards | {index_path(out / n).name for n in keep_shards}
    pat = split_files_re(split)
    for p in out.iterdir():
        m = pat.match(p.name)
        if m and p.name not in keep and (windows is None or int(m.group(1)) in windows):
            p.unlink(missing_ok=True)


@dataclass
class Progress:
    """A part's recorded state (the whole split for one part): complete shards, and the skipped files and
    short clips before ``start``, the next position in the conversion order to convert.

    ``span`` is the part's positions ``[first, end)``; positions of skipped and short entries are their
    ``pos`` keys."""

    path: Path
    fingerprint: str
    span: tuple[int, int]
    shards: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    short: list[dict] = field(default_factory=list)
    start: int = -1  # -1: the span's first position

    def __post_init__(self) -> None:
        if self.start < 0:
            self.start = self.span[0]

    @classmethod
    def resume(cls, out: Path, split: str, fp: str, span: tuple[int, int], windows: range | None,
               name: str | None = None) -> Progress:  # fmt: skip
        """The intact recorded shards of an earlier run of this part with the same fingerprint; removes
        everything else of the part's windows (temporary shards, unrecorded or damaged files)."""
        path = out / (name or f".{split}.progress.json")
        prog = cls(path, fp, span)
        try:
            state = json.loads(path.read_text()) if path.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            state = {}
        if state.get("fingerprint") == fp and state.get("span") == list(span):
            recorded = state.get("shards", [])
            for rec in recorded:
                if not shard_ok(out, rec):
                    break
                prog.shards.append(rec)
            intact = len(prog.shards) == len(recorded)
            prog.start = (
                int(state.get("end_pos", span[0])) if intact else recorded[len(prog.shards)]["first_pos"]
            )
            prog.skipped = [s for s in state.get("skipped", []) if s["pos"] < prog.start]
            prog.short = [s for s in state.get("short", []) if s["pos"] < prog.start]
        clear_split_files(out, split, {r["name"] for r in prog.shards}, windows)
        return prog

    def save(self) -> None:
        atomic_write_json(self.path, {"fingerprint": self.fingerprint, "span": list(self.span),
                                      "end_pos": self.start, "shards": self.shards, "skipped": self.skipped,
                                      "short": self.short})  # fmt: skip

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
