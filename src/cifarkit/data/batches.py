"""From uint8 arrays to float tensors, validation splits, subsets and batches."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from cifarkit.errors import CifarkitError


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, 3, H, W), channels-last in memory (oneDNN's fastest): a view, no copy.

    Training keeps its images as these bytes, a quarter of float32's memory, and scales a batch at a time.
    """
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]; any other tensor (floats, features) as it is."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1], channels-last in memory."""
    return unit_range(pixels(images))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (keep, held_out), ``fraction`` of every class held out at random (seeded).

    Not Keras' last 10%: a folder source is sorted by class, so that would hold out only trucks. The draws are
    scikit-learn's ``train_test_split(..., stratify=labels, random_state=seed)``, made here with NumPy alone, so
    that runs split before keep their split (tests/test_batches_augment.py checks both agree) and a training
    process does not import scikit-learn for it (0.8 s).
    """
    if not 0 <= fraction < 1:
        raise CifarkitError(f"validation fraction must be in [0, 1), got {fraction}")
    everything = np.arange(len(labels))
    if fraction == 0:
        return everything, everything[:0]
    n_held = math.ceil(fraction * len(labels))
    _, classes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    fewest = int(counts.min()) if len(counts) else 0
    if fewest < 2 or min(len(labels) - n_held, n_held) < len(counts):
        raise CifarkitError(
            f"cannot hold out {fraction:g} of {len(labels)} images with every class on both sides (the rarest class "
            f"has {fewest}, and {n_held} held-out images are to cover {len(counts)} classes); "
            "train on more images (a larger --subset) or set val_fraction=0"
        )
    rng = np.random.RandomState(seed)
    n_keep = _share_out(counts, len(labels) - n_held, rng)
    n_out = _share_out(counts - n_keep, n_held, rng)
    by_class = np.split(np.argsort(classes, kind="stable"), np.cumsum(counts)[:-1])
    keep, held_out = [], []
    for members, k, h in zip(by_class, n_keep, n_out):
        members = members[rng.permutation(len(members))]
        keep.append(members[:k])
        held_out.append(members[k : k + h])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held_out))


def _share_out(counts: np.ndarray, n: int, rng: np.random.RandomState) -> np.ndarray:
    """``n`` places shared among classes in proportion to ``counts``: each class its share rounded down, the
    places left over to the largest remainders, ties drawn at random (scikit-learn's draws, in their order)."""
    exact = counts / counts.sum() * n
    shares = np.floor(exact)
    left = int(n - shares.sum())
    remainders = exact - shares
    for value in np.unique(remainders)[::-1]:
        if left <= 0:
            break
        tied = np.flatnonzero(remainders == value)
        chosen = rng.choice(tied, size=min(len(tied), left), replace=False)
        shares[chosen] += 1
        left -= len(chosen)
    return shares.astype(int)


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` images, as equal a share of every class as ``n`` allows."""
    classes = np.unique(labels)
    if not 0 < n <= len(labels):
        raise CifarkitError(f"--subset must be between 1 and {len(labels)}, got {n}")
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    quota = np.full(len(classes), n // len(classes))
    quota[: n % len(classes)] += 1
    return np.sort(np.concatenate([idx[:q] for idx, q in zip(per_class, quota)]))


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle_seed: int | None = None, rank: int = 0, world: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches in order, or shuffled by ``shuffle_seed``; the last batch may be short.

    With ``world`` > 1 each batch is cut into ``world`` near-equal parts and part ``rank`` yielded, so the processes
    together see exactly the batches one process would.
    """
    n = len(x)
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    order = torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size].tensor_split(world)[rank]
        yield x[idx], y[idx]
