"""The run directory: what a training run leaves behind, written atomically.

    RUN/config.json            resolved recipe + data provenance (repeat the run from it)
    RUN/history.json|.csv      per-epoch train/validation loss and accuracy
    RUN/metrics.json           summary: parameters, best validation accuracy, time, test accuracy
    RUN/curves.png             training curves
    RUN/best.safetensors       weights of the epoch with the best validation accuracy
    RUN/last.safetensors       weights after the last finished epoch
    RUN/resume.pt              everything needed to continue (weights, optimiser, history)
    RUN/eval/                  written by `cifarkit evaluate`
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from cifarkit.errors import CifarkitError
from cifarkit.files import atomic_write_bytes, read_json
from cifarkit.models import create_model


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """A state dict as safetensors (contiguous copies: safetensors stores plain row-major tensors)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors))


def save_torch(obj: Any, path: Path) -> None:
    """Training state (optimiser etc.) with torch.save, atomically; read back with ``weights_only=True``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved configuration of a run; a clear error when ``run_dir`` is not a run."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CifarkitError(f"{run_dir} is not a cifarkit run directory (no config.json); pass the --out of `cifarkit train`")
    return read_json(path)


def build_model(config: dict[str, Any]) -> nn.Module:
    """The untrained model a run's configuration describes."""
    kwargs = dict(config.get("model_kwargs", {}))
    return create_model(config["model"], **kwargs)


def load_model(run_dir: str | Path, which: str = "best") -> nn.Module:
    """The trained model of a run (``best`` or ``last`` weights), in eval mode on the CPU."""
    config = read_config(run_dir)
    weights = Path(run_dir) / f"{which}.safetensors"
    if not weights.is_file():
        raise CifarkitError(f"{weights} is missing: the run has not finished an epoch yet; train (or --resume) it first")
    model = build_model(config)
    model.load_state_dict(load_file(weights))
    return model.eval()
