"""Training-step throughput of registered models on this CPU (FastNet presets by default).

Times forward + backward + Nesterov-SGD step on random 32x32 images (pixel
values do not change the work) for each model, batch size and memory format,
and prints images/s and ms/step (of the fastest timed step; the median step
too), the model's forward GFLOP per image (conv and linear multiply-adds
counted with forward hooks, x2) and the achieved GFLOP/s, taking a training
step as 3x the forward FLOPs (forward, input grad, weight grad). Epoch
seconds = 50,000 / (images/s), which is what sizes a recipe's width and epochs
to a time budget. On a machine shared with other busy processes, compare
``--threads 1`` with 2: OpenMP threads that wait for each other at every op
can make 2 threads slower than 1.

    python benchmarks/train_step.py                        # FastNet sweep (several minutes)
    python benchmarks/train_step.py --models fastnet_s --batch-sizes 512 --steps 2
    python benchmarks/train_step.py --bf16 false true      # float32 beside bfloat16 autocast
    python benchmarks/train_step.py --models efficientnet_lite0 --input-size 160 --batch-sizes 32
    python benchmarks/train_step.py --models fastnet_s --compile false true   # torch.compile (inductor) beside eager
    python benchmarks/train_step.py --models fastnet_s --image-sizes 32 24 16  # progressive resizing's sizes

``--bf16`` takes the recipes' values: ``auto`` (the default: bfloat16 where
the CPU has it natively, AVX512-BF16 or AMX, else float32), ``true`` or
``false``; several values time each precision they resolve to. The first line
printed describes the machine (CPU model and kind, cores, threads, torch);
``--json FILE`` also writes every row with the command, commit, date and machine
(its matmul throughput measured), as the tables in the README read them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from cifarkit.files import write_json
from cifarkit.models import create_model, list_models
from cifarkit.runtime import autocast, keep_freed_memory, machine_info, resolve_bf16
from provenance import record

PRESETS = ("fastnet_xs", "fastnet_s", "fastnet_m", "fastnet_l")
TRAIN_IMAGES = 50_000
BF16_SETTINGS = {"auto": "auto", "true": True, "false": False}


@contextmanager
def count_macs(model: nn.Module) -> Iterator[list[int]]:
    """Collect multiply-accumulates of every Conv2d and Linear run inside the block."""
    macs: list[int] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        macs.append(output.numel() * per_output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        yield macs
    finally:
        for h in handles:
            h.remove()


def forward_gflop_per_image(model: nn.Module, size: int = 32) -> float:
    """Forward GFLOP (2 x MACs) for one ``size`` x ``size`` image."""
    with torch.no_grad(), count_macs(model) as macs:
        model.eval()(torch.rand(1, 3, size, size))
    return 2 * sum(macs) / 1e9


def time_steps(
    model: nn.Module, batch_size: int, steps: int, warmup: int, bf16: bool, size: int = 32
) -> tuple[float, float]:
    """(median, fastest) seconds per training step, after ``warmup`` untimed steps (oneDNN picks kernels then).

    On a machine shared with other processes the fastest step is the better
    estimate of what an unloaded run gets; the median is what this run got.
    A compiled model compiles in its first (warm-up) step.
    """
    model.train()
    x = torch.rand(batch_size, 3, size, size)
    y = torch.randint(0, 10, (batch_size,))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.85, nesterov=True)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with autocast(torch.device("cpu"), bf16):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PRESETS), choices=[m.name for m in list_models()])
    parser.add_argument("--input-size", type=int, help="input_size for transfer models (upsampling inside)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument(
        "--formats", nargs="+", default=["channels_last", "contiguous"], choices=["channels_last", "contiguous"]
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--bf16",
        nargs="+",
        default=["auto"],
        choices=["auto", "true", "false"],
        help="precision as in a recipe: auto (bf16 where native), true, false; several to compare",
    )
    parser.add_argument(
        "--compile",
        nargs="+",
        default=["false"],
        choices=["false", "true"],
        help="torch.compile the model (inductor; compiles in the warm-up step); several to compare",
    )
    parser.add_argument("--image-sizes", nargs="+", type=int, default=[32], help="image sides (progressive resizing)")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's allocator as it is, to measure what cifarkit.runtime gains",
    )
    parser.add_argument("--json", help="also write the rows, with the command, commit, date and machine, here")
    args = parser.parse_args()
    malloc = "glibc default" if args.default_malloc else f"tuned: {keep_freed_memory()}"
    # Explicit, so numbers are comparable between machines and with the 2-core target.
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    # Each setting resolved as a recipe's would be (an emulated bf16 warns); duplicates timed once.
    precisions = list(dict.fromkeys(resolve_bf16(BF16_SETTINGS[b], torch.device("cpu")) for b in args.bf16))

    provenance = record(args.threads)
    print(f"machine: {json.dumps(machine_info('cpu'))}")
    print(f"malloc {malloc}")
    rows = []
    print(
        f"{'model':<18} {'batch':>5} {'size':>4} {'format':<26} {'img/s':>7} {'ms/step':>8} {'median':>7} "
        f"{'fwd GFLOP/img':>13} {'GFLOP/s':>8} {'s/epoch':>8}"
    )
    kwargs = {"input_size": args.input_size} if args.input_size else {}
    for name in args.models:
        settings = [
            (fmt, bf16, compiled, size)
            for size in args.image_sizes
            for fmt in args.formats
            for bf16 in precisions
            for compiled in args.compile
        ]
        for batch_size in args.batch_sizes:
            for fmt, bf16, compiled, size in settings:
                model = create_model(name, **kwargs)
                model = model.to(memory_format=getattr(torch, fmt.replace("contiguous", "contiguous_format")))
                gflop = forward_gflop_per_image(model, size)
                if compiled == "true":
                    model.compile()
                median, fastest = time_steps(model, batch_size, args.steps, args.warmup, bf16, size)
                images_per_s = batch_size / fastest
                label = fmt + ("+bf16" if bf16 else "") + ("+compile" if compiled == "true" else "")
                rows.append(
                    {
                        "model": name,
                        "batch_size": batch_size,
                        "image_size": size,
                        "format": fmt,
                        "bf16": bf16,
                        "compile": compiled == "true",
                        "images_per_second": images_per_s,
                        "ms_per_step": 1e3 * fastest,
                        "median_ms_per_step": 1e3 * median,
                        "forward_gflop_per_image": gflop,
                        "gflop_per_second": 3 * gflop * images_per_s,
                    }
                )
                print(
                    f"{name:<18} {batch_size:>5} {size:>4} {label:<26} {images_per_s:>7.0f} {1e3 * fastest:>8.0f} "
                    f"{1e3 * median:>7.0f} {gflop:>13.3f} {3 * gflop * images_per_s:>8.1f} "
                    f"{TRAIN_IMAGES / images_per_s:>8.0f}",
                    flush=True,
                )
    if args.json:
        result = {**provenance, "runtime": machine_info("cpu"), "malloc": malloc, "input_size": args.input_size}
        write_json(args.json, {**result, "rows": rows})


if __name__ == "__main__":
    main()
