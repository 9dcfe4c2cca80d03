"""Frozen-backbone features of CIFAR-10 images, with a disk cache.

Extracting features at ImageNet resolution takes minutes of CPU time, training a head on them seconds, so
:func:`cached_features` keeps them as ``.npy`` files keyed by everything that changes them (backbone, weights
digest, input size, precision, the pixels' digest).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from cifarkit import distributed
from cifarkit.data.cache import default_cache_dir
from cifarkit.errors import CifarkitError
from cifarkit.files import atomic_write_bytes
from cifarkit.models.backbones import Backbone
from cifarkit.progress import progress_bar
from cifarkit.runtime import autocast

log = logging.getLogger(__name__)


def extract_features(
    backbone: Backbone, images_uint8: np.ndarray, *, batch_size: int = 64, progress: bool = True, bf16: bool = False
) -> np.ndarray:
    """Pooled features (N, feature_dim) as float16 of uint8 RGB images (N, H, W, 3).

    Runs an inference copy of the backbone (BatchNorm folded), channels-last, on the backbone's device. Pass the
    run's resolved ``bf16`` so that training, evaluation and serving read the same features.
    """
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        raise CifarkitError(f"expected uint8 RGB images (N, H, W, 3), got {images_uint8.dtype} {images_uint8.shape}")
    model = backbone.inference_copy().to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    out = np.empty((len(images_uint8), model.feature_dim), dtype=np.float16)
    bar = progress_bar(
        total=len(images_uint8), disable=not progress, unit="img", desc=f"features {model.name} @{model.input_size}px"
    )
    with torch.inference_mode(), autocast(device, bf16), bar:
        for start in range(0, len(images_uint8), batch_size):
            # NHWC uint8 permuted to NCHW *is* channels-last memory; .float() keeps that layout.
            batch = torch.from_numpy(images_uint8[start : start + batch_size]).to(device).permute(0, 3, 1, 2)
            x01 = batch.float().div_(255.0).contiguous(memory_format=torch.channels_last)
            out[start : start + len(batch)] = model.forward_features(x01).float().cpu().numpy()
            bar.update(len(batch))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def feature_cache_dir() -> Path:
    """Where features are cached: ``features/`` inside the data cache (``$CIFARKIT_CACHE``)."""
    return default_cache_dir() / "features"


def cache_path(cache_dir: str | Path, stem: str, parts: Sequence[str], images: np.ndarray) -> Path:
    """A cache file for what ``parts`` and the pixels of ``images`` determine: ``stem`` and a digest of both."""
    key = hashlib.sha256()
    for part in parts:
        key.update(part.encode() + b"\0")
    key.update(np.ascontiguousarray(images).data)
    return Path(cache_dir) / f"{_slug(stem)}-{key.hexdigest()[:16]}.npy"


def feature_cache_path(
    backbone: Backbone, images: np.ndarray, data_key: str, cache_dir: str | Path, bf16: bool = False
) -> Path:
    """Where :func:`cached_features` keeps the features of ``images`` under ``backbone``."""
    size, precision = str(backbone.input_size), "bf16" if bf16 else "fp32"
    parts = (backbone.name, backbone.weights_digest(), size, data_key, f"{images.dtype}{images.shape}", precision)
    stem = f"{backbone.name}-{backbone.input_size}px{'-bf16' if bf16 else ''}-{data_key}"
    return cache_path(cache_dir, stem, parts, images)


def cached_rows(
    path: Path, images: np.ndarray, compute: Callable[[np.ndarray], np.ndarray], row_shape: tuple[int, ...]
) -> np.ndarray:
    """``compute(images)`` (one row per image, float16 or float32), read from ``path`` if cached there.

    A miss computes and writes the file atomically. Under torchrun the processes compute a share each, unless
    every one finds the cache; the first process of each machine writes it (machines need not share a disk).
    """
    rows = _read_cache(path, (len(images), *row_shape))
    if distributed.all_true(rows is not None):
        return rows
    rows = distributed.gather_rows(compute(images[distributed.shard(len(images))]), len(images))
    if distributed.local_rank() == 0:
        buf = io.BytesIO()
        np.save(buf, rows)
        atomic_write_bytes(path, buf.getvalue())
        log.info("cache written: %s", path)
    return rows


def cached_features(
    backbone: Backbone,
    images: np.ndarray,
    data_key: str,
    cache_dir: str | Path | None = None,
    *,
    batch_size: int = 64,
    progress: bool = True,
    bf16: bool = False,
) -> np.ndarray:
    """Features of ``images`` from ``backbone`` at its input size, from disk if cached (see :func:`cached_rows`).

    ``data_key`` names the images for people (e.g. ``"cifar10-train"``);
    ``cache_dir`` defaults to :func:`feature_cache_dir`.
    """
    path = feature_cache_path(backbone, images, data_key, cache_dir or feature_cache_dir(), bf16)

    def extract(part: np.ndarray) -> np.ndarray:
        return extract_features(
            backbone, part, batch_size=batch_size, bf16=bf16, progress=progress and distributed.is_main()
        )

    return cached_rows(path, images, extract, (backbone.feature_dim,))


def _read_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached rows at ``path`` if they are there with the expected shape, else None."""
    if not path.exists():
        return None
    rows = np.load(path)
    if rows.shape == shape and rows.dtype in (np.float16, np.float32):
        log.info("cache hit: %s", path)
        return rows
    log.warning("cache %s has shape %s %s; recomputing", path, rows.shape, rows.dtype)
    return None
