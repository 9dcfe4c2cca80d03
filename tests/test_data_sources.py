"""Every CIFAR-10 layout decodes to the same arrays; every malformed one is a clear DataError."""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.data import CIFAR10, CLASSES, load_cifar10, sources
from cifarkit.errors import DataError
from data_factories import (
    assert_same_data,
    make_dataset,
    python_batch_bytes,
    write_archive,
    write_binary_batches,
    write_image_folders,
    write_python_batches,
)

pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture
def data() -> CIFAR10:
    return make_dataset()


def _load(path: Path, **kwargs: object) -> CIFAR10:
    return load_cifar10(path, download=False, **kwargs)  # type: ignore[arg-type]


def _python_dir(data: CIFAR10, tmp_path: Path) -> Path:
    return write_python_batches(data, tmp_path / "cifar-10-batches-py")


def _binary_dir(data: CIFAR10, tmp_path: Path) -> Path:
    return write_binary_batches(data, tmp_path / "cifar-10-batches-bin")


# --- every layout loads to the same arrays ---


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_python_batches_folder(data: CIFAR10, tmp_path: Path, style: str) -> None:
    folder = write_python_batches(data, tmp_path / "cifar-10-batches-py", style)
    loaded = _load(folder)
    assert_same_data(loaded, data)
    assert loaded.source == str(folder.resolve())
    assert loaded.classes == CLASSES


def test_folder_containing_python_batches(data: CIFAR10, tmp_path: Path) -> None:
    folder = _python_dir(data, tmp_path / "parent")
    assert_same_data(_load(tmp_path / "parent"), data)
    assert _load(tmp_path / "parent").source == str(folder.resolve())


