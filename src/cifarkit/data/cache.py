"""Cache decoded CIFAR-10 as uncompressed .npy files, so later loads skip decoding.

Each source gets a folder named after its path and kind, its files named after a *fingerprint* of the source's
contents: a listing (name, size, mtime_ns) of every file, plus an archive's inode number and ctime_ns, which no
one can set back, so an archive replaced with its mtime restored misses the cache and has its MD5 checked again.
Files that are missing, corrupt or malformed are ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np

from cifarkit.data.dataset import CIFAR10, CLASSES
from cifarkit.data.sources import IMAGE_SIZE, Source
from cifarkit.files import atomic_write_bytes

CACHE_ENV = "CIFARKIT_CACHE"
DECODED_SUBDIR = "decoded"
FINGERPRINT_CHARS = 20  # hex digits of the fingerprint in file names: 80 bits
_IMAGES = ("x_train", "x_test")
_LABELS = ("y_train", "y_test")


def default_cache_dir() -> Path:
    """``$CIFARKIT_CACHE`` if set, else ``~/.cache/cifarkit``: downloads and decoded arrays."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "cifarkit"


def cache_folder(cache_dir: Path, source: Source) -> Path:
    """The folder for the decoded arrays of ``source``, named by its kind and path."""
    key = hashlib.sha256(f"{source.kind}\0{source.path}".encode()).hexdigest()[:24]
    return cache_dir / DECODED_SUBDIR / f"{source.kind}-{key}"


def fingerprint(source: Source) -> str:
    """A hash of the name, size and mtime_ns of every file ``source`` is read from (and an archive's inode)."""
    digest = hashlib.sha256(source.kind.encode())
    for root in source.inputs:
        digest.update(f"{root.name}\n".encode())
        digest.update("\n".join(_listing(root)).encode())
    return digest.hexdigest()


def _listing(root: Path) -> list[str]:
    """Sorted lines of NUL-separated name (relative), size, mtime_ns: ``root``'s, or each file's under it.

    A file ``root`` also gives its inode number and ctime_ns; a missing one an empty listing.
    """
    try:
        if not root.is_dir():
            stat = root.stat()
            return [f"\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\0{stat.st_ctime_ns}"]
    except FileNotFoundError:
        return []
    lines = []
    pending = [("", str(root))]
    while pending:
        prefix, folder = pending.pop()
        with os.scandir(folder) as scan:
            for entry in scan:
                if entry.is_dir():
                    pending.append((f"{prefix}{entry.name}/", entry.path))
                else:
                    stat = entry.stat()
                    lines.append(f"{prefix}{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}")
    lines.sort()
    return lines


def _array_file(folder: Path, source_fingerprint: str, name: str) -> Path:
    """The .npy file of array ``name`` decoded from the source with this fingerprint."""
    return folder / f"{source_fingerprint[:FINGERPRINT_CHARS]}-{name}.npy"


def load_cached(folder: Path, source_fingerprint: str, source_label: str) -> CIFAR10 | None:
    """The data set cached in ``folder`` for this fingerprint, or None if absent, corrupt or malformed."""
    try:
        arrays = {
            name: np.load(_array_file(folder, source_fingerprint, name), allow_pickle=False)
            for name in (*_IMAGES, *_LABELS)
        }
    except Exception:  # whatever is wrong with a cache file, decoding the source again fixes it
        return None
    if not _well_formed(arrays):
        return None
    return CIFAR10(**arrays, source=source_label)


def _well_formed(arrays: dict[str, np.ndarray]) -> bool:
    """Whether cached arrays have the dtypes and shapes of a CIFAR-10 data set."""
    for images, labels in zip(_IMAGES, _LABELS):
        x, y = arrays[images], arrays[labels]
        if x.dtype != np.uint8 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            return False
        if y.dtype != np.int64 or y.shape != (len(x),):
            return False
        if len(y) and not (y.min() >= 0 and y.max() < len(CLASSES)):
            return False
    return True


def save_cached(folder: Path, data: CIFAR10, source_fingerprint: str) -> None:
    """Write the arrays of ``data`` to ``folder``, then delete stale .npy files; an unwritable cache only warns."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        current = [_array_file(folder, source_fingerprint, name) for name in (*_IMAGES, *_LABELS)]
        for path, name in zip(current, (*_IMAGES, *_LABELS)):
            _save_atomically(path, getattr(data, name))
        for stale in set(folder.glob("*.npy")) - set(current):
            stale.unlink(missing_ok=True)
    except OSError as exc:
        warnings.warn(
            f"could not write the CIFAR-10 cache in {folder} ({exc}), so the next load decodes the "
            f"data again. Pass --cache-dir (or set {CACHE_ENV} to) a writable folder to fix this.",
            stacklevel=2,
        )


def _save_atomically(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``path`` atomically: readers never see half a file."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
