"""The one training loop: every recipe, from the notebook CNNs to fast nets and fine-tuning.

Read top to bottom it is the whole recipe: prepare data, build model and
optimiser, then for each epoch augment, step, validate, checkpoint. All
randomness of an epoch is derived from (seed, epoch), so a run resumed from
its last checkpoint retraces the uninterrupted run exactly.
"""

from __future__ import annotations

import errno
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from cifarkit import __version__, distributed
from cifarkit.data.augment import augment, flipped, progressive_size, resize
from cifarkit.data.batches import batches, pixels, unit_range
from cifarkit.data.dataset import CIFAR10
from cifarkit.distill import check_teacher, teacher_logits, training_loss
from cifarkit.errors import CifarkitError
from cifarkit.features import cached_features
from cifarkit.files import LOCK_FILE, check_writable, write_csv, write_json
from cifarkit.inference import images_per_pass
from cifarkit.models import count_parameters
from cifarkit.optim import OptimizerChain, build_optimizer, lr_multiplier, set_learning_rates, weight_ema
from cifarkit.plots import plot_history
from cifarkit.progress import progress_bar
from cifarkit.recipes import Recipe, for_processes, recipe_from_config, validate
from cifarkit.runs import (
    RETRAIN,
    build_model,
    load_torch,
    locked,
    read_config,
    run_directory_of,
    save_torch,
    save_weights,
    split_indices,
)
from cifarkit.runtime import adapt_threads, autocast, cpu_kind, precision_name, resolve_bf16
from cifarkit.tracking import Callback


@dataclass
class Split:
    """Training and validation inputs: uint8 images (N, 3, H, W, channels-last), or frozen-backbone features.

    Images stay bytes until a batch is taken (see :func:`_to_device`).

    ``teacher``: when distilling, the teacher's logits (N, 2, C) for each
    training image as it is and mirrored (see :mod:`cifarkit.distill`).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    teacher: torch.Tensor | None = None


def prepare_split(data: CIFAR10, val_fraction: float, seed: int, subset: int | None) -> Split:
    """The training images (optionally a class-balanced subset) split into train and validation."""
    train_idx, val_idx = split_indices(data.y_train, val_fraction, seed, subset)
    return Split(
        pixels(data.x_train[train_idx]),
        torch.from_numpy(data.y_train[train_idx]).long(),
        pixels(data.x_train[val_idx]),
        torch.from_numpy(data.y_train[val_idx]).long(),
    )


@torch.no_grad()
def evaluate_loss_acc(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 500, bf16: bool = False
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on (x, y), in eval mode, in the training precision.

    ``batch_size`` counts 32x32 images per forward pass (see :func:`cifarkit.inference.images_per_pass`).

    With several processes each evaluates its share of (x, y) and the sums are
    added up, so every process gets the figures of the whole set.
    """
    model.eval()
    loss_sum, correct = 0.0, 0
    part = distributed.shard(len(x))
    for xb, yb in batches(x[part], y[part], images_per_pass(model, batch_size)):
        with autocast(device, bf16):
            logits = model(_to_device(xb, device)).float()
        yb = yb.to(device)
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    loss_sum, correct = distributed.all_sum(loss_sum, correct)
    return loss_sum / max(1, len(x)), correct / max(1, len(x))


