"""Find and decode CIFAR-10 in any of the forms it is shipped in.

A path may name an official archive (MD5-checked before anything in it is read), an extracted batches folder
(python or binary; checked for structure instead), a folder containing either, or a class-folder tree
``train/<class>/*.png|jpg`` + ``test/<class>/...`` (classes in alphabetical order, which is CIFAR-10's label
order; images of another size resized with a warning). Every reader returns the same :class:`CIFAR10`, and every
problem is a :class:`DataError` naming the file and the fix (docs/data.md).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from cifarkit.data.dataset import CIFAR10, CLASSES
from cifarkit.data.images import decode_image
from cifarkit.data.safe_pickle import load_pickle
from cifarkit.errors import CifarkitError, DataError
from cifarkit.progress import progress_bar

PYTHON_MD5 = "c58f30108f718f92721af3b95e74349a"
"""MD5 of the official ``cifar-10-python.tar.gz``."""
BINARY_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
"""MD5 of the official ``cifar-10-binary.tar.gz``."""

PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
BINARY_ARCHIVE = "cifar-10-binary.tar.gz"
PYTHON_FOLDER = "cifar-10-batches-py"
BINARY_FOLDER = "cifar-10-batches-bin"

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BINARY_SUFFIX = ".bin"

IMAGE_SIZE = 32
PIXELS_PER_IMAGE = 3 * IMAGE_SIZE * IMAGE_SIZE  # 3072 bytes, as R, G and B planes
BINARY_RECORD = 1 + PIXELS_PER_IMAGE  # one label byte, then the pixels
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})

# Source kinds; each is also part of the cache key.
ARCHIVE = "archive"
PYTHON_BATCHES = "python-batches"
BINARY_BATCHES = "binary-batches"
IMAGE_FOLDERS = "image-folders"

LAYOUTS = (
    f"{PYTHON_ARCHIVE} or {BINARY_ARCHIVE}, an extracted {PYTHON_FOLDER}/ or {BINARY_FOLDER}/ "
    "folder (or a folder containing one), or a folder with train/<class>/*.png and "
    f"test/<class>/*.png for the classes {', '.join(CLASSES)}"
)
OFFICIAL_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"

BatchParser = Callable[[BinaryIO, str], tuple[np.ndarray, np.ndarray]]
BatchOpener = Callable[[str], BinaryIO]


@dataclass(frozen=True)
class Source:
    """A CIFAR-10 source found on disk: its ``kind`` and resolved ``path``."""

    kind: str
    path: Path

    @property
    def inputs(self) -> tuple[Path, ...]:
        """The files and folders whose contents decide what this source decodes to."""
        if self.kind == IMAGE_FOLDERS:
            return (self.path / "train", self.path / "test")
        return (self.path,)


def file_md5(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of the file at ``path``, read in chunks so big archives need little memory."""
    digest = hashlib.md5()
    with path.open("rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def detect_source(path: Path) -> Source:
    """Work out which CIFAR-10 form ``path`` holds; a :class:`DataError` when it is none of them."""
    path = path.expanduser()
    if not path.exists():
        if path.is_symlink():
            raise DataError(f"{path} is a symbolic link to nothing (or to itself): point to {LAYOUTS}.")
        raise DataError(f"{path} does not exist: point to CIFAR-10 data there, as {LAYOUTS}.")
    path = path.resolve()
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return Source(ARCHIVE, path)
        raise DataError(f"{path} is not a CIFAR-10 archive: point to {LAYOUTS}.")
    if not path.is_dir():
        raise DataError(f"{path} is neither a file nor a folder (a device or pipe?): point to {LAYOUTS}.")
    if (path / "data_batch_1").is_file() or path.name == PYTHON_FOLDER:
        return Source(PYTHON_BATCHES, path)
    if (path / f"data_batch_1{BINARY_SUFFIX}").is_file() or path.name == BINARY_FOLDER:
        return Source(BINARY_BATCHES, path)
    if (path / PYTHON_FOLDER).is_dir():
        return Source(PYTHON_BATCHES, path / PYTHON_FOLDER)
    if (path / BINARY_FOLDER).is_dir():
        return Source(BINARY_BATCHES, path / BINARY_FOLDER)
    if (path / "train").is_dir() or (path / "test").is_dir():
        return Source(IMAGE_FOLDERS, path)
    for name in (PYTHON_ARCHIVE, BINARY_ARCHIVE):
        if (path / name).is_file():
            return Source(ARCHIVE, path / name)
    raise DataError(f"{path} holds no CIFAR-10 data I recognise: point to {LAYOUTS}.")


def read_source(source: Source, md5: str | None = None) -> CIFAR10:
    """Decode ``source``; ``md5`` is the expected archive checksum (None: an official one)."""
    if source.kind == ARCHIVE:
        return _read_archive(source.path, md5)
    if source.kind == PYTHON_BATCHES:
        return _read_batch_folder(source.path, _parse_python_batch, "")
    if source.kind == BINARY_BATCHES:
        return _read_batch_folder(source.path, _parse_binary_batch, BINARY_SUFFIX)
    return _read_image_folders(source.path)


# --- batches (python pickles and binary records), from a folder or an archive ---


def _read_batch_folder(folder: Path, parse: BatchParser, suffix: str) -> CIFAR10:
    """Read the five training batches and the test batch from an extracted folder."""

    def open_batch(name: str) -> BinaryIO:
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"{path} is missing: an extracted CIFAR-10 folder needs "
                f"{', '.join(n + suffix for n in (*TRAIN_BATCHES, TEST_BATCH))}. "
                "Extract the whole official archive again."
            )
        return path.open("rb")

    return _read_batches(open_batch, parse, suffix, str(folder))


