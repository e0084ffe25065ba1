"""Finding a split's shards and reading a sample's metadata: shared by both loaders and the benchmark.

A shard set comes from a ``marvit convert`` output directory (``manifest.json`` names the split's shards,
their sample counts and the classes) or from a shard glob / brace pattern (counts then come from the DALI
``.idx`` files beside the shards). Every sample gets a global id, its position in the split (shards in
order, samples in order within a shard), which both loaders report as ``video_id`` so the views of one
video can be averaged across ranks.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand

from marvit.pipeline.manifest import MANIFEST, index_path, load_manifest, read_index


@dataclass
class ShardSet:
    """One split's shards in order: ``counts[i]`` samples in ``urls[i]``; ``index_paths`` may be None."""

    urls: list[str]
    counts: list[int]
    index_paths: list[str] | None
    classes: list[str] | None = None
    starts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.starts = [sum(self.counts[:i]) for i in range(len(self.counts))]

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def key_ids(self) -> dict[tuple[str, str], int]:
        """(shard path, sample key) -> global id, read from the DALI index files."""
        if self.index_paths is None:
            raise FileNotFoundError(
                f"shards {self.urls[0]}...: no DALI .idx files beside them; "
                "write them with `wds2idx SHARD.tar`"
            )
        ids: dict[tuple[str, str], int] = {}
        for url, idx, start in zip(self.urls, self.index_paths, self.starts):
            for pos, members in enumerate(read_index(idx)):
                name = members[0][3] if members else None
                ids[(url, name.rsplit(".", 1)[0] if name else "")] = start + pos
        return ids


def find_shards(source: str | Path, split: str = "train") -> ShardSet:
    """A convert output directory (uses ``manifest.json`` and ``split``) or a shard pattern."""
    src = Path(source)
    if src.is_dir():
        mpath = src / MANIFEST
        manifest = load_manifest(src)
        if manifest is None:
            raise FileNotFoundError(f"{src}: no {MANIFEST}; is this a `marvit convert` output directory?")
        splits = manifest["splits"]
        if split not in splits:
            raise KeyError(f"{mpath}: no split {split!r}; the manifest has {sorted(splits)}")
        entries = splits[split].get("shards", [])
        if not entries:
            raise ValueError(f"{mpath}: split {split!r} has no shards")
        urls = [str(src / e["name"]) for e in entries]
        counts = [int(e["samples"]) for e in entries]
        classes = manifest["classes"]
    else:
        urls = sorted({p for pat in braceexpand.braceexpand(str(source)) for p in glob.glob(pat)})
        if not urls:
            raise FileNotFoundError(f"shard pattern {str(source)!r} matches no file")
        counts = []
        classes = None
    for u in urls:
        if not Path(u).is_file():
            raise FileNotFoundError(f"shard {u} listed in the manifest does not exist")
    idx = [str(index_path(u)) for u in urls]
    has_idx = all(Path(p).is_file() for p in idx)
    if not counts:
        if not has_idx:
            raise FileNotFoundError(
                f"shard pattern {str(source)!r}: sample counts need the DALI .idx beside every shard "
                "(write them with `wds2idx SHARD.tar`) or a manifest.json directory"
            )
        counts = [len(read_index(p)) for p in idx]
    return ShardSet(urls=urls, counts=counts, index_paths=idx if has_idx else None, classes=classes)


def parse_meta(json_bytes: bytes, cls_bytes: bytes, where: str) -> tuple[int, int]:
    """(frame count, class index) of one sample from its ``KEY.json`` and ``KEY.cls`` bytes."""
    try:
        label = int(bytes(cls_bytes).decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(
            f"{where}: .cls holds {bytes(cls_bytes)[:20]!r}; expected an ASCII decimal class index"
        ) from None
    try:
        meta = json.loads(bytes(json_bytes))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: .json is not valid JSON ({e})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(
            f"{where}: .json field 'frames' is {frames!r}; expected the video's frame count "
            "(a positive int), "
            "which `marvit convert` writes"
        )
    return frames, label
