"""Where load_cifar10 looks: argument, CIFARKIT_DATA, the cache folder's archive, a download."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifarkit.data import CIFAR10, load_cifar10, loader
from cifarkit.data.sources import PYTHON_MD5
from cifarkit.errors import DataError
from data_factories import assert_same_data, make_dataset, python_archive, write_image_folders


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear the environment, and fail any test that would download."""
    monkeypatch.delenv("CIFARKIT_DATA", raising=False)
    monkeypatch.delenv("CIFARKIT_CACHE", raising=False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(loader, "download_file", refuse)


@pytest.fixture
def data() -> CIFAR10:
    return make_dataset()


def test_path_argument(data: CIFAR10, tmp_path: Path) -> None:
    assert_same_data(load_cifar10(write_image_folders(data, tmp_path / "tree"), cache_dir=tmp_path / "c"), data)


def test_environment_variable(data: CIFAR10, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_image_folders(data, tmp_path / "tree")
    monkeypatch.setenv("CIFARKIT_DATA", str(root))
    loaded = load_cifar10(cache_dir=tmp_path / "c")
    assert_same_data(loaded, data)
    assert loaded.source == str(root.resolve())


def test_path_argument_beats_the_environment(data: CIFAR10, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARKIT_DATA", str(write_image_folders(make_dataset(seed=1), tmp_path / "other")))
    assert_same_data(load_cifar10(write_image_folders(data, tmp_path / "tree"), cache_dir=tmp_path / "c"), data)


def test_environment_variable_to_a_missing_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARKIT_DATA", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"CIFARKIT_DATA=.*gone does not exist: set it to CIFAR-10 data .*or unset it"):
        load_cifar10(cache_dir=tmp_path / "c")


def test_archive_in_the_cache_dir_argument(data: CIFAR10, tmp_path: Path) -> None:
    archive, md5 = python_archive(data, tmp_path / "cache")
    loaded = load_cifar10(cache_dir=tmp_path / "cache", md5=md5)
    assert_same_data(loaded, data)
    assert loaded.source == str(archive.resolve())


def test_archive_in_the_cache_dir_from_the_environment(
    data: CIFAR10, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, md5 = python_archive(data, tmp_path / "cache")
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "cache"))
    assert_same_data(load_cifar10(md5=md5), data)
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "empty"))
    assert_same_data(load_cifar10(cache_dir=tmp_path / "cache", md5=md5), data)  # the argument wins


def test_nothing_found_and_no_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_cifar10(cache_dir=tmp_path / "cache", download=False)
    message = str(caught.value)
    assert "downloading is off" in message
    assert "CIFARKIT_DATA" in message and "--data" in message
    assert str(tmp_path / "cache" / "cifar-10-python.tar.gz") in message


def test_nothing_found_downloads_to_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url: str, dest: Path, md5: str) -> Path:
        calls.append((url, dest, md5))
        raise DataError("offline")

    monkeypatch.setattr(loader, "download_file", offline)
    with pytest.raises(DataError, match="offline"):
        load_cifar10(cache_dir=tmp_path / "cache", url="http://example.invalid/a.tar.gz")
    assert PYTHON_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert calls == [("http://example.invalid/a.tar.gz", tmp_path / "cache" / "cifar-10-python.tar.gz", PYTHON_MD5)]
