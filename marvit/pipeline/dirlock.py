"""Who writes where in a ``marvit convert`` output directory: one lock file per writer, as ``train`` does.

A conversion of split S as part I of N takes ``OUT/.S.convert-IofN.lock`` (N=1: a plain conversion). The
lock is created whole: its content (pid, host, start time, part) is written to a temporary file that is
then hard-linked to the lock's name, which fails when the name exists, on a local disk and on NFS alike;
so a lock is never seen empty or half written. A second writer of the same part is refused (InputError:
one line, exit 2). Parts of one split may run at once (that is their point), but not with a different N:
their shards would overlap. A lock whose process is gone (same host, pid not running) or that cannot be
read is taken over; another host's lock is never taken over (its process cannot be checked from here).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from marvit.errors import InputError


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(lock: Path) -> dict | None:
    """The holder a lock file names (``{"pid", "host", ...}``), or None where it cannot be read."""
    try:
        h = json.loads(lock.read_text())
        return h if isinstance(h, dict) and isinstance(h.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def holder_gone(holder: dict) -> bool:
    """A holder whose process has ended: only a process of this host can be checked, so another host's lock
    is never taken over."""
    return holder.get("host") == socket.gethostname() and not pid_alive(holder["pid"])


def link_whole(lock: Path, data: bytes) -> None:
    """Create ``lock`` holding ``data``, complete or not at all: written to a temporary unique to the process,
    then hard-linked into place (``link`` fails with FileExistsError when the lock exists, as ``O_EXCL``
    does, on a local disk and on NFS). Where the file system has no hard links: exclusive create, then write.
    Another OSError names the lock; nothing is left behind."""
    tmp = lock.with_name(f".{lock.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, lock)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    except FileExistsError:
        raise
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(lock)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _stale(holder: dict | None) -> bool:
    return holder is None or holder_gone(holder)  # unreadable: no complete writer (locks are linked whole)


def _who(holder: dict | None, lock: Path) -> str:
    return f"pid {holder['pid']} on {holder['host']}, {lock}" if holder else str(lock)


class ConvertLock:
    """The lock of one writer (split, part I of N) in a conversion's output directory."""

    def __init__(self, out: Path, split: str, part: int, parts: int) -> None:
        self.out, self.split, self.part, self.parts = Path(out), split, part, parts
        self.path = self.out / f".{split}.convert-{part}of{parts}.lock"
        self._held = False

    def acquire(self) -> None:
        """Take the lock or raise InputError naming the directory and the holder."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "split": self.split, "part": [self.part, self.parts]}  # fmt: skip
        for _ in range(3):
            try:
                link_whole(self.path, json.dumps(me).encode())
                break
            except FileExistsError:
                holder = read_holder(self.path)
                if not _stale(holder):
                    what = "part" if self.parts > 1 else "conversion"
                    raise InputError(
                        f"output {self.out}: another {what} of split {self.split!r} is writing there "
                        f"({_who(holder, self.path)}); wait for it to end, or remove the lock only if "
                        "you are sure no conversion uses it"
                    ) from None
                self.path.unlink(missing_ok=True)  # a dead process's lock (this host) or an unreadable one
        else:
            raise InputError(f"{self.path}: could not take the lock; another conversion may be starting")
        self._held = True
        self._refuse_other_splitting()

    def _refuse_other_splitting(self) -> None:
        """Parts with another N write overlapping shards: refuse while a live one holds a lock."""
        pat = re.compile(rf"^\.{re.escape(self.split)}\.convert-(\d+)of(\d+)\.lock$")
        for p in self.out.iterdir():
            m = pat.match(p.name)
            if m and int(m.group(2)) != self.parts:
                holder = read_holder(p)
                if holder is not None and not _stale(holder):
                    self.release()
                    raise InputError(
                        f"output {self.out}: split {self.split!r} is being converted in {m.group(2)} parts "
                        f"({_who(holder, p)}); this run asks for {self.parts}: use the same --part N/"
                        f"{m.group(2)}, or wait for those parts to end"
                    )

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> ConvertLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def manifest_lock(out: Path) -> Iterator[None]:
    """Serialises the read-modify-write of ``manifest.json`` by conversions of different splits (and a
    merge) in one directory; released by the kernel if the process dies."""
    with open(Path(out) / ".manifest.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
