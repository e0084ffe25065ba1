"""Shards that live on object storage or a web server: streamed for PyAV, staged to local disk for DALI.

``data.root`` may be a URL instead of a directory:

- ``https://host/path`` / ``http://`` (read with ``curl``, as webdataset's ``gopen`` does),
- ``s3://bucket/prefix`` (``aws s3 cp URL -``), ``gs://bucket/prefix`` (``gsutil cat``, through ``gopen``),
- ``pipe:COMMAND`` with ``{name}`` where the file name goes (``pipe:rclone cat remote:data/{name}``).

A file of the data set (``manifest.json``, ``train-000000.tar``, its ``.idx``) is ``root/NAME`` (or the
command with ``{name}`` replaced). Each storage tool reads its credentials from the environment as it
always does (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``~/.netrc``): marvit never sees them, and a URL
printed in a message has its user info and query string (presigned signatures) removed by :func:`redact`.

The PyAV loader reads a shard as a stream (:func:`open_shard`): no local copy. DALI reads only local files,
so :func:`stage_shards` copies a split's shards into ``data.cache_dir`` before the loader's first pass:
each download goes to a temporary name unique to the process, its sha256 and size are checked against the
manifest while it streams, the DALI index is written from the verified bytes, and only then are both
renamed into place under the shard's sha256 (``CACHE/<sha256>.tar``/``.idx``). A file under its final name
is therefore always verified; a shard whose bytes differ from the manifest is refused by name. The ranks of
a node share the cache: a file lock per shard makes one of them download it while the others wait, and
each rank starts at a different shard so they download in parallel.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from marvit.errors import InputError

REMOTE_RE = re.compile(r"^(?:(?:s3|gs|https?)://|pipe:)", re.IGNORECASE)
CHUNK = 1 << 20


def is_remote(root: str | Path | None) -> bool:
    """True for a URL or ``pipe:`` command (a ``Path`` is always local)."""
    return isinstance(root, str) and bool(REMOTE_RE.match(root))


def redact(url: str) -> str:
    """``url`` without user info and query string (where credentials and signatures travel); a ``pipe:``
    command is shown by its program name only."""
    if url.lower().startswith("pipe:"):
        words = url[5:].split()
        return f"pipe:{words[0] if words else ''} ..."
    url = re.sub(r"^([a-zA-Z0-9+.-]+://)[^/@]*@", r"\1", url)
    return url.split("?", 1)[0].split("#", 1)[0]


def file_url(root: str, name: str) -> str:
    """The URL of ``name`` (a file of the data set) under ``root``."""
    if root.lower().startswith("pipe:"):
        if "{name}" not in root:
            raise InputError(
                f"data.root={redact(root)!r}: a pipe: root needs {{name}} where the file name goes, "
                "e.g. 'pipe:rclone cat remote:kinetics/{name}'"
            )
        return root.replace("{name}", name)
    base, q, query = root.partition("?")  # a query string (signature) stays at the end
    return f"{base.rstrip('/')}/{name}" + (q + query if q else "")


class _Stream:
    """A remote byte stream whose errors name the redacted URL, never the one that carries credentials."""

    def __init__(self, url: str, inner: IO[bytes]) -> None:
        self.url, self.inner = url, inner

    def _err(self, e: Exception) -> OSError:
        return OSError(f"{redact(self.url)}: {str(e).replace(self.url, redact(self.url))}")

    def read(self, *args: int) -> bytes:
        try:
            return self.inner.read(*args)
        except Exception as e:  # noqa: BLE001 - a failing tool or connection: re-raised, redacted
            raise self._err(e) from None

    def close(self) -> None:
        try:
            self.inner.close()
        except Exception as e:  # noqa: BLE001 - the tool's exit status is checked on close
            raise self._err(e) from None

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_shard(url: str) -> IO[bytes]:
    """A binary stream of a local file or of a URL / ``pipe:`` command (what both loaders open shards by)."""
    if not is_remote(url):
        return open(url, "rb")  # noqa: SIM115 - the caller closes it
    from webdataset.gopen import Pipe, gopen

    try:
        if url.lower().startswith("s3://"):  # webdataset has no s3 handler; the AWS CLI reads AWS_* itself
            inner = Pipe(["aws", "s3", "cp", "--quiet", url, "-"], mode="rb", bufsize=CHUNK)
        else:
            inner = gopen(url, "rb", bufsize=CHUNK)
    except Exception as e:  # noqa: BLE001 - e.g. the tool is not installed
        raise OSError(f"{redact(url)}: cannot open ({str(e).replace(url, redact(url))})") from None
    return _Stream(url, inner)  # type: ignore[return-value]


def read_url(url: str) -> bytes:
    """The whole file at ``url`` (small files: the manifest, an index)."""
    with open_shard(url) as f:
        data = f.read()
    return data


def shard_samples(url: str, handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """The samples of one shard (local or remote) as webdataset's ``tarfile_to_samples`` yields them, with
    the shard opened by :func:`open_shard`; an error opening it goes to ``handler`` as webdataset's would."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    try:
        stream = open_shard(url)
    except Exception as e:  # noqa: BLE001 - the handler decides (warn_and_continue: a counted skip)
        if handler(e):
            return iter(())
        raise
    return group_by_keys(tar_file_expander(iter([{"url": url, "stream": stream}]), handler=handler),
                         handler=handler)  # fmt: skip


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
    from marvit.pipeline.manifest import index_path, parse_index

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
    from marvit.pipeline.writer import write_index

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
