"""The real CIFAR-10 class-folder tree at $CIFARKIT_DATA (skipped when it is unset).

The tree is the session's (tests/conftest.py loads it once, through $CIFARKIT_CACHE): with an empty cache (say
CIFARKIT_CACHE=$(mktemp -d)) that load decodes its 60,000 PNGs and this test checks what they decoded to; with a
filled one, what the cache kept of a decode (.ci/run decodes the tree into an empty cache before its suites).
Decoding the tree a second time here would cost 9 s of every suite and prove nothing more.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cifarkit.data import CIFAR10, CLASSES, load_cifar10, loader

pytestmark = pytest.mark.skipif(not os.environ.get("CIFARKIT_DATA"), reason="CIFARKIT_DATA is not set")

FROG = "leptodactylus_pentadactylus_s_000004.png"


def test_real_folder_tree(real_cifar10: CIFAR10, real_data_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root, data = Path(real_data_path), real_cifar10

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
    again = load_cifar10(root)
    print(f"second load from the cache: {time.perf_counter() - started:.3f} s")
    assert (again.x_train == data.x_train).all() and (again.y_test == data.y_test).all()
