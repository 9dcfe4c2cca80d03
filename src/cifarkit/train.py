"""The one training loop: every recipe, from the notebook CNNs to fast nets and fine-tuning.

:func:`train` reads top to bottom: set-up, the epochs, finish; its helpers each do one thing below it. All
randomness of an epoch derives from (seed, epoch), so a resumed run at the same fixed thread count retraces
the uninterrupted one to the last bit.
"""

from __future__ import annotations

import errno
import math
import sys
import time
import warnings
from collections.abc import Sequence
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
from cifarkit.data.augment import augment, flipped, resize
from cifarkit.data.batches import batches, pixels, unit_range
from cifarkit.data.dataset import CIFAR10
from cifarkit.distill import check_teacher, teacher_logits, training_loss
from cifarkit.errors import CifarkitError
from cifarkit.estimate import RunClock, image_side
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
from cifarkit.runtime import Threads, autocast, cpu_kind, cpu_model, precision_name, resolve_bf16
from cifarkit.tracking import Callback


@dataclass
class Split:
    """Training and validation inputs (uint8 images, channels-last, or features), and a teacher's logits (N, 2, C)."""

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
    """Mean cross-entropy and accuracy of ``model`` on (x, y), eval mode, training precision, over all processes."""
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
    """A batch as the model takes it: on ``device``, images in [0, 1], channels-last, ``side`` pixels wide if given."""
    x = unit_range(x.to(device, non_blocking=True))
    if x.dim() != 4:  # frozen-backbone features
        return x
    x = x.contiguous(memory_format=torch.channels_last)
    return x if side is None else resize(x, side)


DATA_INIT_CHUNK = 1024  # images scaled to floats at a time for data_init: 12 MB, not 0.6 GB for the set


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _teacher_view(teacher: torch.Tensor | None, recipe: Recipe, epoch: int) -> torch.Tensor | None:
    """The teacher's logits (N, C) for the training images as this epoch's augmentation mirrors them."""
    if teacher is None:
        return None
    if not recipe.flip:
        return teacher[:, 0]
    mirrored = flipped(len(teacher), epoch=epoch, seed=recipe.seed, alternating=recipe.alternating_flip)
    return teacher[torch.arange(len(teacher)), mirrored.long()]


def _cached_split(recipe: Recipe, data: CIFAR10, subset: int | None) -> tuple[np.ndarray, ...]:
    """Train and validation indices, their union in data order and its cache key: one cache serves every split."""
    train_idx, val_idx = split_indices(data.y_train, recipe.val_fraction, recipe.seed, subset)
    return train_idx, val_idx, np.union1d(train_idx, val_idx), f"{Path(data.source).name}-train"


def teacher_split_logits(recipe: Recipe, data: CIFAR10, subset: int | None, device: str = "auto") -> torch.Tensor:
    """The teacher's logits (N, 2, C) for this run's training images, from the teacher cache (run on ``device``)."""
    train_idx, _, used, key = _cached_split(recipe, data, subset)
    logits = teacher_logits(recipe.teacher, data.x_train[used], key, data.classes, device=device)
    return torch.from_numpy(logits[np.searchsorted(used, train_idx)]).float()


