"""Files a run writes, so that a full disk, a missing permission or a read-only file system ends the command
with one line naming the path and the errno (``marvit.cli`` prints an :class:`OSError` of
:data:`ENVIRONMENT_ERRNOS` so, exit status 2) and leaves no file a later run trusts.

Every write goes through :func:`write_file`: bytes are written to a temporary name in the same directory,
flushed and fsynced, then renamed into place; on failure the temporary is removed and the error names the
final path (a bare ``f.write`` raises ``ENOSPC`` without a file name). Some writers hide the errno
(safetensors' ``save_file`` raises its own error type; ``torch.save`` to a path raises "unexpected pos"), so
checkpoints are serialized to bytes or to a Python file object and written here.

Test hook: ``MARVIT_FAULT_WRITE=NAME:ERRNO`` (e.g. ``state.pt:ENOSPC``) makes every write of a path with a
component NAME fail with that errno, as a full disk or a read-only mount would.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# errors of the machine, not of marvit: one line, exit 2, no traceback
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                      errno.EFBIG}  # fmt: skip


def describe(e: OSError) -> str:
    """``PATH: No space left on device (errno 28, ENOSPC)``."""
    code = errno.errorcode.get(e.errno or 0, "?")
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or os.strerror(e.errno or 0)} (errno {e.errno}, {code})"


def fault(path: str | Path) -> None:
    """The test hook (see the module docstring)."""
    spec = os.environ.get("MARVIT_FAULT_WRITE")
    if not spec:
        return
    part, _, name = spec.rpartition(":")
    if part and part in Path(path).parts:
        code = getattr(errno, name)
        raise OSError(code, os.strerror(code), str(path))


def write_stream(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync, rename it into place; on an OSError
    the temporary is removed and the error names ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fault(path)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror or os.strerror(e.errno or 0), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file(path: str | Path, data: bytes) -> None:
    """``data`` into ``path`` atomically (see :func:`write_stream`)."""
    write_stream(path, lambda f: f.write(data))


def write_json(path: str | Path, obj: Any, indent: int = 1) -> None:
    write_file(path, (json.dumps(obj, indent=indent) + "\n").encode())


def append_line(f: IO[str], path: str | Path, line: str) -> None:
    """One line onto an open log (``metrics.jsonl``); an OSError names the file. A half-written line is
    dropped by the next resume (:meth:`marvit.train.setup.RunDir.truncate_metrics`)."""
    try:
        fault(path)
        f.write(line)
        f.flush()
    except OSError as e:
        raise OSError(e.errno, e.strerror or os.strerror(e.errno or 0), str(path)) from None
