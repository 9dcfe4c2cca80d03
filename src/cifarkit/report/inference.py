"""Running a cifarkit model on uint8 images.

Data sets hold uint8 images (N, H, W, 3); models take float (N, 3, H, W) in [0, 1]
and return logits. These helpers do that conversion in one place.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> float tensor (N, 3, H, W) in [0, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (N, K) float32 of a model (already in eval mode) on uint8 images (N, H, W, 3)."""
    device = model_device(model)
    chunks = [
        model(to_tensor(images[start:start + batch_size]).to(device)).float().cpu().numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks, axis=0)
