"""The decoded-array cache: hit on an unchanged source, rebuilt when it changes or is corrupt."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.data import CIFAR10, cache, default_cache_dir, load_cifar10, loader
from cifarkit.errors import DataError
from data_factories import assert_same_data, make_dataset, write_archive, write_image_folders, write_python_batches


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIFARKIT_DATA", raising=False)
    monkeypatch.delenv("CIFARKIT_CACHE", raising=False)


@pytest.fixture
def data() -> CIFAR10:
    return make_dataset()


@pytest.fixture
def tree(data: CIFAR10, tmp_path: Path) -> Path:
    return write_image_folders(data, tmp_path / "tree")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


class DecodeCounter:
    """Wraps loader.read_source to count how often the source is really decoded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._read = loader.read_source
        monkeypatch.setattr(loader, "read_source", self)

    def __call__(self, *args: object, **kwargs: object) -> CIFAR10:
        self.calls += 1
        return self._read(*args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> DecodeCounter:
    return DecodeCounter(monkeypatch)


def _cache_files(cache_dir: Path) -> list[Path]:
    """Every file under the cache's decoded/ folder."""
    return sorted(path for path in (cache_dir / cache.DECODED_SUBDIR).rglob("*") if path.is_file())


def _cached_array(cache_dir: Path, name: str) -> Path:
    [path] = [path for path in _cache_files(cache_dir) if path.name.endswith(f"-{name}.npy")]
    return path


def test_second_load_reads_the_cache(tree: Path, data: CIFAR10, cache_dir: Path, decodes: DecodeCounter) -> None:
    first = load_cifar10(tree, cache_dir=cache_dir)
    files = _cache_files(cache_dir)
    assert [path.name.split("-", 1)[1] for path in files] == ["x_test.npy", "x_train.npy", "y_test.npy", "y_train.npy"]
    assert len({path.parent for path in files}) == 1 and files[0].parent.name.startswith("image-folders-")
    np.testing.assert_array_equal(np.load(_cached_array(cache_dir, "x_train")), data.x_train)  # plain .npy
    second = load_cifar10(tree, cache_dir=cache_dir)
    assert decodes.calls == 1
    assert_same_data(second, data)
    assert second.source == first.source == str(tree.resolve())


def test_cache_dir_comes_from_the_environment(tree: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARKIT_CACHE", str(cache_dir))
    load_cifar10(tree)
    assert len(_cache_files(cache_dir)) == 4


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "cifarkit"
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"


def test_changed_image_rebuilds_the_cache(tree: Path, cache_dir: Path, decodes: DecodeCounter) -> None:
    load_cifar10(tree, cache_dir=cache_dir)
    image = tree / "test" / "bird" / "00002.png"
    Image.new("RGB", (32, 32), (9, 8, 7)).save(image)
    os.utime(image, ns=(1, 1_000_000_000))  # a different mtime, whatever the clock's resolution
    reloaded = load_cifar10(tree, cache_dir=cache_dir)
    assert decodes.calls == 2
    assert reloaded.x_test[2, 0, 0].tolist() == [9, 8, 7]
    assert len(_cache_files(cache_dir)) == 4  # the stale files were deleted


def test_added_image_rebuilds_the_cache(tree: Path, cache_dir: Path, decodes: DecodeCounter) -> None:
    load_cifar10(tree, cache_dir=cache_dir)
    Image.new("RGB", (32, 32)).save(tree / "train" / "truck" / "zzz.png")
    assert len(load_cifar10(tree, cache_dir=cache_dir).x_train) == 21
    assert decodes.calls == 2


def test_changed_archive_rebuilds_the_cache(
    data: CIFAR10, tmp_path: Path, cache_dir: Path, decodes: DecodeCounter
) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = write_archive(write_python_batches(data, tmp_path / "a" / "cifar-10-batches-py"), archive)
    load_cifar10(archive, cache_dir=cache_dir, md5=md5)
    load_cifar10(archive, cache_dir=cache_dir, md5=md5)
    assert decodes.calls == 1
    other = make_dataset(seed=1)
    md5 = write_archive(write_python_batches(other, tmp_path / "b" / "cifar-10-batches-py"), archive)
    assert_same_data(load_cifar10(archive, cache_dir=cache_dir, md5=md5), other)
    assert decodes.calls == 2


def test_each_source_has_its_own_cache(data: CIFAR10, tmp_path: Path, cache_dir: Path) -> None:
    other = make_dataset(seed=1)
    first = write_image_folders(data, tmp_path / "one")
    second = write_image_folders(other, tmp_path / "two")
    load_cifar10(first, cache_dir=cache_dir)
    load_cifar10(second, cache_dir=cache_dir)
    assert_same_data(load_cifar10(first, cache_dir=cache_dir), data)
    assert_same_data(load_cifar10(second, cache_dir=cache_dir), other)
    assert len({path.parent for path in _cache_files(cache_dir)}) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "missing"])
def test_corrupt_cache_is_rebuilt(
    tree: Path, data: CIFAR10, cache_dir: Path, decodes: DecodeCounter, damage: str
) -> None:
    load_cifar10(tree, cache_dir=cache_dir)
    cached = _cached_array(cache_dir, "x_test")
    content = cached.read_bytes()
    if damage == "missing":
        cached.unlink()
    else:
        cached.write_bytes({"garbage": b"not an array" * 100, "truncated": content[:-100], "empty": b""}[damage])
    assert_same_data(load_cifar10(tree, cache_dir=cache_dir), data)
    assert decodes.calls == 2
    assert_same_data(load_cifar10(tree, cache_dir=cache_dir), data)  # and the rebuilt file is good
    assert decodes.calls == 2


def test_malformed_cache_is_rebuilt(tree: Path, data: CIFAR10, cache_dir: Path, decodes: DecodeCounter) -> None:
    load_cifar10(tree, cache_dir=cache_dir)
    cached = _cached_array(cache_dir, "y_train")
    np.save(cached, np.load(cached)[:-1])  # one label short, under the right fingerprint
    assert_same_data(load_cifar10(tree, cache_dir=cache_dir), data)
    assert decodes.calls == 2


def test_cache_write_is_atomic(tree: Path, data: CIFAR10, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_cifar10(tree, cache_dir=cache_dir)
    before = {path: path.read_bytes() for path in _cache_files(cache_dir)}
    Image.new("RGB", (32, 32)).save(tree / "train" / "truck" / "zzz.png")

    def fail_midway(stream: object, array: np.ndarray, allow_pickle: bool) -> None:
        stream.write(b"half a file")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(cache.np, "save", fail_midway)
    with pytest.warns(UserWarning, match="could not write the CIFAR-10 cache .*disk full.*CIFARKIT_CACHE"):
        assert len(load_cifar10(tree, cache_dir=cache_dir).x_train) == 21
    assert {path: path.read_bytes() for path in _cache_files(cache_dir)} == before  # no temp file, no half file


def test_unwritable_cache_still_loads(tree: Path, data: CIFAR10, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the CIFAR-10 cache"):
        assert_same_data(load_cifar10(tree, cache_dir=blocker), data)


def test_errors_are_not_cached(tree: Path, cache_dir: Path) -> None:
    bad = tree / "train" / "cat" / "00006.png"
    good = bad.read_bytes()
    bad.write_bytes(b"broken")
    with pytest.raises(DataError):
        load_cifar10(tree, cache_dir=cache_dir)
    bad.write_bytes(good)
    assert load_cifar10(tree, cache_dir=cache_dir).x_train.shape == (20, 32, 32, 3)
