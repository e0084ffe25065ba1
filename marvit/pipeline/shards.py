"""Finding a split's shards and reading a sample's metadata: shared by both loaders and the benchmark.

Also here, shared by both loaders: :class:`SkipLog` (the samples a loader skipped, by reason),
:func:`epoch_order` (the per-epoch shard order every rank agrees on) and :func:`check_shards` (shards
against the manifest before training starts).

A shard set comes from a ``marvit convert`` output directory (``manifest.json`` names the split's shards,
their sample counts and the classes) or from a shard glob / brace pattern (counts then come from the DALI
``.idx`` files beside the shards). Every sample gets a global id, its position in the split (shards in
order, samples in order within a shard), which both loaders report as ``video_id`` so the views of one
video can be averaged across ranks.
"""

from __future__ import annotations

import glob
import json
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand
import numpy as np

from marvit.errors import InputError
from marvit.pipeline.manifest import MANIFEST, index_path, load_manifest, read_index, sha256_file
from marvit.pipeline.remote import file_url, is_remote, redact
from marvit.pipeline.remote_cache import check_remote_shards, stage_shards


class ShardsMissing(InputError, FileNotFoundError):
    """Shards, their index or their manifest are not where the configuration says (a bad input)."""


class SplitMissing(InputError, KeyError):
    """The manifest has no such split."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class ShardSet:
    """One split's shards in order: ``counts[i]`` samples in ``urls[i]``; ``index_paths`` may be None."""

    urls: list[str]
    counts: list[int]
    index_paths: list[str] | None
    classes: list[str] | None = None
    # a URL root (remote.py): the manifest's rows of the shards (name, samples, sha256, bytes), which
    # staging to data.cache_dir verifies against; None for local shards
    remote: list[dict] | None = None
    starts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.starts = [sum(self.counts[:i]) for i in range(len(self.counts))]

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def key_ids(self) -> dict[tuple[str, str], int]:
        """(shard path, sample key) -> global id, read from the DALI index files."""
        if self.index_paths is None:
            raise ShardsMissing(
                f"shards {self.urls[0]}...: no DALI .idx files beside them; "
                "write them with `wds2idx SHARD.tar`"
            )
        ids: dict[tuple[str, str], int] = {}
        for url, idx, start in zip(self.urls, self.index_paths, self.starts):
            for pos, members in enumerate(read_index(idx)):
                name = members[0][3] if members else None
                ids[(url, name.rsplit(".", 1)[0] if name else "")] = start + pos
        return ids

    def incomplete_samples(self, members: tuple[str, ...]) -> list[str]:
        """ "shard sample 'key'" of every sample whose index entry lacks one of ``members`` (extensions)."""
        if self.index_paths is None:
            return []
        out = []
        for url, idx in zip(self.urls, self.index_paths):
            for entry in read_index(idx):
                have = {e[0] for e in entry}
                if not have.issuperset(members):
                    name = entry[0][3] if entry and entry[0][3] else "?"
                    out.append(f"{url} sample {name.rsplit('.', 1)[0]!r}")
        return out


class CorruptSample(InputError):
    """One sample's members contradict each other (``.cls`` and ``.json`` name different classes): a loader
    that can skip a sample skips and counts it under ``reason``; DALI's graph cannot, and refuses it."""

    reason = "label mismatch"


class SkipLog:
    """The samples a loader skipped on this rank: counted per reason, warned about once per reason; and the
    samples served a second time in one epoch to fill it (``repeated``), which an epoch that lost samples
    may need."""

    KEEP = 100  # where-strings kept for the report

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self.samples: list[str] = []
        self.repeated = 0

    def repeat(self, n: int = 1) -> None:
        """``n`` samples served again in this epoch (padding an epoch that lost samples)."""
        if not self.repeated and n:
            warnings.warn("an epoch lost samples and is filled with repeats of others; counted in "
                          "loader.skipped()['repeated']", stacklevel=3)  # fmt: skip
        self.repeated += n

    def add(self, reason: str, where: str, detail: str = "") -> None:
        if reason not in self.reasons:
            more = f" ({detail})" if detail else ""
            warnings.warn(f"skipping {where}: {reason}{more}; further samples skipped for this reason are "
                          "only counted (loader.skipped())", stacklevel=3)  # fmt: skip
        self.reasons[reason] += 1
        if len(self.samples) < self.KEEP:
            self.samples.append(where)

    def as_dict(self) -> dict:
        """{"count": int, "reasons": {reason: count}, "samples": [the first where-strings]}, and
        "repeated": int when an epoch was padded with repeats."""
        out = {
            "count": sum(self.reasons.values()),
            "reasons": dict(self.reasons),
            "samples": list(self.samples),
        }
        if self.repeated:
            out["repeated"] = self.repeated
        return out


