"""``load_cifar10``: find CIFAR-10 (argument, environment, cache, download) and load it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cifarkit.data.cache import CACHE_ENV, cache_folder, default_cache_dir, fingerprint, load_cached, save_cached
from cifarkit.data.dataset import CIFAR10
from cifarkit.data.download import DEFAULT_URL, download_file
from cifarkit.data.sources import LAYOUTS, PYTHON_ARCHIVE, PYTHON_MD5, detect_source, read_source
from cifarkit.errors import DataError

DATA_ENV = "CIFARKIT_DATA"


def load_cifar10(
    path: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    url: str = DEFAULT_URL,
    md5: str | None = None,
) -> CIFAR10:
    """Load CIFAR-10 from wherever it is, decoding it only the first time.

    Looked for at ``path`` (any layout of :mod:`cifarkit.data.sources`), ``$CIFARKIT_DATA``, then as
    ``cifar-10-python.tar.gz`` in the cache folder (``cache_dir``, ``$CIFARKIT_CACHE``, ``~/.cache/cifarkit``),
    downloaded there from ``url`` if ``download``. ``md5`` None means an official checksum. Problems are a
    :class:`DataError` saying where to put the data.
    """
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    source = detect_source(_locate(path, cache_root, download, url, md5))
    cached_at = cache_folder(cache_root, source)
    source_fingerprint = fingerprint(source)
    data = load_cached(cached_at, source_fingerprint, str(source.path))
    if data is None:
        data = read_source(source, md5)
        save_cached(cached_at, data, source_fingerprint)
    return data


def _locate(path: str | os.PathLike[str] | None, cache_root: Path, download: bool, url: str, md5: str | None) -> Path:
    """The path to load: the argument, $CIFARKIT_DATA, or the cached archive (downloaded if need be)."""
    if path is not None:
        return Path(path)
    configured = os.environ.get(DATA_ENV)
    if configured:
        if not Path(configured).expanduser().exists():
            raise DataError(
                f"{DATA_ENV}={configured} does not exist: set it to CIFAR-10 data ({LAYOUTS}), "
                f"or unset it to use the cache folder {cache_root}."
            )
        return Path(configured)
    archive = cache_root / PYTHON_ARCHIVE
    if archive.is_file():
        return archive
    if not download:
        raise DataError(f"CIFAR-10 not found, and downloading is off. {_where_to_put(archive)}")
    _check_cache_root(cache_root)
    try:
        return download_file(url, archive, md5 or PYTHON_MD5)
    except DataError as exc:  # its message ends "... save it as ARCHIVE."; one line in all
        raise DataError(
            f"{exc} Or set {DATA_ENV}=/path/to/cifar10 or pass --data PATH, where PATH is {LAYOUTS}."
        ) from exc


def _check_cache_root(cache_root: Path) -> None:
    """Refuse, before downloading, a cache folder that cannot be made or written (nothing is created)."""
    for folder in (cache_root, *cache_root.parents):
        if not (folder.exists() or folder.is_symlink()):
            continue
        if not folder.is_dir():
            problem = f"{folder} is a file, not a folder"
        else:
            try:
                with tempfile.TemporaryFile(dir=folder):
                    return
            except OSError as exc:
                problem = f"{folder} is not writable ({exc.strerror})"
        raise DataError(
            f"cannot download CIFAR-10 into the cache folder {cache_root}: {problem}. Pass --cache-dir (or set "
            f"{CACHE_ENV} to) a writable folder, or pass --data PATH, where PATH is {LAYOUTS}."
        )


def _where_to_put(archive: Path) -> str:
    """How to give cifarkit the data by hand."""
    return (
        f"Set {DATA_ENV}=/path/to/cifar10 or pass --data PATH, where PATH is {LAYOUTS}; "
        f"or save {PYTHON_ARCHIVE} as {archive}."
    )