def _full_state(model: nn.Module, net: nn.Module, kept: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of the whole model, with the trained part ``net`` (the model, or its head) taken from ``kept``."""
    if net is model:
        return kept.state_dict()
    return {**model.state_dict(), **{f"head.{k}": v for k, v in kept.state_dict().items()}}


def frozen_feature_split(model: nn.Module, data: CIFAR10, recipe: Recipe, subset: int | None) -> Split:
    """Train/validation split of backbone features instead of images, read from (or written to) the cache."""
    train_idx, val_idx, used, key = _cached_split(recipe, data, subset)
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
    threads: int | None = None,
) -> Path:
    """Train ``recipe`` on ``data`` into the run directory ``out`` and return its path.

    Everything is checked before anything is written, and the run directory
    is locked (a second writer is refused). ``recipe.bf16 = "auto"`` is
    bfloat16 autocast where the hardware has it natively, float32 elsewhere.
    After every epoch: validation, then a checkpoint (``resume=True``
    continues from the last one, with the data moved elsewhere too); the
    weights of the best validation accuracy (or, with ``select="last"``, of
    the last epoch) are ``best.safetensors``; training stops early after
    ``recipe.patience`` epochs without improvement, and with an error when the
    loss stops being finite. ``callbacks`` (:class:`cifarkit.tracking.Callback`)
    see each epoch's history row and the final metrics; one that returns True
    stops training there, leaving a finished run.

    ``threads``: a fixed thread count, which repeats a run's numbers to the
    last bit; None follows the load of other programs (see
    :class:`cifarkit.runtime.Threads`), or, resuming, uses the run's own fixed
    count. Each epoch's counts are recorded in the history.

    Started by torchrun on several processes it trains data-parallel (see
    :mod:`cifarkit.distributed`): ``recipe.batch_size`` is the global batch,
    split between the processes, and rank 0 alone prints, writes the run
    directory and calls ``callbacks``. A run resumes on any number of processes.
    """
    # --- set-up: checks, the run directory, model, data, optimiser, and the state to resume from
    out = Path(out)
    recipe, dev, config = _checked(recipe, data, out, subset, resume, device)
    main = distributed.is_main()
    progress = progress and main
    with ExitStack() as stack:
        distributed.on_main(lambda: stack.enter_context(locked(out)))
        state = distributed.on_main(lambda: _start_or_resume(out, config, resume))
        recipe = for_processes(recipe, distributed.world_size())  # batch_size: the global batch of this launch
        _check_global_batch(state, recipe, out)
        finished = state is not None and _finished(recipe, state.get("epoch", 0), state.get("best_epoch", -1))
        if finished and distributed.on_main(lambda: (out / "metrics.json").is_file()):  # before any work is done
            if progress:
                print(f"{out} finished training already (epoch {state['epoch']}); nothing to do", file=sys.stderr)
            return out
        cpu = Threads(threads if threads is not None or state is None else state.get("threads"))
        if progress:
            where = cpu_kind() if dev.type == "cpu" else str(dev)
            print(f"device {dev} ({where}), precision {precision_name(recipe.bf16)}, {cpu.describe()}", file=sys.stderr)
            print(f"{distributed.describe(recipe.batch_size)}, lr scaling {recipe.lr_scaling}", file=sys.stderr)
        if main and (state is None or read_config(out) != config):  # unchanged: left as it is
            write_json(out / "config.json", config)
        model, net, split = _model_and_data(recipe, data, config, subset, dev)
        optimizer = build_optimizer(net, recipe)
        trained = _for_training(net, recipe, dev)
        steps = -(-len(split.x_train) // recipe.batch_size)
        lr_at = lr_multiplier(recipe.schedule, recipe.epochs * steps, round(recipe.warmup_epochs * steps))
        ema = weight_ema(net, recipe.ema) if recipe.ema else None
        history, best_acc, best_epoch, start = _resumed(state, model, optimizer, ema, out)
        images = split.x_train.dim() == 4  # else frozen-backbone features
        full = split.x_train.shape[-1]
        clock = RunClock(recipe, len(split.x_train), len(split.x_val), len(data.x_test), full) if images else None

        # --- the epochs: augment, step through the shuffled batches, validate, checkpoint
        rank, world = distributed.rank(), distributed.world_size()
        for epoch in range(start, recipe.epochs):
            if _finished(recipe, epoch, best_epoch):
                break
            t0 = time.perf_counter()
            trained.train()
            torch.manual_seed(_epoch_seed(recipe.seed, epoch) + (rank << 32))  # dropout etc.: each process its own
            x = augment(
                split.x_train,
                epoch=epoch,
                seed=recipe.seed,
                flip=recipe.flip,
                alternating_flip=recipe.alternating_flip,
                pad=recipe.translate,
                cutout_size=recipe.cutout,
            )
            side = image_side(recipe, epoch, full) if images else None
            teacher = _teacher_view(split.teacher, recipe, epoch)
            # Batches of indices, so labels and teacher outputs follow the images through the shuffle.
            shuffle_seed = _epoch_seed(recipe.seed, epoch)
            shuffled = batches(
                x, torch.arange(len(x)), recipe.batch_size, shuffle_seed=shuffle_seed, rank=rank, world=world
            )
            bar = progress_bar(
                shuffled, total=steps, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress, leave=False
            )
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev, dtype=torch.long)
            seen, next_postfix, threads_used = 0, 0.0, [cpu.count]
            for i, (xb, ib) in enumerate(bar):
                set_learning_rates(optimizer, lr_at, epoch * steps + i)
                xb, yb = _to_device(xb, dev, side), split.y_train[ib].to(dev, non_blocking=True)
                tb = None if teacher is None else teacher[ib].to(dev, non_blocking=True)
                # The sum over this process's part / the global batch's size x the processes DDP averages over:
                # the gradient of the global batch's mean loss, however unevenly the batch was split.
                scale = world / min(recipe.batch_size, len(x) - i * recipe.batch_size)
                # With micro_batch the batch runs in parts whose gradients add up before the step (each
                # backward frees its part's activations); with several processes gradients are averaged
                # once, after the last part.
                part_size = recipe.micro_batch or len(xb)
                optimizer.zero_grad(set_to_none=True)
                step_loss = torch.zeros((), device=dev)
                for p in range(0, len(xb), part_size):
                    part = slice(p, p + part_size)
                    with nullcontext() if p + part_size >= len(xb) else distributed.no_sync(trained):
                        with autocast(dev, recipe.bf16):
                            logits = trained(xb[part])
                        loss = training_loss(
                            logits.float(),
                            yb[part],
                            None if tb is None else tb[part],
                            weight=recipe.distill_weight,
                            temperature=recipe.distill_temperature,
                            label_smoothing=recipe.label_smoothing,
                        )
                        (loss * scale).backward()
                    step_loss += loss.detach()
                    correct += (logits.argmax(1) == yb[part]).sum()
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(trained)
                loss_sum += step_loss
                seen += len(yb)
                if changed := cpu.follow_load():  # another program started or stopped using the CPU
                    threads_used.append([epoch * steps + i + 1, cpu.count])
                    if progress:
                        bar.write(changed, file=sys.stderr)
                    if clock:
                        clock.restart()
                if progress and clock and (line := clock.step(epoch, len(yb) * world, (i + 1) * len(yb) * world, side)):
                    bar.write(line, file=sys.stderr)
                if progress and time.monotonic() >= next_postfix:  # this epoch's figures so far, as often as shown
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}", refresh=False
                    )
                    next_postfix = time.monotonic() + bar.mininterval / 2
            loss_total, correct_total, seen_total = distributed.all_sum(loss_sum, correct, seen)
            seconds = time.perf_counter() - t0

            # Validate the weights the run keeps: the EMA average when the recipe uses one.
            kept = net if ema is None else ema.module
            distributed.broadcast_buffers(kept)  # rank 0's BatchNorm statistics: the ones checkpointed
            val_loss, val_acc = (None, None)  # no validation split: the last epoch is the best we can know of
            if len(split.x_val):
                val_loss, val_acc = evaluate_loss_acc(kept, split.x_val, split.y_val, dev, bf16=recipe.bf16)
            row = dict(
                epoch=epoch + 1,
                train_loss=loss_total / seen_total,
                train_acc=correct_total / seen_total,
                val_loss=val_loss,
                val_acc=val_acc,
                lr=optimizer.param_groups[0]["lr"],
                image_size=side,
                seconds=seconds,
                threads=threads_used[0],
                thread_changes=threads_used[1:],  # [step, count] from that step on
            )
            if progress:
                tqdm.write(
                    f"epoch {epoch + 1:3d}/{recipe.epochs}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.4f}  "
                    f"val_loss {_fmt(val_loss)}  val_acc {_fmt(val_acc)}  {seconds:.1f}s"
                )
            _check_finite(out, epoch, recipe, {"training loss": row["train_loss"], "validation loss": val_loss})
            history.append(row)
            improved = recipe.select == "last" or val_acc is None or best_acc is None or val_acc > best_acc
            if improved:
                best_acc, best_epoch = val_acc, epoch
            if main:  # one run directory, written by rank 0
                checkpoint = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "history": history,
                    "best_acc": best_acc,
                    "best_epoch": best_epoch,
                    "epoch": epoch + 1,
                    "global_batch": recipe.batch_size,
                    "threads": cpu.fixed,
                }
                _save_checkpoint(out, _full_state(model, net, kept), checkpoint, improved)
            # Every callback sees the epoch, on rank 0 only; what they decide holds for every process.
            stop = main and any([callback.on_epoch_end(row) for callback in callbacks])
            if distributed.share(stop):
                break  # a callback asked to stop (e.g. a pruned trial): finish the run like early stopping

        # --- finish: the run's summary files
        if main:
            _finish(model, net, recipe, history, best_acc, best_epoch, out, dev, cpu, callbacks)
    return out


# --- set-up ---------------------------------------------------------------------------------------------------------


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


def _model_and_data(
    recipe: Recipe, data: CIFAR10, config: dict[str, Any], subset: int | None, dev: torch.device
) -> tuple[nn.Module, nn.Module, Split]:
    """The model, the part that trains (the model, or its head on cached features), and what that part trains on."""
    torch.manual_seed(recipe.seed)
    if recipe.frozen_features:
        model = build_model(config).to(dev, memory_format=torch.channels_last)
        return model, model.head, frozen_feature_split(model, data, recipe, subset)
    split = prepare_split(data, recipe.val_fraction, recipe.seed, subset)
    if recipe.teacher:
        split.teacher = teacher_split_logits(recipe, data, subset, str(dev))
    model = build_model(config)
    if hasattr(model, "data_init"):  # data-dependent initialisation, in [0, 1] pixels a chunk at a time
        model.data_init(unit_range(chunk) for chunk in split.x_train.split(DATA_INIT_CHUNK))
    model = model.to(dev, memory_format=torch.channels_last)
    return model, model, split


def _for_training(net: nn.Module, recipe: Recipe, dev: torch.device) -> nn.Module:
    """``net`` as the processes train it: in DDP with several, compiled where the recipe asks and it pays."""
    trained = distributed.wrap(net, dev, recipe.sync_bn)
    if recipe.compile and dev.type == "cuda":
        net.compile()  # in place: parameter names, and so checkpoints, stay as they are
    elif recipe.compile:
        warnings.warn(  # benchmarks/results/issue13/train_step_compile.txt
            f"compile=true is for CUDA; on {dev.type} it trains uncompiled (torch.compile was slower there)",
            stacklevel=3,
        )
    return trained


def _resumed(
    state: dict[str, Any] | None, model: nn.Module, optimizer: OptimizerChain, ema: AveragedModel | None, out: Path
) -> tuple[list[dict[str, Any]], float | None, int, int]:
    """History, best accuracy, best epoch, next epoch from ``state`` (or afresh); learning rates stay the recipe's."""
    if state is None:
        return [], None, -1, 0
    recipe_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    _load_state(model, optimizer, ema, state, out)
    for group, lr in zip(optimizer.param_groups, recipe_lrs):
        group["initial_lr"] = lr
    return state["history"], state["best_acc"], state["best_epoch"], state["epoch"]


# --- starting, resuming, and the run directory -----------------------------------------------------------------------

# config.json keys that say where the data lay and what it was: compared by fingerprint on resume, not by path.
DATA_KEYS = ("data_source", "data_fingerprints")
# Recipe fields a resume may change: a lower lr continues a run that diverged.
RESUME_MAY_CHANGE = ("lr",)


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

    Without a checkpoint no epoch finished, so the run starts again, ``resume`` or not. The data may have moved
    since: its fingerprint, not its path, must match.
    """
    state_path = out / "resume.pt"
    if not state_path.is_file():
        return None
    if not resume:
        raise CifarkitError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    saved = read_config(out)
    saved = {**recipe_from_config(saved).to_dict(), **saved}  # recipe fields newer than the run: their defaults
    ignored = DATA_KEYS + RESUME_MAY_CHANGE
    changed = sorted(k for k in set(saved) | set(config) if k not in ignored and saved.get(k) != config.get(k))
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
    """Write an epoch's weights, checkpoint and history atomically; a full disk says so, and that the run resumes."""
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
            f"{kept} in {out}; continue with a lower learning rate: `cifarkit train --resume --out {out} "
            f"--set lr={recipe.lr / 4:g}` (now {recipe.lr:g})"
        )


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


