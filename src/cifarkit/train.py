"""The one training loop: every recipe, from the notebook CNNs to fast nets and fine-tuning.

Read top to bottom it is the whole recipe: prepare data, build model and
optimiser, then for each epoch augment, step, validate, checkpoint. All
randomness of an epoch is derived from (seed, epoch), so a run resumed from
its last checkpoint retraces the uninterrupted run exactly.
"""
from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cifarkit import __version__
from cifarkit.data.dataset import CIFAR10
from cifarkit.data.augment import augment
from cifarkit.data.batches import balanced_subset, batches, stratified_split, to_tensor
from cifarkit.errors import CifarkitError
from cifarkit.features import cached_features
from cifarkit.files import write_csv, write_json
from cifarkit.models import count_parameters
from cifarkit.optim import EMA, OptimizerChain, build_optimizer, lr_multiplier
from cifarkit.plots import plot_history
from cifarkit.recipes import Recipe
from cifarkit.runs import build_model, load_torch, read_config, save_torch, save_weights
from cifarkit.runtime import keep_freed_memory


@dataclass
class Split:
    """Training and validation inputs: images in [0, 1] (channels-last), or frozen-backbone features."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def split_indices(labels: np.ndarray, val_fraction: float, seed: int, subset: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the training images of a run's (train, validation) split."""
    pool = balanced_subset(labels, subset, seed) if subset else np.arange(len(labels))
    keep, held = stratified_split(labels[pool], val_fraction, seed)
    return pool[keep], pool[held]


def prepare_split(data: CIFAR10, val_fraction: float, seed: int, subset: int | None) -> Split:
    """The training images (optionally a class-balanced subset) split into train and validation."""
    train_idx, val_idx = split_indices(data.y_train, val_fraction, seed, subset)
    return Split(
        to_tensor(data.x_train[train_idx]), torch.from_numpy(data.y_train[train_idx]).long(),
        to_tensor(data.x_train[val_idx]), torch.from_numpy(data.y_train[val_idx]).long(),
    )


