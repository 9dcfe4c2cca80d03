"""Grad-CAM (Selvaraju et al. 2017): where in the image did a conv layer see evidence for a class?

The map is ``ReLU(sum_k alpha_k A_k)`` over a conv layer's activations A, with ``alpha_k`` the spatial mean of
dy_c / dA_k, upsampled to the input and scaled to [0, 1] per image. Hooks capture both; ``torch.autograd.grad``
leaves the parameters' ``.grad`` untouched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def find_target_layer(model: nn.Module, example: torch.Tensor) -> str | None:
    """Name of the last ``nn.Conv2d`` in execution order whose output has more than one pixel, or None."""
    spatial: list[str] = []
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: spatial.append(name) if out.shape[-1] * out.shape[-2] > 1 else None
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(example[:1].to(next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return spatial[-1] if spatial else None


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    target_layer: nn.Module | str | None = None,
    class_idx: int | torch.Tensor | None = None,
) -> np.ndarray:
    """Grad-CAM maps (N, H, W) float32 in [0, 1] for float images (N, 3, H, W) in [0, 1].

    ``target_layer``: a module, its name, or None for :func:`find_target_layer`; ``class_idx``: the class to
    explain (one, or one per image), None for each image's prediction. The model should be in eval mode.
    """
    layer = _resolve_layer(model, images, target_layer)
    captured: dict[str, torch.Tensor] = {}

    def forward_hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured["activation"] = output.detach().clone()
        output.register_hook(lambda grad: captured.__setitem__("gradient", grad.detach()))

    handle = layer.register_forward_hook(forward_hook)
    try:
        with torch.enable_grad():
            x = images.detach().to(next(model.parameters()).device).requires_grad_(True)
            logits = model(x)
            score = logits.gather(1, _classes(logits, class_idx)[:, None]).sum()
            torch.autograd.grad(score, x)
    finally:
        handle.remove()
    return _maps(captured["activation"], captured["gradient"], tuple(images.shape[-2:]))


def _resolve_layer(model: nn.Module, images: torch.Tensor, target_layer: nn.Module | str | None) -> nn.Module:
    """The module to hook: as given, looked up by name, or found automatically."""
    if isinstance(target_layer, nn.Module):
        return target_layer
    name = target_layer if target_layer is not None else find_target_layer(model, images)
    if name is None:
        raise ValueError("Grad-CAM needs a conv layer with a spatial output; this model has no such nn.Conv2d")
    return model.get_submodule(name)


def _classes(logits: torch.Tensor, class_idx: int | torch.Tensor | None) -> torch.Tensor:
    """The class index per image: predicted, or ``class_idx`` broadcast to the batch."""
    if class_idx is None:
        return logits.argmax(dim=1)
    return torch.as_tensor(class_idx, device=logits.device, dtype=torch.int64).expand(logits.shape[0])


def _maps(activation: torch.Tensor, gradient: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Weight activations by mean gradients, ReLU, upsample to ``size`` and scale each map to [0, 1]."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam.float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)
