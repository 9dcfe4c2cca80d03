"""Training-time augmentation of whole tensors, in a few vectorised operations, never image by image (a Python
loop over 50,000 images would cost more than the training steps it feeds)."""

from __future__ import annotations

import torch

from cifarkit.errors import CifarkitError

# Images augmented at a time: the temporaries (mirrored and padded copies) of one chunk are held at once, not of
# the whole set, which were most of a run's peak memory (benchmarks/results/issue18/peak_memory*.json).
CHUNK = 4096


def translate(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels in x and y, filling with the reflected border (a random crop)."""
    return _shifted(images, pad, *_shifts(len(images), pad, generator))


def _shifts(n: int, pad: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's shift (dx, dy) in [0, 2 * pad], drawn from ``generator`` (nothing drawn when ``pad`` is 0)."""
    if pad == 0:
        return torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    return dx, dy


def _shifted(images: torch.Tensor, pad: int, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """``images`` reflect-padded by ``pad`` and cropped at (``dx``, ``dy``) each."""
    if pad == 0:
        return images
    _, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad,) * 4, mode="reflect")
    out = torch.empty_like(images)
    for sx in range(2 * pad + 1):
        for sy in range(2 * pad + 1):
            sel = (dx == sx) & (dy == sy)
            out[sel] = padded[sel, :, sy : sy + h, sx : sx + w]
    return out


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square at a random place fully inside each image (DeVries & Taylor, 2017)."""
    if size == 0:
        return images
    n, _, h, w = images.shape
    if size > min(h, w):
        raise CifarkitError(f"cutout {size} is larger than the {h}x{w} images; choose at most {min(h, w)}")
    top = torch.randint(0, h - size + 1, (n, 1, 1), generator=generator)
    left = torch.randint(0, w - size + 1, (n, 1, 1), generator=generator)
    rows = torch.arange(h).view(1, h, 1) - top
    cols = torch.arange(w).view(1, 1, w) - left
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    return images * (~inside).unsqueeze(1).to(images.dtype)


def augment(
    images: torch.Tensor,
    *,
    epoch: int,
    seed: int,
    flip: bool = False,
    alternating_flip: bool = False,
    pad: int = 0,
    cutout_size: int = 0,
) -> torch.Tensor:
    """One epoch's augmented copy of ``images``: a pure function of (images, epoch, seed), whatever :data:`CHUNK`."""
    if not (flip or pad or cutout_size):
        return images
    n = len(images)
    mirror = flipped(n, epoch=epoch, seed=seed, alternating=alternating_flip) if flip else None
    g = torch.Generator().manual_seed(seed * 100_019 + epoch)
    dx, dy = _shifts(n, pad, g)
    out = torch.empty_like(images)
    for start in range(0, n, CHUNK):
        part = slice(start, start + CHUNK)
        x = images[part]
        if mirror is not None:
            x = torch.where(mirror[part].view(-1, 1, 1, 1), x.flip(-1), x)
        out[part] = _shifted(x, pad, dx[part], dy[part])
    return cutout(out, cutout_size, g)


def flipped(n: int, *, epoch: int, seed: int, alternating: bool) -> torch.Tensor:
    """Which of ``n`` images :func:`augment` mirrors in ``epoch`` (also used to pick a teacher's view of them).

    Alternating flip (airbench): a random half in even epochs and exactly the other half in odd ones, so every
    image is seen both ways every two epochs instead of by chance.
    """
    g = torch.Generator().manual_seed(seed if alternating else seed * 100_003 + epoch)
    mask = torch.rand(n, generator=g) < 0.5
    return mask ^ bool(epoch % 2) if alternating else mask


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images`` (N, C, H, W) scaled to ``size`` x ``size``, antialiased; unchanged when already that size."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.clamp_(0, 1).contiguous(memory_format=torch.channels_last)


def progressive_size(epoch: int, *, epochs: int, full: int, start: int, until: float) -> int:
    """The image side in ``epoch`` (0-based) of ``epochs``: ``start`` growing linearly to ``full``.

    Full size from the fraction ``until`` of the run on, and always in the last epoch (the size tested at); sides
    are multiples of 4, so a run visits a few sizes. ``start`` 0 means full size throughout.
    """
    end = until * epochs
    if not start or epoch >= end or epoch == epochs - 1:
        return full
    side = start + (full - start) * epoch / end
    return max(start, int(side) // 4 * 4)
