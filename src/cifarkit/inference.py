"""The inference pass over uint8 images that evaluation, prediction, export, report, serving and distillation share.

:func:`predict_logits`: uint8 images (N, H, W, 3) to logits in eval mode, batched, in the run's precision, with
optional test-time augmentation. It lives below the training loop so that every module that classifies images
uses this one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifarkit.data.batches import to_tensor
from cifarkit.errors import CifarkitError
from cifarkit.models import working_side
from cifarkit.recipes import CHOICES
from cifarkit.runtime import autocast, pick_device

TTA_MODES = CHOICES["tta"]  # the modes a recipe may name, listed once there

IMAGE_SIDE = 32  # CIFAR-10's: batch sizes below count images of this side


def images_per_pass(model: nn.Module, batch_size: int) -> int:
    """How many images one forward pass of ``model`` takes, for ``batch_size`` images of 32x32 pixels.

    A model that resizes its input holds (side / 32)^2 times the activations, so it takes that many times fewer.
    """
    return max(1, batch_size * IMAGE_SIDE**2 // working_side(model, IMAGE_SIDE) ** 2)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate by (dy, dx) pixels, filling with the reflected border."""
    p = max(abs(dy), abs(dx))
    padded = nn.functional.pad(x, (p, p, p, p), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


def check_tta(mode: str) -> None:
    """Refuse a TTA mode that is not one of :data:`TTA_MODES`, naming the ones there are."""
    if mode not in TTA_MODES:
        raise CifarkitError(f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")


def _tta_views(x: torch.Tensor, mode: str) -> tuple[list[torch.Tensor], list[float]]:
    """The augmented views of ``x`` that a TTA mode averages, with their weights (summing to 1)."""
    check_tta(mode)
    if mode == "none":
        return [x], [1.0]
    if mode == "flip":
        return [x, x.flip(-1)], [0.5, 0.5]
    shifted = [_shift(x, -1, -1), _shift(x, 1, 1)]
    views = [x, x.flip(-1), shifted[0], shifted[0].flip(-1), shifted[1], shifted[1].flip(-1)]
    return views, [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]


TTA_VIEWS = {mode: len(_tta_views(torch.zeros(1, 3, 4, 4), mode)[0]) for mode in TTA_MODES}


def tta_logits(model: nn.Module, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Logits averaged over augmented views of ``x``, all views in one forward pass (cheaper for single images).

    ``flip``: the image and its mirror; ``flip_translate`` (airbench's): half that, half the flip average of the
    image shifted one pixel up-left and down-right.
    """
    views, weights = _tta_views(x, mode)
    if len(views) == 1:
        return model(x)
    logits = model(torch.cat(views)).unflatten(0, (len(views), -1))  # -1: the batch stays dynamic in exports
    return torch.einsum("v,vnc->nc", torch.tensor(weights, dtype=logits.dtype, device=logits.device), logits)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    *,
    tta: str = "none",
    batch_size: int = 500,
    device: str = "auto",
    bf16: bool = False,
) -> np.ndarray:
    """Logits (N, C) float32 for uint8 images (N, H, W, 3), in eval mode, optionally with TTA.

    ``batch_size`` counts 32x32 images per pass, TTA views included; ``bf16``: pass the run's
    :func:`cifarkit.runs.native_run_bf16`.
    """
    check_tta(tta)
    if len(images) == 0:
        raise CifarkitError("no images to classify: give at least one")
    dev = pick_device(device)
    model = model.to(dev, memory_format=torch.channels_last).eval()
    step = max(1, images_per_pass(model, batch_size) // TTA_VIEWS[tta])
    out = []
    for start in range(0, len(images), step):
        x = to_tensor(images[start : start + step]).to(dev).contiguous(memory_format=torch.channels_last)
        with autocast(dev, bf16):
            out.append(tta_logits(model, x, tta).float().cpu())
    return torch.cat(out).numpy()


def check_outputs(outputs: np.ndarray, run_dir: str | Path, classes: Sequence[str], on: str = "") -> None:
    """Refuse a run's model outputs (N, C) that cannot be its classes' probabilities, in one line naming the run.

    C other than the classes of ``RUN/config.json`` means weights of another run; a value not finite, divergence.
    """
    run_dir = Path(run_dir)
    if outputs.ndim != 2 or outputs.shape[1] != len(classes):
        width = outputs.shape[1] if outputs.ndim == 2 else f"shape {outputs.shape}"
        raise CifarkitError(
            f"{run_dir / 'config.json'} lists {len(classes)} classes but the weights {run_dir / 'best.safetensors'} "
            f"give {width} outputs: they come from different runs; put the run's own config.json and weights "
            "back together, or train the run again into a new --out"
        )
    if not np.isfinite(outputs).all():
        raise CifarkitError(
            f"the model of {run_dir} gives outputs that are not finite (NaN or infinity){on}: its weights are "
            "not finite, the run diverged; train it again with a lower learning rate (--lr, or --set lr=...) "
            "into a new --out"
        )


def check_model(model: nn.Module, run_dir: str | Path, classes: Sequence[str]) -> nn.Module:
    """``model`` after one forward pass over a black and a grey image, checked by :func:`check_outputs`: cheap, done
    when a run's model is loaded, so a bad model is refused before any work."""
    probe = torch.stack([torch.zeros(3, 32, 32), torch.full((3, 32, 32), 0.5)])
    device = next(model.parameters(), torch.zeros(())).device
    with torch.no_grad():
        outputs = model.eval()(probe.to(device)).float().cpu().numpy()
    check_outputs(outputs, run_dir, classes, on=" on a plain black or grey image")
    return model


def predict_proba(model: nn.Module, images: np.ndarray, **kwargs) -> np.ndarray:
    """Class probabilities (N, C): the softmax of :func:`predict_logits` (same arguments)."""
    return torch.softmax(torch.from_numpy(predict_logits(model, images, **kwargs)), dim=1).numpy()
