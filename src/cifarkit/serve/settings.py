"""A server's limits and batching, as plain data: the CLI reads the defaults without importing FastAPI."""

from __future__ import annotations

from dataclasses import dataclass

from cifarkit.data.images import MAX_PIXELS
from cifarkit.errors import CifarkitError


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
        for name in ("max_upload_mb", "max_files", "max_pixels", "max_batch", "max_queue"):
            if getattr(self, name) <= 0:
                raise CifarkitError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise CifarkitError(f"--batch-wait-ms must be 0 or more, got {self.batch_wait_ms}")
        if self.max_files > self.max_queue:
            raise CifarkitError(
                f"--max-files ({self.max_files}) must not exceed --max-queue ({self.max_queue}): "
                "a request larger than the queue could never be answered"
            )
        if self.api_key == "":
            raise CifarkitError("the API key is empty; pass a long random string (e.g. `openssl rand -hex 32`)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