def test_python_archive_with_md5_override(data: CIFAR10, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = write_archive(_python_dir(data, tmp_path / "build"), archive)
    loaded = _load(archive, md5=md5)
    assert_same_data(loaded, data)
    assert loaded.source == str(archive.resolve())


def test_binary_batches_folder_and_its_parent(data: CIFAR10, tmp_path: Path) -> None:
    folder = _binary_dir(data, tmp_path / "parent")
    assert_same_data(_load(folder), data)
    assert_same_data(_load(tmp_path / "parent"), data)


def test_binary_archive(data: CIFAR10, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-binary.tar.gz"
    md5 = write_archive(_binary_dir(data, tmp_path / "build"), archive)
    assert_same_data(_load(archive, md5=md5), data)


def test_folder_containing_an_archive(data: CIFAR10, tmp_path: Path) -> None:
    (tmp_path / "dl").mkdir()
    md5 = write_archive(_python_dir(data, tmp_path / "build"), tmp_path / "dl" / "cifar-10-python.tar.gz")
    assert_same_data(_load(tmp_path / "dl", md5=md5), data)


def test_binary_record_layout(tmp_path: Path) -> None:
    """1 label byte, then the red, green and blue 32x32 planes, for each image."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    record = np.zeros(3073, dtype=np.uint8)
    record[0] = 7
    record[1:1025] = 10  # red plane
    record[1025:2049] = 20  # green plane
    record[2049 + 32] = 99  # blue, row 1, column 0
    for name in (*sources.TRAIN_BATCHES, sources.TEST_BATCH):
        (folder / f"{name}.bin").write_bytes(record.tobytes())
    loaded = _load(folder)
    assert loaded.y_train.tolist() == [7] * 5 and loaded.y_test.tolist() == [7]
    assert loaded.x_test[0, 0, 0].tolist() == [10, 20, 0]
    assert loaded.x_test[0, 1, 0].tolist() == [10, 20, 99]


def test_image_folders(data: CIFAR10, tmp_path: Path) -> None:
    root = write_image_folders(data, tmp_path / "tree")
    loaded = _load(root)
    assert_same_data(loaded, data)
    assert loaded.source == str(root.resolve())


def test_jpeg_image_folders(data: CIFAR10, tmp_path: Path) -> None:
    loaded = _load(write_image_folders(data, tmp_path / "tree", suffix=".jpg"))
    np.testing.assert_array_equal(loaded.y_train, data.y_train)
    assert loaded.x_train.shape == data.x_train.shape and loaded.x_train.dtype == np.uint8


def test_images_sort_by_class_then_file_name(tmp_path: Path) -> None:
    root = write_image_folders(make_dataset(), tmp_path / "tree")
    frog = root / "train" / "frog"
    for image in frog.iterdir():
        image.unlink()
    for value, name in [(3, "b.png"), (2, "a.png"), (1, "9.png"), (0, "10.png")]:  # created out of order
        Image.new("RGB", (32, 32), (value, value, value)).save(frog / name)
    loaded = _load(root)
    frogs = loaded.x_train[loaded.y_train == CLASSES.index("frog")]
    assert frogs[:, 0, 0, 0].tolist() == [0, 1, 2, 3]  # "10" < "9" < "a" < "b"
    assert loaded.y_train.tolist() == sorted(loaded.y_train.tolist())


def test_modes_are_converted_to_rgb(tmp_path: Path) -> None:
    root = write_image_folders(make_dataset(), tmp_path / "tree")
    cat = root / "test" / "cat" / "00003.png"
    Image.new("L", (32, 32), 77).save(cat)
    dog = root / "test" / "dog" / "00005.png"
    Image.new("RGBA", (32, 32), (1, 2, 3, 0)).save(dog)
    loaded = _load(root)
    assert loaded.x_test[3, 5, 5].tolist() == [77, 77, 77]
    assert loaded.x_test[5, 5, 5].tolist() == [255, 255, 255]  # transparent -> white, as predict reads it


def test_wrong_size_image_is_resized_with_a_warning(tmp_path: Path) -> None:
    root = write_image_folders(make_dataset(), tmp_path / "tree")
    big = root / "train" / "ship" / "00016.png"
    Image.new("RGB", (64, 48), (200, 100, 50)).save(big)
    with pytest.warns(UserWarning, match=re.escape(f"{big.resolve()} is 64x48, not 32x32")):
        loaded = _load(root)
    assert loaded.x_train.shape == (20, 32, 32, 3)
    assert (loaded.x_train[16] == [200, 100, 50]).all()


def test_hidden_files_are_ignored(data: CIFAR10, tmp_path: Path) -> None:
    root = write_image_folders(data, tmp_path / "tree")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0junk")
    (root / "test" / ".cache").mkdir()
    assert_same_data(_load(root), data)


# --- detection errors ---


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'nope'))} does not exist.*cifar-10-python"):
        _load(tmp_path / "nope")


def test_unrecognised_layouts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no CIFAR-10 data.*train/<class>"):
        _load(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="notes.txt is not a CIFAR-10 archive"):
        _load(tmp_path / "notes.txt")


# --- archives ---


def test_archive_must_match_the_official_md5_by_default(data: CIFAR10, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = write_archive(_python_dir(data, tmp_path / "build"), archive)
    expected = f"{sources.PYTHON_MD5} or {sources.BINARY_MD5}"
    with pytest.raises(DataError, match=f"has MD5 {md5}, expected {expected}.*download"):
        _load(archive)


def test_archive_with_wrong_md5(data: CIFAR10, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_archive(_python_dir(data, tmp_path / "build"), archive)
    with pytest.raises(DataError, match="expected 0123456789abcdef0123456789abcdef: the archive is incomplete"):
        _load(archive, md5="0123456789abcdef0123456789abcdef")


def test_truncated_archive(data: CIFAR10, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_archive(_python_dir(data, tmp_path / "build"), archive)
    archive.write_bytes(archive.read_bytes()[:300])
    md5 = sources.file_md5(archive)
    with pytest.raises(DataError, match="is not a readable tar archive.*download it again"):
        _load(archive, md5=md5)


def test_archive_without_batches(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme").write_text("hello")
    md5 = write_archive(tmp_path / "stuff", tmp_path / "stuff.tar.gz")
    with pytest.raises(DataError, match="holds neither cifar-10-batches-py/ nor cifar-10-batches-bin/"):
        _load(tmp_path / "stuff.tar.gz", md5=md5)


def test_archive_missing_a_batch(data: CIFAR10, tmp_path: Path) -> None:
    folder = _python_dir(data, tmp_path / "build")
    (folder / "test_batch").unlink()
    md5 = write_archive(folder, tmp_path / "cut.tar.gz")
    with pytest.raises(DataError, match="cut.tar.gz lacks test_batch"):
        _load(tmp_path / "cut.tar.gz", md5=md5)


def test_malicious_batch_inside_an_archive(data: CIFAR10, tmp_path: Path) -> None:
    folder = _python_dir(data, tmp_path / "build")
    marker = tmp_path / "pwned"
    (folder / "data_batch_4").write_bytes(pickle.dumps({"data": _Evil(str(marker))}))
    md5 = write_archive(folder, tmp_path / "evil.tar.gz")
    with pytest.raises(DataError, match="data_batch_4 is not a valid CIFAR-10 python batch.*refused"):
        _load(tmp_path / "evil.tar.gz", md5=md5)
    assert not marker.exists()


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


# --- extracted batch folders: structure checks ---


def test_missing_batch_file(data: CIFAR10, tmp_path: Path) -> None:
    folder = _python_dir(data, tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3 is missing.*Extract the whole official archive again"):
        _load(folder)


def test_malicious_batch_file_never_runs(data: CIFAR10, tmp_path: Path) -> None:
    folder = _python_dir(data, tmp_path)
    marker = tmp_path / "pwned"
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": _Evil(str(marker))}, protocol=4))
    with pytest.raises(DataError, match=re.escape(str(folder / "data_batch_2")) + ".*refused"):
        _load(folder)
    assert not marker.exists()


def _replace_batch(folder: Path, name: str, batch: object) -> None:
    (folder / name).write_bytes(pickle.dumps(batch, protocol=4))


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([1, 2, 3], "holds a list, not a CIFAR-10 batch dict"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "has no labels entry"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, r"shape \(1,\) for 2 images"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 10]}, "labels from 1 to 10; CIFAR-10 labels are 0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, "labels from -1 to 0"),
        ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [1, 2]}, r"shape \(N, 3072\), found uint8 \(2, 3071\)"),
        ({b"data": np.zeros((2, 3072), np.int64), b"labels": [1, 2]}, "found int64"),
        ({"data": b"\0" * 3072, "labels": [1]}, "found bytes"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": ["cat"]}, "needs one integer label per image"),
    ],
)
def test_malformed_python_batch(data: CIFAR10, tmp_path: Path, batch: object, message: str) -> None:
    folder = _python_dir(data, tmp_path)
    _replace_batch(folder, "data_batch_5", batch)
    with pytest.raises(DataError, match=re.escape(str(folder / "data_batch_5")) + ".*" + message):
        _load(folder)


def test_small_python_batches_need_not_have_official_counts(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    one = np.full((1, 32, 32, 3), 5, np.uint8)
    for name in (*sources.TRAIN_BATCHES, sources.TEST_BATCH):
        (folder / name).write_bytes(python_batch_bytes(one, np.array([9]), name))
    loaded = _load(folder)
    assert loaded.x_train.shape == (5, 32, 32, 3) and loaded.y_test.tolist() == [9]


def test_truncated_binary_batch(data: CIFAR10, tmp_path: Path) -> None:
    folder = _binary_dir(data, tmp_path)
    batch = folder / "data_batch_1.bin"
    batch.write_bytes(batch.read_bytes()[:-1])
    with pytest.raises(DataError, match=re.escape(str(batch)) + r" has \d+ bytes, not a whole number of 3073-byte"):
        _load(folder)


def test_binary_label_out_of_range(data: CIFAR10, tmp_path: Path) -> None:
    folder = _binary_dir(data, tmp_path)
    batch = folder / "test_batch.bin"
    raw = bytearray(batch.read_bytes())
    raw[3073] = 12  # label of the second record
    batch.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="test_batch.bin has labels from 0 to 12"):
        _load(folder)


# --- class-folder trees: layout and file checks ---


@pytest.fixture
def tree(data: CIFAR10, tmp_path: Path) -> Path:
    return write_image_folders(data, tmp_path / "tree")


def test_class_folder_missing_from_test(tree: Path) -> None:
    shutil.rmtree(tree / "test" / "horse")
    missing = re.escape(str(tree.resolve() / "test" / "horse"))
    with pytest.raises(DataError, match=missing + " is missing.*Add that folder"):
        _load(tree)


def test_empty_class_folder(tree: Path) -> None:
    shutil.rmtree(tree / "test" / "horse")
    (tree / "test" / "horse").mkdir()
    with pytest.raises(DataError, match="horse holds no images"):
        _load(tree)


def test_missing_split(tree: Path) -> None:
    shutil.rmtree(tree / "test")
    with pytest.raises(DataError, match=re.escape(str(tree.resolve() / "test")) + " is missing: a class-folder tree"):
        _load(tree)


def test_unexpected_class_folder(tree: Path) -> None:
    (tree / "train" / "unicorn").mkdir()
    with pytest.raises(DataError, match="unicorn is not a CIFAR-10 class folder.*Rename or remove it"):
        _load(tree)


def test_non_image_file(tree: Path) -> None:
    (tree / "train" / "cat" / "notes.txt").write_text("cats")
    with pytest.raises(DataError, match=r"cat/notes.txt is not a .png or .jpg image.*Move it out"):
        _load(tree)


def test_corrupt_image(tree: Path) -> None:
    bad = tree / "train" / "deer" / "00009.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=re.escape(str(bad.resolve())) + " is not a readable image.*replace it"):
        _load(tree)


def test_truncated_image(tree: Path) -> None:
    bad = tree / "test" / "truck" / "00009.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError, match="00009.png is not a readable image"):
        _load(tree)