# --- finish ---------------------------------------------------------------------------------------------------------


def _finish(
    model: nn.Module,
    net: nn.Module,
    recipe: Recipe,
    history: list[dict[str, Any]],
    best_acc: float | None,
    best_epoch: int,
    out: Path,
    dev: torch.device,
    cpu: Threads,
    callbacks: Sequence[Callback],
) -> None:
    """The run's summary files (history table, curves, metrics.json with the machine), and the callbacks' end."""
    write_csv(out / "history.csv", history)
    plot_history(history, out / "curves.png", title=recipe.name)
    counts = sorted({r["threads"] for r in history} | {n for r in history for _, n in r["thread_changes"]})
    metrics = {
        "params": count_parameters(model),
        "trainable_params": count_parameters(net, trainable_only=True),
        "epochs_run": len(history),
        "best_epoch": best_epoch + 1,
        "best_val_acc": best_acc,
        "train_seconds": sum(r["seconds"] for r in history),
        "cifarkit_version": __version__,
        "torch_version": torch.__version__,
        "device": str(dev),
        "processes": distributed.world_size(),
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_kind": cpu_kind(),
            "torch": torch.__version__,
            "precision": precision_name(recipe.bf16),
            "threads": {"fixed": cpu.fixed, "used": counts},
        },
    }
    write_json(out / "metrics.json", metrics)
    for callback in callbacks:
        callback.on_train_end(metrics)
