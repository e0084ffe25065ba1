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
so :func:`marvit.pipeline.remote_cache.stage_shards` copies a split's shards into ``data.cache_dir`` before the loader's first pass:
each download goes to a temporary name unique to the process, its sha256 and size are checked against the
manifest while it streams, the DALI index is written from the verified bytes, and only then are both
renamed into place under the shard's sha256 (``CACHE/<sha256>.tar``/``.idx``). A file under its final name
is therefore always verified; a shard whose bytes differ from the manifest is refused by name. The ranks of
a node share the cache: a file lock per shard makes one of them download it while the others wait, and
each rank starts at a different shard so they download in parallel.
"""

from __future__ import annotations

import re
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