def validation_set(data: CIFAR10, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and labels a run held out for validation (model selection, calibration)."""
    _, val_idx = split_indices(data.y_train, config["val_fraction"], config["seed"], config.get("subset"))
    return data.x_train[val_idx], data.y_train[val_idx]


@torch.no_grad()
def evaluate_loss_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                      batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on (x, y), in eval mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for xb, yb in batches(x, y, batch_size):
        logits = model(_to_device(xb, device)).float()
        yb = yb.to(device)
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return loss_sum / max(1, len(x)), correct / max(1, len(x))


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_one_epoch(
    model: nn.Module, optimizer: OptimizerChain, split: Split, recipe: Recipe, epoch: int,
    lr_at: Callable[[int], float], first_step: int, device: torch.device, ema: EMA | None, progress: bool,
) -> tuple[float, float]:
    """One pass over the (augmented) training set; returns mean loss and accuracy."""
    model.train()
    torch.manual_seed(_epoch_seed(recipe.seed, epoch))  # dropout and any other in-model randomness
    x = augment(split.x_train, epoch=epoch, seed=recipe.seed, flip=recipe.flip,
                alternating_flip=recipe.alternating_flip, pad=recipe.translate, cutout_size=recipe.cutout)
    steps = -(-len(x) // recipe.batch_size)
    bar = tqdm(batches(x, split.y_train, recipe.batch_size, shuffle_seed=_epoch_seed(recipe.seed, epoch)),
               total=steps, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress,
               leave=False, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for i, (xb, yb) in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_at(first_step + i)
        xb, yb = _to_device(xb, device), yb.to(device, non_blocking=True)
        with _autocast(device, recipe.bf16):
            logits = model(xb)
        loss = nn.functional.cross_entropy(logits.float(), yb, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        loss_sum += loss.detach() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(yb)
        if progress and i % 50 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    return loss_sum.item() / seen, correct.item() / seen


def _model_for_eval(model: nn.Module, ema: EMA | None) -> nn.Module:
    """The weights to validate and keep: the EMA average when the recipe uses one."""
    if ema is None:
        return model
    averaged = copy.deepcopy(model)
    averaged.load_state_dict(ema.shadow)
    return averaged


def _full_state(model: nn.Module, net: nn.Module, kept: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of the whole model, with the trained part ``net`` (the model, or its head) taken from ``kept``."""
    if net is model:
        return kept.state_dict()
    return {**model.state_dict(), **{f"head.{k}": v for k, v in kept.state_dict().items()}}


def frozen_feature_split(model: nn.Module, data: CIFAR10, recipe: Recipe, subset: int | None) -> Split:
    """Train/validation split of backbone features instead of images, read from (or written to) the cache.

    Features are computed for the union of both splits in data order, so runs
    with other seeds or validation fractions reuse the same cache file.
    """
    if recipe.flip or recipe.translate or recipe.cutout:
        raise CifarkitError("frozen_features trains on fixed features: set flip, translate and cutout off")
    train_idx, val_idx = split_indices(data.y_train, recipe.val_fraction, recipe.seed, subset)
    used = np.union1d(train_idx, val_idx)
    key = f"{Path(data.source).name}-train"
    features = torch.from_numpy(cached_features(model.backbone, data.x_train[used], key, bf16=recipe.bf16)).float()
    position = np.searchsorted(used, train_idx), np.searchsorted(used, val_idx)
    labels = torch.from_numpy(data.y_train).long()
    return Split(features[position[0]], labels[train_idx], features[position[1]], labels[val_idx])


def _start_or_resume(out: Path, config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The saved training state when resuming; refuses to overwrite a run otherwise."""
    state_path = out / "resume.pt"
    if resume:
        if not state_path.is_file():
            raise CifarkitError(f"--resume: {out} has no checkpoint (resume.pt) to continue from; drop --resume to start it")
        saved = read_config(out)
        if saved != config:
            changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            raise CifarkitError(
                f"--resume: the run in {out} was started with different settings ({', '.join(changed)}); "
                "resume with the same recipe and options, or train into a new --out"
            )
        return load_torch(state_path)
    if (out / "config.json").exists():
        raise CifarkitError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    return None


def train(
    recipe: Recipe,
    data: CIFAR10,
    out: str | Path,
    *,
    subset: int | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
) -> Path:
    """Train ``recipe`` on ``data`` into the run directory ``out`` and return its path.

    Writes checkpoints after every epoch (``resume=True`` continues from the
    last one), keeps the weights with the best validation accuracy, stops
    early after ``recipe.patience`` epochs without improvement, and saves
    history, curves and a metrics summary.
    """
    out = Path(out)
    dev = pick_device(device)
    keep_freed_memory()  # reuse activation memory between steps (see runtime.py)
    config = {**recipe.to_dict(), "subset": subset, "data_source": data.source, "classes": list(data.classes)}
    state = _start_or_resume(out, config, resume)
    write_json(out / "config.json", config)

    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    if recipe.frozen_features:
        # Frozen-feature transfer: the backbone runs once (features cached on disk) and
        # only the head trains, on feature vectors instead of images.
        model = build_model(config).to(dev, memory_format=torch.channels_last)
        split, net = frozen_feature_split(model, data, recipe, subset), model.head
    else:
        split = prepare_split(data, recipe.val_fraction, recipe.seed, subset)
        model = build_model(config)
        if hasattr(model, "data_init"):  # data-dependent initialisation, e.g. patch whitening
            model.data_init(split.x_train)
        model = net = model.to(dev, memory_format=torch.channels_last)
    optimizer = build_optimizer(net, recipe)
    if recipe.compile and dev.type == "cuda":
        net.compile()  # in place: parameter names, and so checkpoints, stay as they are
    steps_per_epoch = -(-len(split.x_train) // recipe.batch_size)
    lr_at = lr_multiplier(recipe.schedule, recipe.epochs * steps_per_epoch,
                          round(recipe.warmup_epochs * steps_per_epoch))
    ema = EMA(net, recipe.ema) if recipe.ema else None

    history: list[dict[str, Any]] = []
    best_acc, best_epoch, start = -1.0, -1, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history, best_acc, best_epoch, start = state["history"], state["best_acc"], state["best_epoch"], state["epoch"]

    params = count_parameters(model)
    for epoch in range(start, recipe.epochs):
        if recipe.patience and epoch - best_epoch > recipe.patience:
            break
        t0 = time.perf_counter()
        train_loss, train_acc = train_one_epoch(net, optimizer, split, recipe, epoch, lr_at,
                                                epoch * steps_per_epoch, dev, ema, progress)
        seconds = time.perf_counter() - t0
        kept = _model_for_eval(net, ema)
        val_loss, val_acc = (evaluate_loss_acc(kept, split.x_val, split.y_val, dev)
                             if len(split.x_val) else (float("nan"), float("nan")))
        row = dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,
                   val_acc=val_acc, lr=optimizer.param_groups[0]["lr"], seconds=seconds)
        history.append(row)
        if progress:
            tqdm.write(f"epoch {epoch + 1:3d}/{recipe.epochs}  loss {train_loss:.4f}  acc {train_acc:.4f}  "
                       f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  {seconds:.1f}s")
        # With no validation split (val_acc is NaN), the last epoch is the best one we can know of.
        weights = _full_state(model, net, kept)
        if not val_acc <= best_acc:
            best_acc, best_epoch = val_acc, epoch
            save_weights(weights, out / "best.safetensors")
        save_weights(weights, out / "last.safetensors")
        save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict() if ema else None, "history": history,
                    "best_acc": best_acc, "best_epoch": best_epoch, "epoch": epoch + 1}, out / "resume.pt")
        write_json(out / "history.json", history)

    write_csv(out / "history.csv", history)
    plot_history(history, out / "curves.png", title=recipe.name)
    write_json(out / "metrics.json", {
        "params": params, "trainable_params": count_parameters(net, trainable_only=True), "epochs_run": len(history),
        "best_epoch": best_epoch + 1, "best_val_acc": best_acc,
        "train_seconds": sum(r["seconds"] for r in history), "cifarkit_version": __version__,
        "torch_version": torch.__version__, "device": str(dev),
    })
    return out