def _to_device(x: torch.Tensor, device: torch.device, side: int | None = None) -> torch.Tensor:
    """A batch as the model takes it: on ``device``, images in [0, 1], channels-last, ``side`` pixels wide if given.

    Pixels travel as bytes and are scaled there; resizing a batch at a time
    gives the same images as resizing the set (each image is resized alone).
    """
    x = unit_range(x.to(device, non_blocking=True))
    if x.dim() != 4:  # frozen-backbone features
        return x
    x = x.contiguous(memory_format=torch.channels_last)
    return x if side is None else resize(x, side)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def train_one_epoch(
    model: nn.Module,
    optimizer: OptimizerChain,
    split: Split,
    recipe: Recipe,
    epoch: int,
    lr_at: Callable[[float], float],
    first_step: int,
    device: torch.device,
    ema: AveragedModel | None,
    progress: bool,
) -> tuple[float, float]:
    """One pass over the (augmented) training set; returns mean loss and accuracy.

    With several processes ``model`` is wrapped by :func:`cifarkit.distributed.wrap`:
    every process augments and shuffles the whole set alike, steps on its part
    of each batch of ``recipe.batch_size`` (the global batch) and returns the
    figures of the whole set.
    """
    model.train()
    rank, world = distributed.rank(), distributed.world_size()
    torch.manual_seed(_epoch_seed(recipe.seed, epoch) + (rank << 32))  # dropout etc.: each process its own draws
    x = augment(
        split.x_train,
        epoch=epoch,
        seed=recipe.seed,
        flip=recipe.flip,
        alternating_flip=recipe.alternating_flip,
        pad=recipe.translate,
        cutout_size=recipe.cutout,
    )
    side = image_side(recipe, epoch, x.shape[-1]) if x.dim() == 4 else None
    teacher = _teacher_view(split.teacher, recipe, epoch)
    steps = -(-len(x) // recipe.batch_size)
    # Batches of indices, so labels and teacher outputs follow the images through the shuffle.
    order = torch.arange(len(x))
    bar = progress_bar(
        batches(x, order, recipe.batch_size, shuffle_seed=_epoch_seed(recipe.seed, epoch), rank=rank, world=world),
        total=steps,
        desc=f"epoch {epoch + 1}/{recipe.epochs}",
        disable=not progress,
        leave=False,
    )
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, next_postfix = 0, 0.0
    for i, (xb, ib) in enumerate(bar):
        set_learning_rates(optimizer, lr_at, first_step + i)
        xb, yb = _to_device(xb, device, side), split.y_train[ib].to(device, non_blocking=True)
        tb = None if teacher is None else teacher[ib].to(device, non_blocking=True)
        # The sum over this process's part / the global batch's size x the processes DDP averages over: the
        # gradient of the global batch's mean loss, however unevenly the batch was split.
        scale = world / min(recipe.batch_size, len(x) - i * recipe.batch_size)
        batch_loss, batch_correct = _step(model, optimizer, recipe, device, (xb, yb, tb), scale)
        if ema is not None:
            ema.update_parameters(model)
        if (threads := adapt_threads()) and progress:  # another program started or stopped using the CPU
            bar.write(threads, file=sys.stderr)
        loss_sum += batch_loss
        correct += batch_correct
        seen += len(yb)
        if progress and time.monotonic() >= next_postfix:  # this epoch's figures so far, as often as a line shows
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}", refresh=False)
            next_postfix = time.monotonic() + bar.mininterval / 2
    loss_total, correct_total, seen_total = distributed.all_sum(loss_sum, correct, seen)
    return loss_total / seen_total, correct_total / seen_total


