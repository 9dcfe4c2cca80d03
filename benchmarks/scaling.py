"""Data-parallel scaling: the same short recipe trained by 1 process and by N processes (torchrun, DDP).

Each launch is ``python -m torch.distributed.run --standalone --nproc_per_node=P -m cifarkit train ...``
with ``--threads cores // P``, so every launch uses all the cores. The recipe is unchanged: by default the
global batch stays the recipe's and is split between the processes. For each launch the script prints
training throughput (training images per second of training time), test accuracy (evaluated by the same
processes, sharded) and wall time, then the throughput ratio against one process, and the communication
volume of one training step: the bytes of gradients DDP all-reduces (every trainable parameter's float32
gradient), and what a ring all-reduce sends from each process (2 (P-1)/P of it; as much again arrives),
which is what a multi-GPU or multi-machine run would carry per step.

On a machine with a couple of cores the point is correctness, not speed: P processes of cores/P threads
do the same arithmetic as one process with all the threads, plus the all-reduce and P copies of the
data preparation. The machine (cifarkit.runtime.machine_info) and its load average before each launch
are printed and kept in the JSON.

    python benchmarks/scaling.py --recipe fast90 --subset 5000 --epochs 2 --data /work/shared/data/cifar10 \\
        --json benchmarks/results/scaling_fast90.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cifarkit.data import load_cifar10
from cifarkit.files import write_json
from cifarkit.recipes import get_recipe
from cifarkit.runs import split_indices
from cifarkit.runtime import machine_info
from provenance import record

GRADIENT_BYTES = 4  # DDP all-reduces gradients in the parameters' dtype: float32 (autocast leaves them so)


def launch(processes: int, threads: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train (and evaluate) the recipe on ``processes`` processes; the run's figures and the wall time."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "cifarkit",
        "train",
        "--recipe",
        args.recipe,
        "--epochs",
        str(args.epochs),
        "--threads",
        str(threads),
        "--out",
        str(out),
    ]
    command += ["--subset", str(args.subset)] if args.subset else []
    command += ["--data", args.data] if args.data else []
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "processes": processes,
        "threads_per_process": threads,
        "load_average_before": load,
        "wall_seconds": wall,
        "train_seconds": metrics["train_seconds"],
        "epochs_run": metrics["epochs_run"],
        "test_acc": metrics["test_acc"],
        "test_acc_tta": metrics.get("test_acc_tta"),
        "trainable_params": metrics["trainable_params"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast90")
    parser.add_argument("--subset", type=int, default=5000, help="class-balanced training images (0: all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="threads of all processes together")
    parser.add_argument("--data", default=os.environ.get("CIFARKIT_DATA"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    provenance = record(args.cores)  # threads of all processes together
    machine = machine_info("cpu")
    print("machine:", json.dumps(machine))
    recipe = get_recipe(args.recipe)
    train_images = len(
        split_indices(load_cifar10(args.data).y_train, recipe.val_fraction, recipe.seed, args.subset or None)[0]
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="cifarkit-scaling-") as work:
        for processes in args.processes:
            row = launch(processes, max(1, args.cores // processes), args, Path(work) / f"p{processes}")
            row["images_per_second"] = train_images * row["epochs_run"] / row["train_seconds"]
            rows.append(row)
            tta = f"{row['test_acc_tta']:.4f}" if row["test_acc_tta"] is not None else "n/a"
            print(
                f"{processes} process(es) x {row['threads_per_process']} thread(s): "
                f"{row['images_per_second']:.0f} training images/s, test acc {row['test_acc']:.4f} "
                f"(TTA {tta}), {row['wall_seconds']:.0f} s wall, load {row['load_average_before']:.1f} before"
            )
    for row in rows[1:]:
        row["throughput_ratio"] = row["images_per_second"] / rows[0]["images_per_second"]
        print(f"throughput {row['processes']} vs {rows[0]['processes']} process(es): {row['throughput_ratio']:.2f}x")

    batch = recipe.batch_size  # the global batch, the same on any number of processes
    gradient_bytes = rows[0]["trainable_params"] * GRADIENT_BYTES
    ring = {p: 2 * (p - 1) / p * gradient_bytes for p in (2, 4, 8)}
    steps = math.ceil(train_images / batch)
    print(
        f"communication per step: {gradient_bytes / 1e6:.2f} MB of gradients all-reduced "
        f"({rows[0]['trainable_params']:,} float32 values); a ring all-reduce sends from each process "
        + ", ".join(f"{b / 1e6:.2f} MB at {p} processes" for p, b in ring.items())
        + f"; {steps} steps per epoch of {train_images:,} images at global batch {batch}"
    )
    if args.json:
        result = {
            **provenance,
            "recipe": recipe.name,
            "subset": args.subset,
            "epochs": args.epochs,
            "train_images": train_images,
            "global_batch": batch,
            "steps_per_epoch": steps,
            "runs": rows,
            "gradient_bytes_per_step": gradient_bytes,
            "ring_bytes_sent_per_process_per_step": {str(p): b for p, b in ring.items()},
            "runtime": machine,
        }
        write_json(args.json, result)


if __name__ == "__main__":
    main()
