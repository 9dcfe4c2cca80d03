"""One safe decoder for every image cifarkit reads: prediction, serving and class-folder data trees.

Pillow's plain ``convert("RGB")`` is wrong for some images and it decodes whatever size a file declares;
:func:`decode_image` gives the pixels the same picture saved as an 8-bit RGB PNG would, or a
:class:`CifarkitError` naming the file. 16-bit greyscale is read on the 16-bit scale (Pillow would clip it to
white), float images on 0..1 (values off it refused, not clipped), transparency on white, the EXIF orientation
applied, and a file declaring more than ``max_pixels`` pixels refused before decoding (a decompression bomb).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarkit.errors import CifarkitError

SIZE = 32
"""Side of the square images the models take."""
MAX_PIXELS = 40_000_000
"""Default limit on an image's declared width x height: room for ordinary camera photos (a 24-megapixel frame is
6000x4000), far below what would exhaust memory (40 megapixels decode to 120 MB of RGB)."""
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
"""Formats decoded: the raster formats photos and data sets come in. Others Pillow knows (EPS, which runs
Ghostscript; PDF; rarely used decoders) are refused, so an upload cannot reach them."""
WHITE = (255, 255, 255, 255)
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

ImageSource = str | Path | bytes


def decode_image(source: ImageSource, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file (or its bytes) to a loaded 8-bit RGB Pillow image, upright, at its own size.

    ``max_pixels`` bounds the declared width x height before any pixel is decoded; any problem is a
    :class:`CifarkitError` naming the file.
    """
    name = "uploaded image" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise CifarkitError(
                    _bomb_message(name, f"{width}x{height}, {width * height / 1e6:g} megapixels", max_pixels)
                )
            image = ImageOps.exif_transpose(image)  # decodes the first frame
    except FileNotFoundError:
        raise CifarkitError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise CifarkitError(f"{name}: is a directory, not an image file") from None
    except Image.DecompressionBombError as exc:  # raised by Image.open itself, before our check
        raise CifarkitError(_bomb_message(name, str(exc), max_pixels)) from None
    except UnidentifiedImageError:  # Pillow's message would show the file object's repr
        raise CifarkitError(_unreadable(name, "not a recognised image format")) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CifarkitError(_unreadable(name, str(exc))) from None
    try:
        return _to_rgb(image, name)
    except ValueError as exc:  # a mode Pillow cannot convert, e.g. premultiplied "La"
        raise CifarkitError(
            f"{name} is a {image.mode} image, which cannot be read as RGB ({exc}): save it as an 8-bit PNG or JPEG"
        ) from None


def image_to_array(source: ImageSource, size: int = SIZE, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image to uint8 (size, size, 3) RGB for prediction: its central square (CIFAR-10 objects fill the
    frame), Lanczos-downscaled."""
    image = decode_image(source, max_pixels=max_pixels)
    return np.asarray(ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS), dtype=np.uint8)


def _unreadable(name: str, reason: str) -> str:
    return (
        f"{name} is not a readable image ({reason}): replace it with a valid {', '.join(FORMATS[:-1])} or "
        f"{FORMATS[-1]} file"
    )


def _bomb_message(name: str, found: str, max_pixels: int) -> str:
    return (
        f"{name} declares too large an image ({found}): refused before decoding as a possible decompression "
        f"bomb; shrink it below the limit of {max_pixels / 1e6:g} megapixels"
    )


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """8-bit RGB pixels of a decoded image of any mode, transparent parts on white."""
    if image.mode.startswith("I"):  # "I;16", "I;16B", ... and 32-bit "I": the 16-bit scale
        image = _grey_to_8bit(np.asarray(image), 65535, name)
    elif image.mode == "F":
        image = _grey_to_8bit(np.asarray(image), 1, name)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image.convert("RGBA"))
    return image.convert("RGB")


def _grey_to_8bit(values: np.ndarray, white: float, name: str) -> Image.Image:
    """Greyscale ``values`` on the scale 0 (black) to ``white``, rounded to an 8-bit "L" image; others refused."""
    low, high = float(values.min()), float(values.max())
    if not 0 <= low <= high <= white:  # also False for NaN
        raise CifarkitError(
            f"{name} holds {values.dtype} pixel values from {low:g} to {high:g}, outside the scale "
            f"cifarkit reads them on, 0 (black) to {white:g} (white): rescale them to it or save "
            "the image as an 8-bit PNG"
        )
    return Image.fromarray(np.rint(values * (255 / white)).astype(np.uint8))