def _read_batches(open_batch: BatchOpener, parse: BatchParser, suffix: str, label: str) -> CIFAR10:
    """Parse every batch that ``open_batch`` yields and join them into train and test sets."""

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open_batch(name + suffix) as stream:
            return parse(stream, f"{label}/{name}{suffix}")

    train = [read(name) for name in TRAIN_BATCHES]
    x_test, y_test = read(TEST_BATCH)
    x_train, y_train = (np.concatenate(part) for part in zip(*train))
    return CIFAR10(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, source=label)


def _parse_python_batch(stream: BinaryIO, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: a dict with ``data`` (N, 3072) uint8 and ``labels`` (N ints); keys ``str`` or ``bytes``."""
    batch = load_pickle(stream, name)
    if not isinstance(batch, dict):
        raise DataError(
            f"{name} holds a {type(batch).__name__}, not a CIFAR-10 batch dict: "
            f"replace it with the file from the official {PYTHON_ARCHIVE}."
        )
    fields = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    missing = [key for key in ("data", "labels") if key not in fields]
    if missing:
        raise DataError(
            f"{name} has no {' or '.join(missing)} entry: it is not a CIFAR-10 batch; "
            f"replace it with the file from the official {PYTHON_ARCHIVE}."
        )
    data = fields["data"]
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXELS_PER_IMAGE
    ):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{name}: 'data' must be a uint8 array of shape (N, {PIXELS_PER_IMAGE}), found {found}; "
            f"replace the file with the one from the official {PYTHON_ARCHIVE}."
        )
    return _rows_to_images(data), _check_labels(fields["labels"], len(data), name)


def _parse_binary_batch(stream: BinaryIO, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch: records of 1 label byte followed by 3072 pixel bytes."""
    raw = np.frombuffer(stream.read(), dtype=np.uint8)
    if raw.size == 0 or raw.size % BINARY_RECORD:
        raise DataError(
            f"{name} has {raw.size} bytes, not a whole number of {BINARY_RECORD}-byte records "
            f"(1 label byte + {PIXELS_PER_IMAGE} pixel bytes): it is truncated or not a CIFAR-10 "
            f"binary batch. Extract it again from the official {BINARY_ARCHIVE}."
        )
    records = raw.reshape(-1, BINARY_RECORD)
    return _rows_to_images(records[:, 1:]), _check_labels(records[:, 0], len(records), name)


def _rows_to_images(rows: np.ndarray) -> np.ndarray:
    """(N, 3072) rows of R, G, B planes -> contiguous (N, 32, 32, 3) RGB images."""
    planes = rows.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _check_labels(values: object, count: int, name: str) -> np.ndarray:
    """Labels as int64, checked to be ``count`` integers in 0..9."""
    try:
        labels = np.asarray(values)
    except (ValueError, TypeError):  # ragged or otherwise not array-like
        labels = np.asarray(None)
    if labels.shape != (count,) or labels.dtype.kind not in "iu":
        raise DataError(
            f"{name} has labels of type {labels.dtype} and shape {labels.shape} for {count} images; "
            "it needs one integer label per image. Replace it with the official file."
        )
    if count and not (0 <= labels.min() and labels.max() < len(CLASSES)):
        raise DataError(
            f"{name} has labels from {labels.min()} to {labels.max()}; CIFAR-10 labels are "
            f"0..{len(CLASSES) - 1}. Replace it with the official file."
        )
    return labels.astype(np.int64)


def _read_archive(path: Path, md5: str | None) -> CIFAR10:
    """Verify an archive's MD5, then read the batches inside it in one streamed pass, nothing written to disk."""
    _verify_md5(path, md5)
    wanted = {name + suffix for name in (*TRAIN_BATCHES, TEST_BATCH) for suffix in ("", BINARY_SUFFIX)}
    try:
        with tarfile.open(path, "r|*") as tar:
            members = {
                Path(member.name).name: tar.extractfile(member).read()  # type: ignore[union-attr]
                for member in tar
                if member.isfile() and Path(member.name).name in wanted
            }
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{path} is not a readable tar archive ({exc}): delete it and download it again from {OFFICIAL_PAGE}."
        ) from exc
    if "data_batch_1" in members:
        parse, suffix = _parse_python_batch, ""
    elif f"data_batch_1{BINARY_SUFFIX}" in members:
        parse, suffix = _parse_binary_batch, BINARY_SUFFIX
    else:
        raise DataError(
            f"{path} holds neither {PYTHON_FOLDER}/ nor {BINARY_FOLDER}/ batches: it is not a "
            f"CIFAR-10 archive. Download {PYTHON_ARCHIVE} from {OFFICIAL_PAGE}."
        )

    def open_member(name: str) -> BinaryIO:
        if name not in members:
            raise DataError(
                f"{path} lacks {name}: the archive is incomplete. Delete it and download it again from {OFFICIAL_PAGE}."
            )
        return io.BytesIO(members[name])

    return _read_batches(open_member, parse, suffix, str(path))


