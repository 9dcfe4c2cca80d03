"""Seconds per training epoch of a notebook CNN at the notebook's batch size, through cifarkit's own loop.

The reference is the notebook's Keras 3.15 / TensorFlow-CPU 2.21 pipeline on
this 2-core machine: a median of 101.7 s per epoch for seed_cnn3 and 72.5 s for
seed_cnn1 (45,000 training images, batch 32, 1,407 steps). Pixel values do
not change the work done, so random images stand in for CIFAR-10 here.

    python benchmarks/epoch_time.py --model seed_cnn3 --epochs 2 --threads 2
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from cifarkit.data.dataset import CIFAR10
from cifarkit.optim import build_optimizer, lr_multiplier
from cifarkit.recipes import get_recipe
from cifarkit.runs import build_model
from cifarkit.train import pick_device, prepare_split, train_one_epoch

KERAS_SECONDS_PER_EPOCH = {"seed_cnn3": 101.7, "seed_cnn1": 72.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="seed_cnn3", choices=sorted(KERAS_SECONDS_PER_EPOCH))
    parser.add_argument("--epochs", type=int, default=2, help="epochs to time (the median is reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    recipe = get_recipe(args.model).replace(epochs=args.epochs)
    rng = np.random.default_rng(0)
    data = CIFAR10(rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 50_000),
                   np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), source="random")
    split = prepare_split(data, recipe.val_fraction, recipe.seed, subset=None)
    device = pick_device("cpu")
    model = build_model(recipe.to_dict()).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe)
    lr_at = lr_multiplier("constant", 1)

    times = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        train_one_epoch(model, optimizer, split, recipe, epoch, lr_at, 0, device, None, progress=False)
        times.append(time.perf_counter() - t0)
        print(f"epoch {epoch + 1}: {times[-1]:.1f} s")
    median = statistics.median(times)
    keras = KERAS_SECONDS_PER_EPOCH[args.model]
    result = {
        "model": args.model, "train_images": len(split.x_train), "batch_size": recipe.batch_size,
        "steps": -(-len(split.x_train) // recipe.batch_size), "threads": args.threads,
        "seconds_per_epoch": times, "median_seconds": median, "images_per_second": len(split.x_train) / median,
        "keras_seconds": keras, "speedup_vs_keras": keras / median,
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    print(f"{args.model}: median {median:.1f} s/epoch, {result['images_per_second']:.0f} images/s, "
          f"{result['steps']} steps of {recipe.batch_size}; Keras {keras} s -> {result['speedup_vs_keras']:.2f}x faster")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
