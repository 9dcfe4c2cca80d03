"""Knowledge distillation (Hinton, Vinyals & Dean, 2015): a small net learns from a trained run's outputs.

A teacher also says how much a cat looks like a dog; the student's loss mixes that with the labels
(:func:`training_loss`). The teacher runs once over the training images and their mirrors, its logits cached
like features, so a student costs what a fast recipe costs. Random translations are not replayed for the teacher:
a 2-pixel shift barely moves a good teacher's answer, and caching every shift would cost 25 times as much.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from cifarkit.data.cache import default_cache_dir
from cifarkit.errors import CifarkitError
from cifarkit.features import cache_path, cached_rows
from cifarkit.inference import predict_logits
from cifarkit.runs import load_model, native_run_bf16, read_config, weights_digest
from cifarkit.runtime import pick_device


def teacher_cache_dir() -> Path:
    """Where teacher outputs are cached: ``teachers/`` inside the data cache (``$CIFARKIT_CACHE``)."""
    return default_cache_dir() / "teachers"


def check_teacher(run_dir: str | Path, classes: Sequence[str]) -> dict:
    """The teacher run's config, after checking it can teach: trained weights, and the student's classes."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CifarkitError(f"teacher {run_dir} is not a run directory; train one first (e.g. --recipe lite0_finetune)")
    config = read_config(run_dir)
    if not (run_dir / "best.safetensors").is_file():
        raise CifarkitError(f"teacher {run_dir} has no trained weights (best.safetensors); finish training it first")
    if list(config.get("classes", classes)) != list(classes):
        raise CifarkitError(
            f"teacher {run_dir} was trained on classes {config['classes']}, the data here has {list(classes)}; "
            "choose a teacher trained on the same classes"
        )
    return config


def teacher_logits(
    run_dir: str | Path,
    images: np.ndarray,
    data_key: str,
    classes: Sequence[str],
    cache_dir: str | Path | None = None,
    *,
    device: str = "auto",
) -> np.ndarray:
    """The teacher run's logits (N, 2, C) float32 for uint8 images (N, H, W, 3), from disk if cached.

    ``[:, 0]`` of the images as they are, ``[:, 1]`` of their mirrors; ``classes`` are the student's, which the
    teacher must share.
    """
    run_dir = Path(run_dir)
    config = check_teacher(run_dir, classes)
    dev = pick_device(device)
    bf16 = native_run_bf16(config, dev)
    precision = "bf16" if bf16 else "fp32"
    parts = ("teacher", config["model"], weights_digest(run_dir), data_key, f"{images.dtype}{images.shape}", precision)
    path = cache_path(cache_dir or teacher_cache_dir(), f"{config['model']}-{precision}-{data_key}", parts, images)

    def compute(part: np.ndarray) -> np.ndarray:
        print(
            f"teacher {run_dir}: computing its outputs for {len(part)} images and their mirrors, once", file=sys.stderr
        )
        # Building the teacher draws random initial weights: leave the student's random stream as a cache hit would.
        with torch.random.fork_rng(devices=[]):
            model = load_model(run_dir)
        views = (part, np.ascontiguousarray(part[:, :, ::-1]))
        return np.stack([predict_logits(model, view, device=device, bf16=bf16) for view in views], axis=1)

    return cached_rows(path, images, compute, (2, len(classes)))


def training_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | None,
    *,
    weight: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Summed loss of a batch: (1 - weight) x cross-entropy with the labels + weight x the teacher's term.

    The teacher's term is T^2 x KL(softmax(teacher / T) || softmax(logits / T)): softening shows the student the
    teacher's small probabilities, and T^2 keeps its gradients the labels' size at any T. No teacher: labels alone.
    """
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")
    if teacher is None:
        return hard
    student, target = F.log_softmax(logits / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1)
    soft = F.kl_div(student, target, log_target=True, reduction="sum")
    return (1 - weight) * hard + weight * temperature**2 * soft
