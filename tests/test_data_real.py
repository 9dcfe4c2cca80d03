"""The real CIFAR-10 class-folder tree at $CIFARKIT_DATA (skipped when it is unset).

Run with, e.g., CIFARKIT_DATA=/work/shared/data/cifar10 CIFARKIT_CACHE=$(mktemp -d).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cifarkit.data import CLASSES, load_cifar10, loader

pytestmark = pytest.mark.skipif(not os.environ.get("CIFARKIT_DATA"), reason="CIFARKIT_DATA is not set")

FROG = "leptodactylus_pentadactylus_s_000004.png"


def test_real_folder_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(os.environ["CIFARKIT_DATA"])
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path))  # never the user's cache
    data = load_cifar10()

    assert data.x_train.shape == (50_000, 32, 32, 3) and data.x_test.shape == (10_000, 32, 32, 3)
    assert data.y_train.shape == (50_000,) and data.y_test.shape == (10_000,)
    assert data.class_counts("train") == {name: 5_000 for name in CLASSES}
    assert data.class_counts("test") == {name: 1_000 for name in CLASSES}

    frogs = sorted(os.listdir(root / "train" / "frog"))
    index = sum(data.class_counts("train")[name] for name in CLASSES[: CLASSES.index("frog")]) + frogs.index(FROG)
    assert data.y_train[index] == CLASSES.index("frog")
    assert data.x_train[index, 0, :3].tolist() == [[59, 62, 63], [43, 46, 45], [50, 48, 43]]

    monkeypatch.setattr(loader, "read_source", lambda *args: pytest.fail("decoded again instead of using the cache"))
    started = time.perf_counter()
    again = load_cifar10()
    print(f"second load from the cache: {time.perf_counter() - started:.3f} s")
    assert (again.x_train == data.x_train).all() and (again.y_test == data.y_test).all()
