"""Classify any image file: decode with Pillow, bring it to 32x32 RGB, return the top-k classes."""

from __future__ import annotations

from numbers import Integral
from pathlib import Path

import numpy as np

from cifarkit.analysis import Prediction, ranked  # Prediction re-exported: the type predict returns
from cifarkit.data.images import image_to_array
from cifarkit.errors import CifarkitError
from cifarkit.inference import check_model, check_outputs, predict_proba
from cifarkit.runs import load_model, native_run_bf16, read_config


def predict(run_dir: str | Path, images: list[str | Path], *, top_k: int = 3, device: str = "auto") -> list[Prediction]:
    """Top-k predictions for each image file; unreadable files get an error, the rest are still predicted.

    Predictions use the run's TTA mode and its precision where native here (see
    :func:`cifarkit.runs.native_run_bf16`). A ``top_k`` outside
    1..number of classes, a run whose weights do not match its class list, and a run whose outputs are
    not finite (it diverged) raise :class:`CifarkitError`.
    """
    config = read_config(run_dir)
    classes = config["classes"]
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or not 1 <= top_k <= len(classes):
        raise CifarkitError(f"--top-k must be a whole number from 1 to {len(classes)} (the run's classes), got {top_k}")
    arrays, errors = {}, {}
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
