"""Remote shards beyond streaming: the shard check on a URL root and the local cache DALI reads from.

See :mod:`marvit.pipeline.remote` for the URL forms and how credentials are read. This module sits above
``remote`` (URL I/O), ``manifest`` and ``writer`` (the DALI index of a verified download), so none of them
imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from marvit.errors import InputError
from marvit.pipeline.manifest import index_path, parse_index
from marvit.pipeline.remote import CHUNK, file_url, open_shard, read_url, redact
from marvit.pipeline.writer import write_index

# --------------------------------------------------------------------------------------------------------
# the shard check on a remote root
# --------------------------------------------------------------------------------------------------------


def _remote_size(url: str) -> int | None:
    """Content-Length of an http(s) URL from a HEAD request; None where the storage does not say."""
    if not url.lower().startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as r:
            n = r.headers.get("Content-Length")
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):  # the shard is not there: the check's finding, named by the caller
            raise OSError(f"{redact(url)}: HTTP {e.code} {e.reason}") from None
        return None  # e.g. 401/403: curl may hold credentials (~/.netrc) that urllib does not read
    except Exception as e:  # noqa: BLE001 - no connection: the check's finding
        raise OSError(f"{redact(url)}: {getattr(e, 'reason', e)}") from None
    return int(n) if n is not None and n.isdigit() else None


def _stream_facts(url: str) -> tuple[int, str, int]:
    """(bytes, sha256, samples in the tar) of a remote shard, read once as a stream."""
    h, n = hashlib.sha256(), 0
    keys: set[str] = set()

    class _Hashing:
        def __init__(self, f: IO[bytes]) -> None:
            self.f = f

        def read(self, k: int = -1) -> bytes:
            nonlocal n
            b = self.f.read(k)
            h.update(b)
            n += len(b)
            return b

    with open_shard(url) as f:
        hf = _Hashing(f)
        with tarfile.open(fileobj=hf, mode="r|") as tar:  # type: ignore[call-overload]
            for m in tar:
                if m.isfile():
                    keys.add(m.name.partition(".")[0])
        while hf.read(CHUNK):  # the tar's end padding counts for the checksum
            pass
    return n, h.hexdigest(), len(keys)


def check_remote_shards(root: str, split: str, entries: list[dict], checksums: bool) -> dict:
    """:func:`marvit.pipeline.shards.check_shards` for a URL root. Fast mode: each shard's DALI index holds
    the manifest's sample count and (http/https) its size is the manifest's, from the index and a HEAD
    request only. ``checksums``: every shard is streamed once and its size, sha256 and tar sample count
    compared with the manifest."""
    total = size_total = 0
    for e in entries:
        url = file_url(root, e["name"])
        where = f"shard {e['name']} at {redact(url)}"
        try:
            if checksums:
                size, sha, n = _stream_facts(url)
                if size == int(e.get("bytes", size)) and e.get("sha256") and sha != e["sha256"]:
                    raise InputError(
                        f"{where}: sha256 differs from the manifest's: the file is corrupt or replaced"
                    )
            else:
                size = _remote_size(url)
                idx_url = file_url(root, index_path(e["name"]).name)
                n = len(parse_index(read_url(idx_url).decode("utf-8", "replace"), redact(idx_url)))
        except (OSError, tarfile.TarError, ValueError) as err:
            raise InputError(f"{where}: cannot be read ({err})") from None
        if size is not None and "bytes" in e and size != int(e["bytes"]):
            raise InputError(f"{where}: {size} bytes, the manifest says {e['bytes']}: truncated or replaced")
        if n != int(e["samples"]):
            raise InputError(f"{where}: {n} samples, the manifest says {e['samples']}")
        total += n
        size_total += int(e.get("bytes", 0))
    return {"split": split, "shards": len(entries), "samples": total, "bytes": size_total,
            "checksums": checksums, "incomplete": 0}  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# staging for DALI
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed) held by this process for the block: the ranks of a
    node (one local disk) take turns on a shard. Released by the kernel if the process dies."""
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def stage_shard(url: str, name: str, sha256: str, nbytes: int | None, cache_dir: Path) -> tuple[Path, Path]:
    """The local (shard, index) of one remote shard, downloaded and verified if not cached yet."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
        raise InputError(f"shard {name}: the manifest has no sha256 for it; a cache needs one to verify")
    final, idx = cache_dir / f"{sha256}.tar", cache_dir / f"{sha256}.idx"
    if final.is_file():  # only verified bytes ever get this name (the index is renamed in before it)
        return final, idx
    with _file_lock(cache_dir / f".{sha256}.lock"):
        if final.is_file():  # another rank of this node fetched it while we waited
            return final, idx
        tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp, idx_tmp = cache_dir / f".{sha256}.{tag}.tar.tmp", cache_dir / f".{sha256}.{tag}.idx.tmp"
        h, n = hashlib.sha256(), 0
        try:
            try:
                with open_shard(url) as src, open(tmp, "wb") as dst:
                    while block := src.read(CHUNK):
                        h.update(block)
                        n += len(block)
                        dst.write(block)
                    dst.flush()
                    os.fsync(dst.fileno())
            except OSError as e:
                raise InputError(f"shard {name} at {redact(url)}: cannot be read ({e})") from None
            if (nbytes is not None and n != nbytes) or h.hexdigest() != sha256:
                raise InputError(
                    f"shard {name} at {redact(url)}: its {n} bytes (sha256 {h.hexdigest()[:12]}...) are not "
                    f"the manifest's ({nbytes} bytes, sha256 {sha256[:12]}...): corrupt or replaced; refused"
                )
            write_index(tmp, idx_tmp)
            os.replace(idx_tmp, idx)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
            idx_tmp.unlink(missing_ok=True)
    return final, idx


def stage_shards(urls: list[str], entries: list[dict], cache_dir: str | Path, rank: int = 0,
                 world_size: int = 1) -> tuple[list[str], list[str]]:  # fmt: skip
    """Local (shard paths, index paths) of the shards at ``urls`` (``entries``: their manifest rows), in order.

    DALI's reader hands each rank a range of samples of the epoch's shard order, which changes with the
    epoch, so every rank needs the whole split on its node's disk; rank r starts at its own offset so the
    ranks of a node download different shards at once and wait on each other only where they meet."""
    cache = Path(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"data.cache_dir={str(cache)!r}: cannot create it ({e.strerror or e})") from None
    n = len(entries)
    first = (rank * n) // max(1, world_size)
    staged: dict[int, tuple[Path, Path]] = {}
    for k in range(n):
        i = (first + k) % n
        e = entries[i]
        nbytes = int(e["bytes"]) if "bytes" in e else None
        staged[i] = stage_shard(urls[i], e["name"], e.get("sha256", ""), nbytes, cache)
    return [str(staged[i][0]) for i in range(n)], [str(staged[i][1]) for i in range(n)]
