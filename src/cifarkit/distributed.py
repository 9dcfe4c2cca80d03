"""Data-parallel training on many processes, GPUs and machines, with torch.distributed and torchrun.

``torchrun --nproc_per_node=N -m cifarkit train ...`` starts N copies of the command; :func:`setup` joins them
into one process group (NCCL between GPUs, gloo between CPUs), and the rest shares work (:func:`shard`,
:func:`gather_rows`) and results (:func:`all_sum`, :func:`share`, :func:`on_main`, ...) between them; rank 0
alone writes files and prints (docs/distributed.md). A process alone gets the obvious no-op from every function,
so the training loop has one code path. A dead process makes the others' next collective fail, or time out after
``$CIFARKIT_DIST_TIMEOUT`` seconds, rather than hang.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cifarkit.errors import CifarkitError
from cifarkit.runtime import env_int, pick_device, stop_with_launcher

T = TypeVar("T")
TIMEOUT_ENV = "CIFARKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600  # NCCL's own default; gloo's 30 minutes would leave a dead launch hanging for long


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """How many processes train together: the process group's size, or torchrun's ``WORLD_SIZE`` before it exists."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's place among them, 0 to world_size() - 1 (``RANK`` before the group exists)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else env_int("RANK", 0)


def local_rank() -> int:
    """This process's place on its own machine (torchrun's ``LOCAL_RANK``): the GPU it uses."""
    return env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Whether this is rank 0, which alone writes files and prints progress."""
    return rank() == 0


def timeout() -> timedelta:
    """How long a collective waits for the other processes before failing: ``$CIFARKIT_DIST_TIMEOUT`` seconds."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise CifarkitError(f"${TIMEOUT_ENV} is {text!r}; give a number of seconds > 0 (default {DEFAULT_TIMEOUT_S})")
    return timedelta(seconds=seconds)


def _local_device(name: str) -> torch.device:
    """The device of this process in a multi-process launch: GPU number LOCAL_RANK where ``name`` means CUDA."""
    device = pick_device(name)
    if device.type == "mps":
        raise CifarkitError("torch.distributed cannot train on Apple's MPS; launch with --device cpu")
    if device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        if local_rank() >= count:
            raise CifarkitError(
                f"local rank {local_rank()} has no GPU: this machine has {count}; "
                f"start at most {count} processes per machine (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank())
    return device


def setup(device: str = "auto") -> torch.device:
    """This process's device, after joining the process group when torchrun started several processes.

    With several, ``auto`` or ``cuda`` is the GPU numbered ``LOCAL_RANK``; called again it only returns the device.
    """
    stop_with_launcher()
    if world_size() == 1:
        return pick_device(device)
    dev = _local_device(device)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo", timeout=timeout(), device_id=dev if dev.type == "cuda" else None
        )
        atexit.register(_shutdown)
    return dev


def _shutdown() -> None:
    """Destroy the process group while Python is still whole, at exit.

    Garbage is collected first: DDP wrappers in reference cycles hold the group, and a group destroyed in the
    interpreter's final teardown had gloo's threads abort the process (SIGABRT).
    """
    gc.collect()
    dist.destroy_process_group()


def describe(batch_size: int) -> str:
    """One line for the start of a run: the processes, their backend, and each one's share of the global batch."""
    world = world_size()
    shares = sorted({stop - start for start, stop in (_bounds(batch_size, r, world) for r in range(world))})
    where = f"{world} processes ({dist.get_backend()})" if is_distributed() else "1 process"
    return f"{where}, global batch {batch_size} ({'-'.join(map(str, shares))} per process)"


def check_sync_bn(sync_bn: bool, device: torch.device) -> None:
    """Refuse ``sync_bn`` where PyTorch cannot do it: its SyncBatchNorm runs on GPUs only."""
    if sync_bn and world_size() > 1 and device.type != "cuda":
        raise CifarkitError(
            "sync_bn=true needs CUDA GPUs (PyTorch's SyncBatchNorm); on CPUs set sync_bn=false "
            "(each process then normalises with its own part of the batch)"
        )


def wrap(module: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """``module`` as the processes train it together: in DistributedDataParallel, or as it is when alone.

    DDP averages the gradients in every backward pass, so each process's optimiser steps along the same gradient.
    ``sync_bn``: SyncBatchNorm (global batch statistics) on the same parameters, so optimisers stay valid.
    """
    if not is_distributed():
        return module
    if sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def no_sync(module: nn.Module) -> contextlib.AbstractContextManager:
    """Gradients of the block's backward passes kept local (added to by the next), where ``module`` is DDP."""
    return module.no_sync() if isinstance(module, DistributedDataParallel) else contextlib.nullcontext()


def shard(n: int) -> slice:
    """This process's contiguous part of ``n`` items: near-equal parts in rank order (sizes differ by at most 1)."""
    return slice(*_bounds(n, rank(), world_size()))


def _bounds(n: int, r: int, world: int) -> tuple[int, int]:
    per, extra = divmod(n, world)
    start = r * per + min(r, extra)
    return start, start + per + (r < extra)


def _comm_device() -> torch.device:
    """Where tensors must be for the backend: the process's GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(*values: float | torch.Tensor) -> list[float]:
    """Each value summed over all processes (in float64, so counts stay exact), as Python floats."""
    if not is_distributed():
        return [float(v) for v in values]
    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(total)
    return total.tolist()


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process: for decisions all of them must take together."""
    return all_sum(float(flag))[0] == world_size()


def gather_rows(part: np.ndarray, total: int) -> np.ndarray:
    """Every process's ``part`` (its :func:`shard` of ``total`` rows), concatenated in rank order, on every process."""
    if not is_distributed():
        return part
    world = world_size()
    sizes = [stop - start for start, stop in (_bounds(total, r, world) for r in range(world))]
    rows = torch.from_numpy(np.ascontiguousarray(part)).to(_comm_device())
    # all_gather moves equal-sized tensors: pad every part to the longest (rank 0's), then cut the padding off.
    padded = rows.new_zeros((sizes[0], *rows.shape[1:]))
    padded[: len(rows)] = rows
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)]).cpu().numpy()


def share(value: T) -> T:
    """Rank 0's ``value`` on every process, sent pickled: decisions, a run's saved training state."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run once, on rank 0, and its result, or its :class:`CifarkitError`, given to every process.

    For what reads the run directory, which only rank 0's machine may see.
    """
    if not is_distributed():
        return fn()
    outcome = None
    if is_main():
        try:
            outcome = (True, fn())
        except CifarkitError as e:
            outcome = (False, str(e))
    ok, value = share(outcome)
    if not ok:
        raise CifarkitError(value)
    return value


def broadcast_buffers(module: nn.Module) -> None:
    """Give every process rank 0's buffers of ``module`` (BatchNorm running statistics): the checkpointed ones."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
