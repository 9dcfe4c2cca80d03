"""The inference pass over uint8 images that evaluation, prediction, export, report, serving and distillation share.

:func:`predict_logits` turns uint8 images (N, H, W, 3) into logits in eval
mode, batched, in the run's precision and optionally with test-time
augmentation (:func:`tta_logits`, whose views :data:`TTA_MODES` names). It
lives below the training loop, beside :mod:`cifarkit.runs`, so that every
module that classifies images, training's distillation included, uses the
same pass rather than a copy of it.
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

    A model that resizes its input computes on (side / 32)^2 times the pixels,
    and holds that many times the activations, so it takes that many times
    fewer images: lite0_finetune's backbone works at 160 px, where 500 images
    in one eval-mode pass held about 3.3 GB on the CPU, 20 images about 0.16 GB.
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
    """Logits averaged over augmented views of ``x``, all views in one forward pass.

    - none: the plain forward pass.
    - flip: mean of the image and its mirror.
    - flip_translate: half the flip average, plus half the flip average of the
      image shifted one pixel up-left and one pixel down-right (airbench's
      strongest TTA), 6 views.

    Stacking the views into one batch matters for single images (serving):
    one pass of 6 images costs far less than 6 passes of one.
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

    The model is moved to ``device``. ``batch_size`` counts 32x32 images per
    forward pass, TTA views included (see :func:`images_per_pass`). ``bf16``
    runs the forward passes under bfloat16 autocast: pass the run's
    ``native_run_bf16(config, device)`` (:mod:`cifarkit.runs`): the precision the
    run trained in, where it is native on ``device``.
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

    * C differs from the number of classes in ``RUN/config.json``: the config
      and the weights come from different runs (a probability would name no
      class, or a class would never be predicted);
    * a value is NaN or infinite: the weights are not finite, the run diverged.
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
    """``model`` after one forward pass over a black and a grey image on the CPU, checked by :func:`check_outputs`.

    Cheap, and done when a run's model is loaded, so that a model whose
    outputs do not match its classes, or are not finite, is refused before
    any work instead of failing (or answering NaN) later.
    """
    probe = torch.stack([torch.zeros(3, 32, 32), torch.full((3, 32, 32), 0.5)])
    device = next(model.parameters(), torch.zeros(())).device
    with torch.no_grad():
        outputs = model.eval()(probe.to(device)).float().cpu().numpy()
    check_outputs(outputs, run_dir, classes, on=" on a plain black or grey image")
    return model


def predict_proba(model: nn.Module, images: np.ndarray, **kwargs) -> np.ndarray:
    """Class probabilities (N, C): the softmax of :func:`predict_logits` (same arguments)."""
    return torch.softmax(torch.from_numpy(predict_logits(model, images, **kwargs)), dim=1).numpy()