def _step(
    model: nn.Module,
    optimizer: OptimizerChain,
    recipe: Recipe,
    device: torch.device,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on ``batch`` (images, labels, teacher logits or None); its loss sum and correct count.

    With ``recipe.micro_batch`` the batch runs in parts whose gradients add
    up before the step (each backward frees its part's activations); with
    several processes the gradients are averaged once, after the last part.
    """
    images, labels, teacher = batch
    size = recipe.micro_batch or len(images)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(images), size):
        part = slice(start, start + size)
        last = start + size >= len(images)
        with nullcontext() if last else distributed.no_sync(model):
            with autocast(device, recipe.bf16):
                logits = model(images[part])
            loss = training_loss(
                logits.float(),
                labels[part],
                None if teacher is None else teacher[part],
                weight=recipe.distill_weight,
                temperature=recipe.distill_temperature,
                label_smoothing=recipe.label_smoothing,
            )
            (loss * scale).backward()
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == labels[part]).sum()
    optimizer.step()
    return loss_sum, correct


def image_side(recipe: Recipe, epoch: int, full: int) -> int:
    """The side of the images trained on in ``epoch``: smaller early on with progressive resizing."""
    return progressive_size(
        epoch, epochs=recipe.epochs, full=full, start=recipe.resize_start, until=recipe.resize_until
    )


def _teacher_view(teacher: torch.Tensor | None, recipe: Recipe, epoch: int) -> torch.Tensor | None:
    """The teacher's logits (N, C) for the training images as this epoch's augmentation mirrors them."""
    if teacher is None:
        return None
    if not recipe.flip:
        return teacher[:, 0]
    mirrored = flipped(len(teacher), epoch=epoch, seed=recipe.seed, alternating=recipe.alternating_flip)
    return teacher[torch.arange(len(teacher)), mirrored.long()]


def teacher_split_logits(recipe: Recipe, data: CIFAR10, subset: int | None, device: str = "auto") -> torch.Tensor:
    """The teacher's logits (N, 2, C) for this run's training images, from the teacher cache (run on ``device``).

    Computed for the union of both splits in data order, so students with
    other seeds or validation fractions reuse the same cache file.
    """
    train_idx, val_idx = split_indices(data.y_train, recipe.val_fraction, recipe.seed, subset)
    used = np.union1d(train_idx, val_idx)
    key = f"{Path(data.source).name}-train"
    logits = teacher_logits(recipe.teacher, data.x_train[used], key, data.classes, device=device)
    return torch.from_numpy(logits[np.searchsorted(used, train_idx)]).float()


def _model_for_eval(model: nn.Module, ema: AveragedModel | None) -> nn.Module:
    """The weights to validate and keep: the EMA average when the recipe uses one."""
    return model if ema is None else ema.module


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
    train_idx, val_idx = split_indices(data.y_train, recipe.val_fraction, recipe.seed, subset)
    used = np.union1d(train_idx, val_idx)
    key = f"{Path(data.source).name}-train"
    features = torch.from_numpy(cached_features(model.backbone, data.x_train[used], key, bf16=recipe.bf16)).float()
    position = np.searchsorted(used, train_idx), np.searchsorted(used, val_idx)
    labels = torch.from_numpy(data.y_train).long()
    return Split(features[position[0]], labels[train_idx], features[position[1]], labels[val_idx])


def check_split(labels: np.ndarray, recipe: Recipe, subset: int | None) -> None:
    """Refuse a subset or validation fraction that would train on nothing or validate on nothing."""
    classes = len(np.unique(labels))
    if subset is not None and not classes <= subset <= len(labels):
        raise CifarkitError(f"--subset must be between {classes} (one image per class) and {len(labels)}, got {subset}")
    if recipe.val_fraction > 0:
        train_idx, val_idx = split_indices(labels, recipe.val_fraction, recipe.seed, subset)
        if len(val_idx) == 0 or len(train_idx) == 0:
            raise CifarkitError(
                f"--subset {subset} leaves no {'validation' if len(train_idx) else 'training'} "
                f"images at val_fraction {recipe.val_fraction:g}; use a larger --subset "
                "(or --set val_fraction=0 to train without model selection)"
            )


# --- starting, resuming, and the run directory -----------------------------------------------------------------------

# config.json keys that say where the data lay and what it was: compared by fingerprint on resume, not by path.
DATA_KEYS = ("data_source", "data_fingerprints")


def _check_out(out: Path, resume: bool) -> None:
    """Refuse, before anything is created, a run directory that cannot be (or must not be) written."""
    if out.exists() and not out.is_dir():
        raise CifarkitError(f"--out {out} is a file; name a new directory for the run")
    check_writable(out / "config.json", "--out")
    outer = run_directory_of(out.resolve().parent)
    if outer is not None:
        raise CifarkitError(f"--out {out} lies inside the run directory {outer}; name a directory outside it")
    has_run = (out / "resume.pt").is_file() or (out / "config.json").is_file()
    if resume and not has_run:
        raise CifarkitError(f"--resume: {out} holds no run to continue; drop --resume to start one there")
    if not has_run and out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise CifarkitError(
            f"--out {out} is a folder that holds other files, not a cifarkit run; name a new or empty directory"
        )


def _start_or_resume(out: Path, config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The saved training state when resuming; None to start afresh; an error rather than overwrite work.

    Called with the run directory locked. A run directory without a checkpoint
    (``resume.pt``) holds no finished epoch, so it is started again whether or
    not ``resume`` is given: a run killed before its first checkpoint is never
    a dead end. The data may have moved since: its fingerprint, not its path,
    must match.
    """
    state_path = out / "resume.pt"
    if not state_path.is_file():
        return None
    if not resume:
        raise CifarkitError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    saved = read_config(out)
    saved = {**recipe_from_config(saved).to_dict(), **saved}  # recipe fields newer than the run: their defaults
    changed = sorted(k for k in set(saved) | set(config) if k not in DATA_KEYS and saved.get(k) != config.get(k))
    if changed:
        raise CifarkitError(
            f"--resume: the run in {out} was started with different settings ({', '.join(changed)}); "
            f"resume with `cifarkit train --resume --out {out}` alone, or train into a new --out"
        )
    _check_same_data(out, saved, config)
    return load_torch(state_path)


def _check_same_data(out: Path, saved: dict[str, Any], config: dict[str, Any]) -> None:
    """Refuse to resume on other data: the training pixels' fingerprint must match (the path may differ)."""
    before = saved.get("data_fingerprints", {}).get("train")
    same = saved["data_source"] == config["data_source"] if before is None else before == config[DATA_KEYS[1]]["train"]
    if not same:
        raise CifarkitError(
            f"--resume: {config['data_source']} is not the data the run in {out} trained on "
            f"({saved['data_source']}); pass that data with --data (it may lie elsewhere now)"
        )


def _load_state(model: nn.Module, optimizer: OptimizerChain, ema: AveragedModel | None, state: dict, out: Path) -> None:
    """Put a checkpoint's weights and optimiser state in place; one that does not fit is a one-line error."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        for key in ("history", "best_acc", "best_epoch", "epoch"):
            state[key]  # noqa: B018 - present, or the checkpoint is not one of this version's
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise CifarkitError(
            f"{out / 'resume.pt'} does not fit this run's model and optimiser ({reason}): it is not this run's "
            f"checkpoint; put the run's own back, or {RETRAIN}"
        ) from None


def _save_checkpoint(out: Path, weights: dict, checkpoint: dict, improved: bool) -> None:
    """Write an epoch's weights, checkpoint and history; a full disk says so, and that the run still resumes.

    Every file is written atomically, so a failed write leaves the previous
    epoch's files whole.
    """
    try:
        if improved:
            save_weights(weights, out / "best.safetensors")
        save_weights(weights, out / "last.safetensors")
        save_torch(checkpoint, out / "resume.pt")
        write_json(out / "history.json", checkpoint["history"])
    except OSError as exc:
        what = "the disk is full" if exc.errno == errno.ENOSPC else f"cannot write {exc.filename} ({exc.strerror})"
        raise CifarkitError(
            f"{what}, so epoch {checkpoint['epoch']}'s checkpoint was not saved; the previous one in {out} is "
            f"intact: make room, then `cifarkit train --resume --out {out}` continues from it"
        ) from None


def _check_finite(out: Path, epoch: int, recipe: Recipe, losses: dict[str, float | None]) -> None:
    """Stop a run whose loss is no longer a number (it diverged), keeping the last good checkpoint."""
    bad = {k: v for k, v in losses.items() if v is not None and not math.isfinite(v)}
    if bad:
        kept = "the checkpoint of the epoch before is kept" if epoch else "no epoch finished"
        raise CifarkitError(
            f"training diverged in epoch {epoch + 1} ({', '.join(f'{k} {v}' for k, v in bad.items())}); "
            f"{kept} in {out}; train again into a new --out with a lower lr (now {recipe.lr:g}) or a longer warm-up"
        )


def train(
    recipe: Recipe,
    data: CIFAR10,
    out: str | Path,
    *,
    subset: int | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train ``recipe`` on ``data`` into the run directory ``out`` and return its path.

    Everything is checked before anything is written: the recipe
    (:func:`cifarkit.recipes.validate`), the subset, the device and the run
    directory, which is then locked (a second writer is refused). ``recipe.bf16
    = "auto"`` resolves to bfloat16 autocast where the hardware has it natively
    and float32 elsewhere; the resolved choice is printed and recorded in
    ``config.json`` with the data's source and fingerprints. Writes checkpoints
    after every epoch (``resume=True`` continues from the last one, also with
    the data moved elsewhere), keeps the weights of the best validation
    accuracy (or, with ``select="last"``, of the last epoch) as
    ``best.safetensors``, stops early after ``recipe.patience`` epochs without
    improvement, stops with an error when the loss stops being finite, and
    saves history, curves and a metrics summary. ``callbacks``
    (:class:`cifarkit.tracking.Callback`) see each epoch's history row and the
    final metrics; one that returns True after an epoch stops training there,
    leaving a finished, resumable run directory. (Call
    :func:`cifarkit.runtime.keep_freed_memory` first for speed on glibc; the
    CLI does.)

    Started by torchrun on several processes it trains data-parallel (see
    :mod:`cifarkit.distributed`): ``recipe.batch_size`` is the global batch,
    split between the processes, gradients are averaged, and rank 0 alone
    prints, writes the run directory and calls ``callbacks``. A run resumes
    on any number of processes.
    """
    out = Path(out)
    recipe, dev, config = _checked(recipe, data, out, subset, resume, device)
    with ExitStack() as stack:
        distributed.on_main(lambda: stack.enter_context(locked(out)))
        state = distributed.on_main(lambda: _start_or_resume(out, config, resume))
        recipe = for_processes(recipe, distributed.world_size())  # batch_size: the global batch of this launch
        _check_global_batch(state, recipe, out)
        progress = progress and distributed.is_main()
        if progress:
            where = cpu_kind() if dev.type == "cpu" else str(dev)
            print(f"device {dev} ({where}), precision {precision_name(recipe.bf16)}", file=sys.stderr)
            print(f"{distributed.describe(recipe.batch_size)}, lr scaling {recipe.lr_scaling}", file=sys.stderr)
        if distributed.is_main() and (state is None or read_config(out) != config):  # unchanged: left as it is
            write_json(out / "config.json", config)
        session = _build(recipe, data, config, subset, dev)
        return _epochs(session, recipe, state, out, dev, progress, callbacks)


def _checked(
    recipe: Recipe, data: CIFAR10, out: Path, subset: int | None, resume: bool, device: str
) -> tuple[Recipe, torch.device, dict[str, Any]]:
    """Every check that can refuse the run, before anything is written; the recipe, device and run config."""
    validate(recipe)
    check_split(data.y_train, recipe, subset)
    if recipe.resize_start >= data.x_train.shape[1]:
        raise CifarkitError(
            f"resize_start {recipe.resize_start} must be below the image side {data.x_train.shape[1]} "
            "(progressive resizing starts small); lower it, or set resize_start=0 to turn it off"
        )
    classes = recipe.model_kwargs.get("num_classes", len(data.classes))
    if classes != len(data.classes):
        raise CifarkitError(
            f"model_kwargs num_classes {classes} differs from the {len(data.classes)} classes of the data; "
            "remove num_classes (the model then has one output per class)"
        )
    if recipe.teacher:
        check_teacher(recipe.teacher, data.classes)
    distributed.on_main(lambda: _check_out(out, resume))
    dev = distributed.setup(device)
    distributed.check_sync_bn(recipe.sync_bn, dev)
    recipe = recipe.replace(bf16=resolve_bf16(recipe.bf16, dev))
    config = {
        **recipe.to_dict(),
        "subset": subset,
        "data_source": data.source,
        "data_fingerprints": {"train": data.train_fingerprint, "test": data.test_fingerprint},
        "classes": list(data.classes),
    }
    return recipe, dev, config


@dataclass
class Session:
    """What the epochs of a run work on: the model, the part of it that trains, its data and optimiser."""

    model: nn.Module
    net: nn.Module  # the trained part: the model, or its head when features are frozen
    trained: nn.Module  # net as the processes train it (DDP with several)
    split: Split
    optimizer: OptimizerChain
    ema: AveragedModel | None
    steps_per_epoch: int
    lr_at: Callable[[float], float]


def _build(recipe: Recipe, data: CIFAR10, config: dict[str, Any], subset: int | None, dev: torch.device) -> Session:
    """The model (data-initialised where it wants), its training data, optimiser, schedule and weight average."""
    torch.manual_seed(recipe.seed)
    if recipe.frozen_features:
        # Frozen-feature transfer: the backbone runs once (features cached on disk) and
        # only the head trains, on feature vectors instead of images.
        model = build_model(config).to(dev, memory_format=torch.channels_last)
        split, net = frozen_feature_split(model, data, recipe, subset), model.head
    else:
        split = prepare_split(data, recipe.val_fraction, recipe.seed, subset)
        if recipe.teacher:
            split.teacher = teacher_split_logits(recipe, data, subset, str(dev))
        model = build_model(config)
        if hasattr(model, "data_init"):  # data-dependent initialisation, e.g. patch whitening
            model.data_init(split.x_train)
        model = net = model.to(dev, memory_format=torch.channels_last)
    optimizer = build_optimizer(net, recipe)
    trained = distributed.wrap(net, dev, recipe.sync_bn)  # in DDP with several processes
    if recipe.compile and dev.type == "cuda":
        net.compile()  # in place: parameter names, and so checkpoints, stay as they are
    elif recipe.compile:
        # Measured on a 2-core CPU (benchmarks/train_step.py --compile false true): 0.94x in float32, 0.88x in bf16.
        warnings.warn(
            f"compile=true is for CUDA; on {dev.type} it trains uncompiled (torch.compile was slower there)",
            stacklevel=3,
        )
    steps = -(-len(split.x_train) // recipe.batch_size)
    lr_at = lr_multiplier(recipe.schedule, recipe.epochs * steps, round(recipe.warmup_epochs * steps))
    ema = weight_ema(net, recipe.ema) if recipe.ema else None
    return Session(model, net, trained, split, optimizer, ema, steps, lr_at)


def _epochs(
    s: Session,
    recipe: Recipe,
    state: dict[str, Any] | None,
    out: Path,
    dev: torch.device,
    progress: bool,
    callbacks: Sequence[Callback],
) -> Path:
    """Train epoch after epoch from ``state`` (or the start), checkpointing each, then write the run's summary."""
    history: list[dict[str, Any]] = []
    best_acc, best_epoch, start = None, -1, 0
    if state is not None:
        _load_state(s.model, s.optimizer, s.ema, state, out)
        history, best_acc, best_epoch, start = state["history"], state["best_acc"], state["best_epoch"], state["epoch"]
        if _finished(recipe, start, best_epoch) and distributed.on_main(lambda: (out / "metrics.json").is_file()):
            if progress:
                print(f"{out} finished training already (epoch {start}); nothing to do", file=sys.stderr)
            return out

    for epoch in range(start, recipe.epochs):
        if _finished(recipe, epoch, best_epoch):
            break
        row, kept = _one_epoch(s, recipe, epoch, dev, progress)
        _check_finite(out, epoch, recipe, {"training loss": row["train_loss"], "validation loss": row["val_loss"]})
        history.append(row)
        # select=last (or no validation split): the newest epoch is the one kept.
        improved = recipe.select == "last" or row["val_acc"] is None or best_acc is None or row["val_acc"] > best_acc
        if improved:
            best_acc, best_epoch = row["val_acc"], epoch
        if distributed.is_main():  # one run directory, written by rank 0
            checkpoint = {
                "model": s.model.state_dict(),
                "optimizer": s.optimizer.state_dict(),
                "ema": s.ema.state_dict() if s.ema is not None else None,
                "history": history,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "epoch": epoch + 1,
                "global_batch": recipe.batch_size,
            }
            _save_checkpoint(out, _full_state(s.model, s.net, kept), checkpoint, improved)
        # Every callback sees the epoch, on rank 0 only; what they decide holds for every process.
        stop = distributed.is_main() and any([callback.on_epoch_end(row) for callback in callbacks])
        if distributed.share(stop):
            break  # a callback asked to stop (e.g. a pruned trial): finish the run like early stopping

    if distributed.is_main():
        _finish(s, recipe, history, best_acc, best_epoch, out, dev, callbacks)
    return out


def _one_epoch(
    s: Session, recipe: Recipe, epoch: int, dev: torch.device, progress: bool
) -> tuple[dict[str, Any], nn.Module]:
    """Train one epoch and validate the weights it keeps; the history row, and those weights."""
    t0 = time.perf_counter()
    train_loss, train_acc = train_one_epoch(
        s.trained, s.optimizer, s.split, recipe, epoch, s.lr_at, epoch * s.steps_per_epoch, dev, s.ema, progress
    )
    seconds = time.perf_counter() - t0
    kept = _model_for_eval(s.net, s.ema)
    distributed.broadcast_buffers(kept)  # rank 0's BatchNorm statistics: the ones checkpointed
    # No validation split: null in the history, and the last epoch is the best one we can know of.
    split = s.split
    val_loss, val_acc = (
        evaluate_loss_acc(kept, split.x_val, split.y_val, dev, bf16=recipe.bf16) if len(split.x_val) else (None, None)
    )
    row = dict(
        epoch=epoch + 1,
        train_loss=train_loss,
        train_acc=train_acc,
        val_loss=val_loss,
        val_acc=val_acc,
        lr=s.optimizer.param_groups[0]["lr"],
        image_size=image_side(recipe, epoch, split.x_train.shape[-1]) if split.x_train.dim() == 4 else None,
        seconds=seconds,
    )
    if progress:
        tqdm.write(
            f"epoch {epoch + 1:3d}/{recipe.epochs}  loss {train_loss:.4f}  acc {train_acc:.4f}  "
            f"val_loss {_fmt(val_loss)}  val_acc {_fmt(val_acc)}  {seconds:.1f}s"
        )
    return row, kept


def _finish(
    s: Session,
    recipe: Recipe,
    history: list[dict[str, Any]],
    best_acc: float | None,
    best_epoch: int,
    out: Path,
    dev: torch.device,
    callbacks: Sequence[Callback],
) -> None:
    """The run's summary files (history table, curves, metrics.json), and the callbacks' end of training."""
    write_csv(out / "history.csv", history)
    plot_history(history, out / "curves.png", title=recipe.name)
    metrics = {
        "params": count_parameters(s.model),
        "trainable_params": count_parameters(s.net, trainable_only=True),
        "epochs_run": len(history),
        "best_epoch": best_epoch + 1,
        "best_val_acc": best_acc,
        "train_seconds": sum(r["seconds"] for r in history),
        "cifarkit_version": __version__,
        "torch_version": torch.__version__,
        "device": str(dev),
        "processes": distributed.world_size(),
    }
    write_json(out / "metrics.json", metrics)
    for callback in callbacks:
        callback.on_train_end(metrics)


def _check_global_batch(state: dict[str, Any] | None, recipe: Recipe, out: Path) -> None:
    """Refuse to resume with another global batch: ``batch_per_process`` x a different number of processes."""
    saved = recipe.batch_size if state is None else state.get("global_batch", recipe.batch_size)
    if saved != recipe.batch_size and not recipe.batch_per_process:
        raise CifarkitError(
            f"--resume: {out / 'resume.pt'} trained with a global batch of {saved}, but the run's recipe has "
            f"batch_size {recipe.batch_size}: it is not this run's checkpoint; put the run's own back, or {RETRAIN}"
        )
    if saved != recipe.batch_size:
        raise CifarkitError(
            f"--resume: {out} trains with a global batch of {saved}, but batch_per_process "
            f"{recipe.batch_per_process} on {distributed.world_size()} processes makes "
            f"{recipe.batch_size}; resume it on {saved // recipe.batch_per_process} processes"
        )


def _finished(recipe: Recipe, epoch: int, best_epoch: int) -> bool:
    """Whether training stops before ``epoch``: all epochs done, or early stopping's patience ran out."""
    return epoch >= recipe.epochs or bool(recipe.patience and epoch - best_epoch > recipe.patience)


def _fmt(value: float | None) -> str:
    return "  n/a " if value is None else f"{value:.4f}"
