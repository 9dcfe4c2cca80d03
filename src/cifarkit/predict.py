"""Classify any image file: decode with Pillow, bring it to 32x32 RGB, return the top-k classes."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarkit.errors import CifarkitError
from cifarkit.evaluate import predict_proba
from cifarkit.runs import load_model, read_config

SIZE = 32


def image_to_array(source: str | Path | bytes, size: int = SIZE) -> np.ndarray:
    """Decode an image (any Pillow format, size or mode) to uint8 (size, size, 3) RGB.

    Transparent pixels are composited onto white, the EXIF orientation is
    applied, the central square is kept (CIFAR-10 objects fill the frame) and
    it is downscaled with a Lanczos filter.
    """
    name = "uploaded image" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
    except FileNotFoundError:
        raise CifarkitError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise CifarkitError(f"{name}: is a directory, not an image file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise CifarkitError(f"{name}: not a readable image ({e}); pass a PNG, JPEG or other image file") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = ImageOps.fit(img.convert("RGB"), (size, size), method=Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


@dataclass
class Prediction:
    """Top-k classes of one image, or the reason it could not be read."""

    source: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error:
            return {"image": self.source, "error": self.error}
        return {"image": self.source, "predictions": [{"class": c, "probability": p} for c, p in self.top]}


def predict(run_dir: str | Path, images: list[str | Path], *, top_k: int = 3, device: str = "auto") -> list[Prediction]:
    """Top-k predictions for each image file; unreadable files get an error, the rest are still predicted."""
    config = read_config(run_dir)
    classes = config["classes"]
    if not 1 <= top_k <= len(classes):
        raise CifarkitError(f"--top-k must be between 1 and {len(classes)}, got {top_k}")
    results, arrays = [], []
    for src in images:
        try:
            arrays.append(image_to_array(src))
            results.append(Prediction(str(src)))
        except CifarkitError as e:
            results.append(Prediction(str(src), error=str(e)))
    if arrays:
        probs = predict_proba(load_model(run_dir), np.stack(arrays), tta=config.get("tta", "none"),
                              device=device)
        for result, p in zip((r for r in results if r.error is None), probs):
            order = np.argsort(-p)[:top_k]
            result.top = [(classes[i], float(p[i])) for i in order]
    return results
