"""The restricted unpickler: numpy batches load, anything that could run code does not."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cifarkit.data.safe_pickle import load_pickle
from cifarkit.errors import DataError
from data_factories import python_batch_bytes


class _RunsShellCommand:
    """Unpickling this runs a shell command: what a tampered batch file would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


class _CallsEval:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return eval, ("1 + 1",)


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_numpy_batch_loads_with_str_or_bytes_keys(style: str) -> None:
    images = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    batch = load_pickle(io.BytesIO(python_batch_bytes(images, np.array([3, 9]), "b", style)), "b")
    key = "data" if style == "py2" else b"data"  # Python 2 strings load as str under latin1
    assert batch[key].dtype == np.uint8 and batch[key].shape == (2, 3072)
    assert batch[key][1, 0] == images[1, 0, 0, 0]  # row 1 starts with image 1's red plane
    assert batch["labels" if style == "py2" else b"labels"] == [3, 9]


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _RunsShellCommand(f"touch {marker}")}, protocol=protocol)
    pickle.loads(pickle.dumps(_RunsShellCommand(f"touch {tmp_path / 'control'}")))
    assert (tmp_path / "control").exists()  # the payload does work when unpickled unrestricted
    with pytest.raises(DataError, match=r"evil_batch.*refused to load global (posix|nt)\.system"):
        load_pickle(io.BytesIO(payload), "evil_batch")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_other_globals_are_refused(protocol: int) -> None:
    with pytest.raises(DataError, match=r"refused to load global (builtins|__builtin__)\.eval"):
        load_pickle(io.BytesIO(pickle.dumps(_CallsEval(), protocol=protocol)), "batch")


def test_numpy_functions_beyond_reconstruct_are_refused() -> None:
    payload = pickle.dumps(np.frombuffer(b"\x01\x02", dtype=np.uint8), protocol=5)  # uses _frombuffer
    with pytest.raises(DataError, match="refused"):
        load_pickle(io.BytesIO(payload), "batch")


def test_garbage_is_a_data_error() -> None:
    with pytest.raises(DataError, match="junk is not a valid CIFAR-10 python batch"):
        load_pickle(io.BytesIO(b"this is not a pickle"), "junk")
