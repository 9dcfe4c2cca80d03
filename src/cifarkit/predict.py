"""Classify any image file (decode with Pillow, bring it to 32x32 RGB) or uint8 image array: the top-k classes."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from pathlib import Path

import numpy as np

from cifarkit.analysis import Prediction, ranked  # Prediction re-exported: the type predict returns
from cifarkit.data.images import image_to_array
from cifarkit.errors import CifarkitError
from cifarkit.inference import check_model, check_outputs, predict_proba
from cifarkit.runs import load_model, native_run_bf16, read_config


def predict(
    run_dir: str | Path, images: Sequence[str | Path] | np.ndarray, *, top_k: int = 3, device: str = "auto"
) -> list[Prediction]:
    """Top-k predictions for each image file; unreadable files get an error, the rest are still predicted.

    ``images`` may instead be uint8 RGB pixels, (N, 32, 32, 3) or one (32, 32, 3), named ``images[i]``.
    Predictions use the run's TTA mode and its precision where native here.
    """
    config = read_config(run_dir)
    classes = config["classes"]
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or not 1 <= top_k <= len(classes):
        raise CifarkitError(f"--top-k must be a whole number from 1 to {len(classes)} (the run's classes), got {top_k}")
    arrays, errors = {}, {}
    if isinstance(images, np.ndarray):
        arrays = dict(enumerate(_pixels(images)))
        images = [f"images[{i}]" for i in arrays]
    else:
        for i, src in enumerate(images):
            try:
                arrays[i] = image_to_array(src)
            except CifarkitError as e:
                errors[i] = str(e)
    probs = {}
    if arrays:
        stacked = predict_proba(
            check_model(load_model(run_dir), run_dir, classes),
            np.stack(list(arrays.values())),
            tta=config.get("tta", "none"),
            device=device,
            bf16=native_run_bf16(config, device),
        )
        check_outputs(stacked, run_dir, classes, on=" on the images given")
        probs = dict(zip(arrays, stacked))
    return [
        Prediction(str(src), error=errors[i]) if i in errors else Prediction(str(src), ranked(probs[i], classes, top_k))
        for i, src in enumerate(images)
    ]


def _pixels(images: np.ndarray) -> np.ndarray:
    """uint8 RGB images as (N, 32, 32, 3), one (32, 32, 3) image given a batch axis; anything else refused."""
    batch = images[None] if images.ndim == 3 else images
    if images.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (32, 32, 3):
        raise CifarkitError(
            f"images must be uint8 RGB pixels of shape (N, 32, 32, 3) or (32, 32, 3), e.g. data.x_test[:8]; "
            f"got {images.dtype} {images.shape} (image files of any size can be given by path)"
        )
    return batch
