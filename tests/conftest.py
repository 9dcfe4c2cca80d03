"""Shared fixtures: a tiny learnable synthetic data set, an isolated data environment, thread limits."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarkit.data.dataset import CIFAR10

# The fixed thread count of every test that compares runs bit for bit: only a fixed count repeats a run exactly.
THREADS = min(2, os.cpu_count() or 1)
torch.set_num_threads(THREADS)


def _freeze_survivors(phase: str, info: dict) -> None:
    """After each full garbage collection, exempt what survived it from the next ones (``gc.freeze``).

    The suite's process holds millions of long-lived objects (torch, matplotlib, the collected tests) that every
    full collection walked again, seconds of every suite. A frozen object that later becomes garbage in a
    reference cycle stays in memory until the process ends, so the suite's peak memory grows a little.
    """
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


gc.callbacks.append(_freeze_survivors)


def synthetic_cifar(n_train: int = 300, n_test: int = 100, seed: int = 0) -> CIFAR10:
    """Images whose class is written in their colour: class c adds 24*c to the red channel.

    Any working classifier learns this within an epoch or two, so tests can
    assert learning, not just running.
    """
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        x = rng.integers(0, 40, (n, 32, 32, 3)).astype(np.int64)
        x[..., 0] += (y * 24)[:, None, None]
        return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return CIFAR10(x_train, y_train, x_test, y_test, source="synthetic")


@pytest.fixture
def tiny_data() -> CIFAR10:
    return synthetic_cifar()


@pytest.fixture
def cli_data(monkeypatch: pytest.MonkeyPatch, tiny_data: CIFAR10) -> CIFAR10:
    """The command line loads ``tiny_data`` (returned) whatever --data says: CLI tests need no CIFAR-10 files."""
    monkeypatch.setattr("cifarkit.cli._data", lambda args: tiny_data)
    return tiny_data


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $CIFARKIT_DATA, $CIFARKIT_CACHE in tmp_path (returned) and tmp_path as the working directory.

    A test then finds no data set or cache of the user's and writes nothing outside tmp_path.
    """
    monkeypatch.delenv("CIFARKIT_DATA", raising=False)
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("CIFARKIT_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return cache


@pytest.fixture
def real_data_path() -> str:
    path = os.environ.get("CIFARKIT_DATA")
    if not path:
        pytest.skip("CIFARKIT_DATA is not set (point it at the CIFAR-10 folder tree to run this test)")
    return path


@pytest.fixture(scope="session")
def _real_cifar10_once() -> CIFAR10 | None:
    """The real CIFAR-10 at $CIFARKIT_DATA, loaded (through the user's cache) once per session; None if unset."""
    path = os.environ.get("CIFARKIT_DATA")
    if not path:
        return None
    from cifarkit.data import load_cifar10

    return load_cifar10(path)


@pytest.fixture
def real_cifar10(real_data_path: str, _real_cifar10_once: CIFAR10 | None) -> CIFAR10:
    """``load_cifar10(real_data_path)``, loaded once per session and shared: tests train and evaluate on it, and
    training and evaluation never write into the data they are given; a test that would must load its own."""
    assert _real_cifar10_once is not None
    return _real_cifar10_once


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """With CIFARKIT_REQUIRE_ALL=1 (set by .ci/run) a skip is a failure: CI runs every promised test.

    Elsewhere a test whose data, weights package or browser is missing skips with its reason.
    """
    report = (yield).get_result()
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("CIFARKIT_REQUIRE_ALL") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but CIFARKIT_REQUIRE_ALL=1 (CI) requires this test to run: {reason}"


@contextlib.contextmanager
def busy_cpus() -> Iterator[None]:
    """Another program busy on every CPU this process may use, for as long as the block runs."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
