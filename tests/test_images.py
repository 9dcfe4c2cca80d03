"""Every odd image reads as the same picture saved as an 8-bit RGB PNG would, or is a clear error naming it."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.data.images import decode_image, image_to_array
from cifarkit.data.sources import detect_source, read_source
from cifarkit.errors import CifarkitError, DataError
from data_factories import make_dataset, write_image_folders


def picture(height: int = 32, width: int = 40) -> np.ndarray:
    """A smooth uint8 RGB picture (JPEG keeps it well) that spans 0..255, wider than high so prediction crops it."""
    y, x = np.mgrid[0:height, 0:width]
    red, green = x * 255 // (width - 1), y * 255 // (height - 1)
    return np.stack([red, green, (red + green) // 2], axis=-1).astype(np.uint8)


def grey(pixels: np.ndarray) -> np.ndarray:
    """One channel of ``pixels``, repeated as the RGB an 8-bit PNG of a grey picture holds."""
    return np.repeat(pixels[..., 2:], 3, axis=-1)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, bit_depth: int, rows: bytes) -> bytes:
    """A minimal truecolour PNG (Pillow cannot write 16-bit RGB); ``rows`` are the unfiltered scanlines."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)  # colour type 2: RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def bomb_png(width: int, height: int) -> bytes:
    """A 60-byte PNG that declares a ``width`` x ``height`` image and holds no pixels at all."""
    return png_bytes(width, height, 8, b"")


# Each maker writes one picture in an odd format and returns the file and the pixels its 8-bit RGB PNG twin holds.
Maker = Callable[[Path], tuple[Path, np.ndarray]]


def grey_16bit_png(folder: Path) -> tuple[Path, np.ndarray]:
    pixels = picture()
    path = folder / "grey16.png"
    Image.fromarray(pixels[..., 2].astype(np.uint16) * 257).save(path)  # 0..255 -> 0..65535
    assert Image.open(path).mode == "I;16"
    return path, grey(pixels)


def rgb_48bit_png(folder: Path) -> tuple[Path, np.ndarray]:
    pixels = picture()
    samples = pixels.astype(">u2") * 257
    rows = b"".join(b"\0" + row.tobytes() for row in samples)  # filter byte 0, then 16-bit big-endian samples
    path = folder / "rgb48.png"
    path.write_bytes(png_bytes(pixels.shape[1], pixels.shape[0], 16, rows))
    return path, pixels


def float_tiff(folder: Path) -> tuple[Path, np.ndarray]:
    pixels = picture()
    path = folder / "float.tiff"
    Image.fromarray(pixels[..., 2].astype(np.float32) / 255).save(path)  # float images: 0 black, 1 white
    assert Image.open(path).mode == "F"
    return path, grey(pixels)


def palette_png_with_transparency(folder: Path) -> tuple[Path, np.ndarray]:
    palette = Image.fromarray(picture()).quantize(colors=200)
    palette.putpalette(palette.getpalette()[:600] + [0, 255, 0] * 56)  # entries 200..255: green
    palette.paste(250, (5, 4, 20, 12))  # a patch of entry 250, made transparent below
    path = folder / "palette.png"
    palette.save(path, transparency=250)
    expected = np.asarray(palette.convert("RGB")).copy()
    expected[4:12, 5:20] = 255  # transparent -> white
    return path, expected


def animated_gif(folder: Path) -> tuple[Path, np.ndarray]:
    first = Image.fromarray(picture()).quantize(colors=200)
    second = Image.fromarray(255 - picture()).quantize(colors=200)
    path = folder / "animated.gif"
    first.save(path, save_all=True, append_images=[second])
    assert Image.open(path).n_frames == 2
    return path, np.asarray(first.convert("RGB"))


def exif_rotated_png(folder: Path) -> tuple[Path, np.ndarray]:
    pixels = picture()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = folder / "rotated.png"
    Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)  # stored counter-clockwise
    return path, pixels


LOSSLESS: dict[str, Maker] = {
    maker.__name__: maker
    for maker in (
        grey_16bit_png,
        rgb_48bit_png,
        float_tiff,
        palette_png_with_transparency,
        animated_gif,
        exif_rotated_png,
    )
}


def twin_png(path: Path, pixels: np.ndarray) -> Path:
    """The picture saved as an 8-bit RGB PNG next to ``path``."""
    twin = path.with_name(path.stem + "-twin.png")
    Image.fromarray(pixels).save(twin)
    return twin


def pixels_of(source: Path | bytes, **kwargs: int) -> np.ndarray:
    return np.asarray(decode_image(source, **kwargs))


@pytest.mark.parametrize("make", LOSSLESS.values(), ids=LOSSLESS.keys())
def test_odd_formats_read_as_their_8bit_rgb_twin(make: Maker, tmp_path: Path) -> None:
    path, expected = make(tmp_path)
    twin = pixels_of(twin_png(path, expected))
    np.testing.assert_array_equal(twin, expected)
    decoded = pixels_of(path)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, twin)
    np.testing.assert_array_equal(image_to_array(path), image_to_array(twin_png(path, expected)))


