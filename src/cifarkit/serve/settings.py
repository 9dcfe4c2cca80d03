"""A server's limits and batching, as plain data: the CLI reads the defaults without importing FastAPI."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from cifarkit.data.images import MAX_PIXELS
from cifarkit.errors import CifarkitError

MIN_UPLOAD_MB = 0.01
"""Smallest --max-upload-mb: about 10 kB, a small PNG with its form; a smaller limit would refuse every image."""
PILLOW_MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
"""Pillow refuses to decode an image declaring more pixels than this (its decompression bomb error)."""


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of a server; the defaults suit a small CPU machine."""

    max_upload_mb: float = 8.0
    """Largest request body (all files and form overhead together)."""
    max_files: int = 32
    """Most images in one request."""
    max_pixels: int = MAX_PIXELS
    """Largest declared width x height of an image, checked before decoding."""
    max_batch: int = 64
    """Most images in one forward pass."""
    batch_wait_ms: float = 2.0
    """How long an idle model waits for requests still being decoded, to batch them together."""
    max_queue: int = 256
    """Most images waiting for the model; beyond it requests get 503."""
    api_key: str | None = None
    """When set, /v1/ requests need 'Authorization: Bearer api_key'."""

    def __post_init__(self) -> None:
        for name in ("max_files", "max_pixels", "max_batch", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CifarkitError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        if not _finite(self.max_upload_mb) or self.max_upload_mb < MIN_UPLOAD_MB:
            raise CifarkitError(
                f"--max-upload-mb must be a finite number of at least {MIN_UPLOAD_MB:g} (10 kB; less would refuse "
                f"every image), got {self.max_upload_mb!r}"
            )
        if not _finite(self.batch_wait_ms) or self.batch_wait_ms < 0:
            raise CifarkitError(f"--batch-wait-ms must be a finite number >= 0, got {self.batch_wait_ms!r}")
        if self.max_pixels > PILLOW_MAX_PIXELS:
            raise CifarkitError(
                f"--max-pixels {self.max_pixels} is above Pillow's own limit of {PILLOW_MAX_PIXELS:,} pixels, "
                "beyond which no image is decoded anyway; give at most that"
            )
        if self.max_files > self.max_queue:
            raise CifarkitError(
                f"--max-files ({self.max_files}) must not exceed --max-queue ({self.max_queue}): "
                "a request larger than the queue could never be answered"
            )
        if self.api_key == "":
            raise CifarkitError("the API key is empty; pass a long random string (e.g. `openssl rand -hex 32`)")
        if self.api_key is not None and not (
            self.api_key.isascii() and self.api_key.isprintable() and self.api_key == self.api_key.strip()
        ):
            raise CifarkitError(
                "the API key (--api-key or $CIFARKIT_API_KEY) must be printable ASCII without spaces at either "
                "end, since clients send it in an HTTP header; pass a long random string "
                "(e.g. `openssl rand -hex 32`)"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
