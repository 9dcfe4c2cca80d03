"""Tiny synthetic CIFAR-10 data sets, written in each of the formats cifarkit reads.

Images are random but sorted by label, and their file names sort in image
order, so every format decodes to exactly the arrays of :func:`make_dataset`.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from cifarkit.data.dataset import CIFAR10, CLASSES

TRAIN_PER_CLASS = 2
TEST_PER_CLASS = 1
_RECONSTRUCT = np.ndarray((0,), dtype=np.uint8).__reduce__()[0]


def make_dataset(seed: int = 0) -> CIFAR10:
    """20 training and 10 test images of random pixels, sorted by label."""
    rng = np.random.default_rng(seed)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), per_class)
        return rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels

    x_train, y_train = split(TRAIN_PER_CLASS)
    x_test, y_test = split(TEST_PER_CLASS)
    return CIFAR10(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def to_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) images -> (N, 3072) rows of R, G and B planes, as CIFAR-10 stores them."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _batches(data: CIFAR10) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, images, labels) of the five training batches and the test batch."""
    parts = zip(np.array_split(data.x_train, 5), np.array_split(data.y_train, 5))
    named = [(f"data_batch_{i}", x, y) for i, (x, y) in enumerate(parts, start=1)]
    return named + [("test_batch", data.x_test, data.y_test)]


class Python2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles like Python 2's cPickle did for the official batches.

    Byte strings become Python 2 ``str`` opcodes (so they load as ``str`` with
    encoding="latin1", array data included) and numpy's reconstruct function is
    named ``numpy.core.multiarray._reconstruct``, as numpy 1.x named it.
    """

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, data: bytes) -> None:
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(data)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def python_batch_bytes(images: np.ndarray, labels: np.ndarray, name: str, style: str = "py2") -> bytes:
    """One python batch: ``py2`` mimics the official files, ``py3`` is protocol 4 with bytes keys."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": to_rows(images),
        b"filenames": [f"{i:05d}.png".encode() for i in range(len(labels))],
    }
    if style == "py3":
        return pickle.dumps(batch, protocol=4)
    stream = io.BytesIO()
    Python2StylePickler(stream, protocol=2).dump(batch)
    return stream.getvalue()


def binary_batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """One binary batch: per image, 1 label byte then 3072 bytes of R, G and B planes."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], to_rows(images)], axis=1)
    return records.tobytes()


def write_python_batches(data: CIFAR10, folder: Path, style: str = "py2") -> Path:
    """Write ``folder`` as an extracted cifar-10-batches-py/ folder."""
    folder.mkdir(parents=True)
    for name, x, y in _batches(data):
        (folder / name).write_bytes(python_batch_bytes(x, y, name, style))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}))
    return folder


def write_binary_batches(data: CIFAR10, folder: Path) -> Path:
    """Write ``folder`` as an extracted cifar-10-batches-bin/ folder."""
    folder.mkdir(parents=True)
    for name, x, y in _batches(data):
        (folder / f"{name}.bin").write_bytes(binary_batch_bytes(x, y))
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
    return folder


def write_archive(folder: Path, archive: Path) -> str:
    """Pack ``folder`` (kept under its own name) into a .tar.gz; return the archive's MD5."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return hashlib.md5(archive.read_bytes()).hexdigest()


def write_image_folders(data: CIFAR10, root: Path, suffix: str = ".png") -> Path:
    """Write ``root/{train,test}/<class>/<index>.png``; file names sort in image order."""
    for split, images, labels in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:05d}{suffix}")
    return root


def python_archive(data: CIFAR10, workdir: Path) -> tuple[Path, str]:
    """A cifar-10-python.tar.gz of ``data`` in ``workdir``, and its MD5."""
    folder = write_python_batches(data, workdir / "build" / "cifar-10-batches-py")
    archive = workdir / "cifar-10-python.tar.gz"
    return archive, write_archive(folder, archive)


def assert_same_data(loaded: CIFAR10, expected: CIFAR10) -> None:
    """Fail unless ``loaded`` holds exactly the arrays of ``expected``, with the right dtypes."""
    for name in ("x_train", "y_train", "x_test", "y_test"):
        got, want = getattr(loaded, name), getattr(expected, name)
        assert got.dtype == want.dtype, (name, got.dtype)
        np.testing.assert_array_equal(got, want, err_msg=name)
