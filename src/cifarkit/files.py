"""Files: atomic writes, the one JSON reader, checks that a path can be written, and folder locks.

Every writer goes through :func:`atomic_write_bytes` (a temporary file beside the target, flushed, then
``os.replace``), so a reader or a crash sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from cifarkit.errors import CifarkitError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide outputs from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON; NaN or infinity anywhere in it is a bug (JSON has none), so it raises ValueError."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path, kind: type = object, fix: str = "restore it from a copy") -> Any:
    """The one reader of every JSON file cifarkit writes: a value of type ``kind``, or a one-line error with ``fix``."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CifarkitError(f"{path} is missing; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CifarkitError(f"{path} is not valid JSON ({exc}); {fix}") from None
    except OSError as exc:
        raise CifarkitError(f"{path} cannot be read ({exc.strerror}); {fix}") from None
    if not isinstance(value, kind):
        raise CifarkitError(f"{path} holds a JSON {type(value).__name__}, not a {kind.__name__}; {fix}")
    return value


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Same-keyed dicts as CSV, the header taken from the first row."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return write_text(path, buf.getvalue())


def check_writable(path: str | Path, flag: str) -> Path:
    """Refuse, before any work, a ``path`` that cannot be created or written: under a file, or in a read-only place.

    Nothing is created: the nearest existing folder is probed with a temporary file (``os.access`` says yes to
    root on a read-only file system).
    """
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CifarkitError(f"{flag} {path}: {folder} is a file, not a folder; choose a path in a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CifarkitError(
            f"{flag} {path}: cannot write in {folder} ({exc.strerror}); choose a writable place"
        ) from None
    return path


LOCK_FILE = ".cifarkit.lock"


@contextmanager
def exclusive(folder: str | Path, busy: str) -> Iterator[Path]:
    """Hold an OS lock on ``folder`` (created if missing) while writing it; another holder raises ``busy`` at once.

    filelock's OS lock on ``folder/.cifarkit.lock`` is released whenever the process ends, even by ``kill -9``, so
    a killed command never leaves a stale lock; one lock object per folder lets a process re-enter its own lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder.resolve() / LOCK_FILE, thread_local=False, is_singleton=True)
    try:
        held = lock.acquire(blocking=False)
    except Timeout:
        raise CifarkitError(busy) from None
    with held:
        yield folder