def epoch_order(n_shards: int, seed: int, epoch: int, cycle: int = 0) -> list[int]:
    """The training shard order of ``epoch`` (and of the ``cycle``-th pass over the shards within it, for an
    endless stream): a permutation of these numbers alone, so every rank and worker agrees on it."""
    return [int(i) for i in np.random.default_rng([seed, epoch, cycle, 0x5A4D]).permutation(n_shards)]


def batch_seed(*parts: int) -> int:
    """A 31-bit seed from integers (seed, epoch, rank, batch): per-batch draws that a resume reproduces."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] >> 1)


def find_shards(source: str | Path, split: str = "train") -> ShardSet:
    """A convert output directory (uses ``manifest.json`` and ``split``) or a shard pattern."""
    if is_remote(source):
        return _find_remote(str(source), split)
    src = Path(source)
    if src.is_dir():
        mpath = src / MANIFEST
        manifest = load_manifest(src)
        if manifest is None:
            raise ShardsMissing(f"{src}: no {MANIFEST}; is this a `marvit convert` output directory?")
        splits = manifest["splits"]
        if split not in splits:
            raise SplitMissing(f"{mpath}: no split {split!r}; the manifest has {sorted(splits)}")
        entries = splits[split].get("shards", [])
        if not entries:
            raise InputError(f"{mpath}: split {split!r} has no shards")
        urls = [str(src / e["name"]) for e in entries]
        counts = [int(e["samples"]) for e in entries]
        classes = manifest["classes"]
    else:
        urls = sorted({p for pat in braceexpand.braceexpand(str(source)) for p in glob.glob(pat)})
        if not urls:
            raise ShardsMissing(f"shard pattern {str(source)!r} matches no file")
        counts = []
        classes = None
    for u in urls:
        if not Path(u).is_file():
            raise ShardsMissing(f"shard {u} listed in the manifest does not exist")
    idx = [str(index_path(u)) for u in urls]
    has_idx = all(Path(p).is_file() for p in idx)
    if not counts:
        if not has_idx:
            raise ShardsMissing(
                f"shard pattern {str(source)!r}: sample counts need the DALI .idx beside every shard "
                "(write them with `wds2idx SHARD.tar`) or a manifest.json directory"
            )
        counts = [len(read_index(p)) for p in idx]
    return ShardSet(urls=urls, counts=counts, index_paths=idx if has_idx else None, classes=classes)


def _split_entries(manifest: dict | None, where: str, split: str) -> list[dict]:
    if manifest is None:
        raise ShardsMissing(f"{where}: no {MANIFEST}; is this a `marvit convert` output directory?")
    if split not in manifest["splits"]:
        raise SplitMissing(
            f"{where}/{MANIFEST}: no split {split!r}; the manifest has {sorted(manifest['splits'])}"
        )
    entries = manifest["splits"][split].get("shards", [])
    if not entries:
        raise InputError(f"{where}/{MANIFEST}: split {split!r} has no shards")
    return entries


def _find_remote(root: str, split: str) -> ShardSet:
    """The split's shards under a URL root: URLs, counts and checksums from its manifest; no local index
    (the PyAV loader numbers samples by position; DALI reads the staged copies, see remote.py)."""
    try:
        manifest = load_manifest(root)
    except ValueError as e:
        raise ShardsMissing(str(e)) from None
    entries = _split_entries(manifest, redact(root), split)
    return ShardSet(urls=[file_url(root, e["name"]) for e in entries], counts=[int(e["samples"]) for e in entries],
                    index_paths=None, classes=manifest["classes"], remote=entries)  # fmt: skip


def local_shards(shards: ShardSet, cache_dir: str | None, rank: int = 0, world_size: int = 1) -> ShardSet:
    """``shards`` as local files for a reader of local files only (DALI): remote shards are staged into
    ``cache_dir`` (verified against the manifest, see remote.py); local ones are returned as they are."""
    if shards.remote is None:
        return shards
    if not cache_dir:
        raise InputError(
            f"data.root: shards at {redact(shards.urls[0])}... are remote and DALI reads local files only: "
            "set data.cache_dir to a local directory to stage the shards in (or use data.backend=pyav)"
        )
    paths, idx = stage_shards(shards.urls, shards.remote, cache_dir, rank, world_size)
    return ShardSet(urls=paths, counts=list(shards.counts), index_paths=idx, classes=shards.classes)


def parse_meta(json_bytes: bytes, cls_bytes: bytes, where: str) -> tuple[int, int]:
    """(frame count, class index) of one sample from its ``KEY.json`` and ``KEY.cls`` bytes."""
    try:
        label = int(bytes(cls_bytes).decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise InputError(
            f"{where}: .cls holds {bytes(cls_bytes)[:20]!r}; expected an ASCII decimal class index"
        ) from None
    try:
        meta = json.loads(bytes(json_bytes))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{where}: .json is not valid JSON ({e})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, int) or frames < 1:
        raise InputError(
            f"{where}: .json field 'frames' is {frames!r}; expected the video's frame count "
            "(a positive int), "
            "which `marvit convert` writes"
        )
    cls = meta.get("class")  # `marvit convert` writes the class index to both members
    if isinstance(cls, int) and cls != label:
        raise CorruptSample(f"{where}: .cls says class {label}, .json says {cls}: the sample is corrupt")
    return frames, label


def _tar_samples(path: Path) -> tuple[int, int]:
    """(samples, samples lacking an mp4/cls/json member) of a WebDataset tar, read with tarfile (keys end at
    the first dot)."""
    keys: dict[str, set[str]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile():
                key, _, ext = m.name.partition(".")
                keys.setdefault(key, set()).add(ext)
    return len(keys), sum(1 for exts in keys.values() if not exts >= {"mp4", "cls", "json"})


def check_shards(root: str | Path, split: str, checksums: bool = True) -> dict:
    """Check ``split`` of a ``marvit convert`` output directory against its manifest before training.

    Per shard: the file exists, its size is the manifest's ``bytes``, its sha256 the manifest's (skipped
    with ``checksums=False``: the fast mode reads only the tar headers), the sample count in the tar and in
    its DALI index equals the manifest's ``samples``. Raises :class:`InputError` naming the first shard that
    differs and how; returns ``{"split", "shards", "samples", "bytes", "checksums": bool,
    "incomplete": int}`` (``incomplete``: samples lacking an mp4/cls/json member, which the loaders skip).
    """
    if is_remote(root):
        try:
            manifest = load_manifest(str(root))
        except ValueError as e:
            raise InputError(str(e)) from None
        return check_remote_shards(
            str(root), split, _split_entries(manifest, redact(str(root)), split), checksums
        )
    root = Path(root)
    manifest = load_manifest(root)
    if manifest is None:
        raise InputError(f"{root}: no {MANIFEST}; is this a `marvit convert` output directory?")
    mpath = root / MANIFEST
    entries = manifest["splits"].get(split, {}).get("shards") if split in manifest["splits"] else None
    if not entries:
        raise InputError(
            f"{mpath}: no shards for split {split!r}; the manifest has {sorted(manifest['splits'])}"
        )
    total = size_total = incomplete = 0
    for e in entries:
        path = root / e["name"]
        if not path.is_file():
            raise InputError(f"shard {path} (listed in {mpath}) does not exist")
        size = path.stat().st_size
        if "bytes" in e and size != int(e["bytes"]):
            raise InputError(
                f"shard {path}: {size} bytes, the manifest says {e['bytes']}: truncated or replaced"
            )
        if checksums and e.get("sha256") and sha256_file(path) != e["sha256"]:
            raise InputError(
                f"shard {path}: sha256 differs from the manifest's: the file is corrupt or replaced"
            )
        try:
            n, lacking = _tar_samples(path)
        except (tarfile.TarError, OSError) as err:
            raise InputError(f"shard {path}: not a readable tar ({err})") from None
        if n != int(e["samples"]):
            raise InputError(f"shard {path}: {n} samples in the tar, the manifest says {e['samples']}")
        idx = index_path(path)
        if not idx.is_file():
            raise InputError(f"shard {path}: no DALI index {idx.name} beside it (write it with `wds2idx`)")
        try:
            n_idx = len(read_index(idx))
        except ValueError as err:
            raise InputError(str(err)) from None
        if n_idx != n:
            raise InputError(f"index {idx}: {n_idx} samples, its shard has {n}: rewrite it with `wds2idx`")
        incomplete += lacking
        total += n
        size_total += size
    return {"split": split, "shards": len(entries), "samples": total, "bytes": size_total,
            "checksums": checksums, "incomplete": incomplete}  # fmt: skip