def _verify_md5(path: Path, md5: str | None) -> None:
    """Check an archive against ``md5``, or either official checksum; a re-packed one is told to extract it."""
    expected = (md5.lower(),) if md5 else (PYTHON_MD5, BINARY_MD5)
    digest = file_md5(path)
    if digest in expected:
        return
    mismatch = f"{path} has MD5 {digest}, expected {' or '.join(expected)}"
    if md5 is None:
        folder = _batches_folder_in(path)
        if folder is not None:
            extracted = path.parent / folder if folder else path.parent
            flags = "xzf" if path.name.endswith((".gz", ".tgz")) else "xf"
            raise DataError(
                f"{mismatch}: it is not the official CIFAR-10 archive (re-packed?), though it holds the CIFAR-10 "
                f"batches, and only the official archive is read as it is. Extract it (tar {flags} {path} -C "
                f"{path.parent}) and pass --data {extracted}, or download the official archive from {OFFICIAL_PAGE}."
            )
    raise DataError(
        f"{mismatch}: the archive is incomplete or corrupt. Delete it and download it again from {OFFICIAL_PAGE}."
    )


def _batches_folder_in(path: Path) -> str | None:
    """The folder in the tar ``path`` that holds all six python or binary batches ("" for the top), else None."""
    folders: dict[str, set[str]] = {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if member.isfile():
                    name = Path(member.name)
                    folders.setdefault(name.parent.as_posix(), set()).add(name.name)
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        return None
    for suffix in ("", BINARY_SUFFIX):
        wanted = {name + suffix for name in (*TRAIN_BATCHES, TEST_BATCH)}
        for folder, names in sorted(folders.items()):
            if wanted <= names:
                return "" if folder == "." else folder
    return None


# --- class-folder trees of PNG/JPEG files ---


def _read_image_folders(root: Path) -> CIFAR10:
    """Decode ``root/train/<class>/*`` and ``root/test/<class>/*``, both listed and checked before any is decoded."""
    (train_files, y_train), (test_files, y_test) = (_list_split(root / split) for split in ("train", "test"))
    x_train, x_test = _decode_images(train_files, "train"), _decode_images(test_files, "test")
    return CIFAR10(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, source=str(root))


def _list_split(split_dir: Path) -> tuple[list[Path], np.ndarray]:
    """The image files of one split, ordered by class then file name, with their labels."""
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(_class_folders(split_dir)):
        class_files = _list_images(class_dir)
        files += class_files
        labels += [label] * len(class_files)
    return files, np.asarray(labels, dtype=np.int64)


def _class_folders(split_dir: Path) -> list[Path]:
    """The split's class folders in label order (alphabetical); each missing or unknown one is a DataError."""
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir} is missing: a class-folder tree needs train/<class>/ and test/<class>/ "
            f"with one folder per class ({', '.join(CLASSES)}). Add it."
        )
    found = {e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")}
    unexpected = sorted(found - set(CLASSES))
    if unexpected:
        raise DataError(
            f"{split_dir / unexpected[0]} is not a CIFAR-10 class folder: class folders must be "
            f"named {', '.join(CLASSES)}. Rename or remove it."
        )
    missing = sorted(set(CLASSES) - found)
    if missing:
        raise DataError(
            f"{split_dir / missing[0]} is missing: every split needs one folder per class "
            f"({', '.join(CLASSES)}). Add that folder with the class's images."
        )
    return [split_dir / name for name in sorted(found)]


def _list_images(class_dir: Path) -> list[Path]:
    """The class folder's image files, sorted by name (hidden files skipped); a stray file or none is a DataError."""
    names = sorted(entry.name for entry in os.scandir(class_dir) if not entry.name.startswith("."))
    strays = [name for name in names if Path(name).suffix.lower() not in IMAGE_SUFFIXES]
    if strays:
        raise DataError(
            f"{class_dir / strays[0]} is not a .png or .jpg image: class folders may hold only images. Move it out."
        )
    if not names:
        raise DataError(f"{class_dir} holds no images: add the class's .png or .jpg files.")
    return [class_dir / name for name in names]


def _decode_images(files: list[Path], split: str) -> np.ndarray:
    """Decode ``files`` into one (N, 32, 32, 3) array, one after another, warning of each image it resized.

    On one thread: Pillow holds the GIL for most of a 32x32 PNG's 0.1 ms (opening, checks, conversion), so
    decoding threads mostly wait for each other; two on 2 cores ran at 0.54x the speed of one here
    (``benchmarks/decode.py``, benchmarks/results/issue25/decode_threads.json).
    """
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    with progress_bar(files, desc=f"decoding {split} images", unit="img") as progress:
        for index, path in enumerate(progress):
            images[index], size = _decode_image(path)
            if size != (IMAGE_SIZE, IMAGE_SIZE):
                width, height = size
                warnings.warn(f"{path} is {width}x{height}, not 32x32: resized it to 32x32", stacklevel=2)
    return images


def _decode_image(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one image as 32x32 RGB (as :func:`decode_image` does); also return its original (width, height).

    An image of another size is resized (bicubic) rather than rejected, so a folder of 64x64 images still loads.
    """
    try:
        rgb = decode_image(path)
    except CifarkitError as exc:
        raise DataError(str(exc)) from exc
    size = rgb.size
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8), size