def test_16bit_values_round_to_the_nearest_8bit_value(tmp_path: Path) -> None:
    values = np.array([[0, 128, 129, 32767, 32768, 65279, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "ramp.png")
    assert pixels_of(tmp_path / "ramp.png")[0, :, 0].tolist() == [0, 0, 1, 127, 128, 254, 255]


def test_cmyk_jpeg_reads_as_its_rgb_twin_within_jpeg_error(tmp_path: Path) -> None:
    pixels = picture()
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    twin = pixels_of(twin_png(tmp_path / "cmyk.jpg", pixels))
    difference = np.abs(pixels_of(tmp_path / "cmyk.jpg").astype(int) - twin)
    assert difference.mean() < 2 and difference.max() < 16  # inverted-CMYK misreads would be off by ~255


@pytest.mark.parametrize("values", [np.linspace(0, 255, 12), np.array([0, 0.5, np.nan])], ids=["0..255", "nan"])
def test_float_images_off_the_0_to_1_scale_are_refused(values: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "float.tiff"
    Image.fromarray(values.reshape(1, -1).astype(np.float32)).save(path)
    with pytest.raises(CifarkitError, match=re.escape(str(path)) + r" holds float32 pixel values .*0 \(black\) to 1"):
        decode_image(path)


# --- decompression bombs: refused from the header, before any decoding ---


@pytest.mark.parametrize("side", [8000, 50000], ids=["over our limit", "over Pillow's limit too"])
def test_bomb_is_refused_before_decoding(side: int, tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(side, side))  # decoding it would fail as truncated, not as a bomb
    with pytest.raises(CifarkitError, match=re.escape(str(path)) + " declares too large an image.*decompression bomb"):
        decode_image(path)
    with pytest.raises(CifarkitError, match="uploaded image declares too large an image"):
        image_to_array(bomb_png(side, side))


def test_pixel_limit_is_a_parameter(tmp_path: Path) -> None:
    Image.fromarray(picture(80, 100)).save(tmp_path / "photo.png")
    assert pixels_of(tmp_path / "photo.png", max_pixels=8000).shape == (80, 100, 3)
    with pytest.raises(CifarkitError, match=r"100x80, 0.008 megapixels.*below the limit of 0.004 megapixels"):
        decode_image(tmp_path / "photo.png", max_pixels=4000)


# --- files that are not whole images ---


def truncated(path: Path) -> None:
    Image.fromarray(picture()).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "name, write",
    [
        ("empty.png", lambda path: path.write_bytes(b"")),
        ("truncated.png", truncated),
        ("truncated.jpg", truncated),
        ("notes.jpg", lambda path: path.write_text("not an image")),
    ],
)
def test_broken_files_are_errors_naming_the_file(name: str, write: Callable[[Path], None], tmp_path: Path) -> None:
    path = tmp_path / name
    write(path)
    with pytest.raises(CifarkitError, match=re.escape(str(path)) + " is not a readable image"):
        decode_image(path)


def test_empty_bytes_are_an_error() -> None:
    with pytest.raises(CifarkitError, match="uploaded image is not a readable image"):
        decode_image(b"")


# --- the class-folder tree reads through the same decoder ---


def test_folder_tree_reads_16bit_pngs_right_and_refuses_bombs(tmp_path: Path) -> None:
    root = write_image_folders(make_dataset(), tmp_path / "tree")
    pixels = picture(32, 32)
    Image.fromarray(pixels[..., 2].astype(np.uint16) * 257).save(root / "test" / "cat" / "00003.png")
    np.testing.assert_array_equal(read_source(detect_source(root)).x_test[3], grey(pixels))  # cat: test image 3
    bomb = root / "train" / "dog" / "00011.png"
    bomb.write_bytes(bomb_png(50000, 50000))
    with pytest.raises(DataError, match=re.escape(str(bomb.resolve())) + " declares too large an image"):
        read_source(detect_source(root))


# --- predictions: the same for every format as for the 8-bit twin; bombs are refused ---


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cifarkit.recipes import get_recipe
    from cifarkit.train import train
    from conftest import synthetic_cifar

    return train(
        get_recipe("seed_cnn3").replace(epochs=1),
        synthetic_cifar(),
        tmp_path_factory.mktemp("runs") / "run",
        progress=False,
    )


def test_predictions_match_the_8bit_twin_and_bombs_are_refused(run: Path, tmp_path: Path) -> None:
    from cifarkit.predict import predict

    images, twins = [], []
    for make in LOSSLESS.values():
        path, expected = make(tmp_path)
        images.append(path)
        twins.append(twin_png(path, expected))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(50000, 50000))
    results = predict(run, [*images, *twins, bomb], top_k=10)
    odd, plain, refused = results[: len(images)], results[len(images) : -1], results[-1]
    for image, twin in zip(odd, plain):
        assert image.error is None and [c for c, _ in image.top] == [c for c, _ in twin.top], image.source
        assert [p for _, p in image.top] == pytest.approx([p for _, p in twin.top], abs=1e-6)
    assert str(bomb) in refused.error and "decompression bomb" in refused.error and not refused.top


def test_formats_outside_the_raster_list_are_refused(tmp_path):
    eps = tmp_path / "picture.eps"  # Pillow would run Ghostscript to read it
    Image.new("RGB", (8, 8), (200, 10, 10)).save(eps)
    with pytest.raises(CifarkitError, match="picture.eps is not a readable image"):
        decode_image(eps)
