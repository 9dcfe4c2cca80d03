"""Time to accuracy: train a recipe on the full data several times, with different seeds.

For each run it prints the wall time (training plus test-set evaluation with
the recipe's TTA), the test accuracy with and without TTA, then the mean and
spread over runs, and writes everything, with the machine it ran on (CPU
model and kind, native bf16 or not, cores, threads, torch) and the precision
each run trained in, to JSON. Training seconds (the epochs alone, from the
run's metrics) are reported too.

    python benchmarks/time_to_accuracy.py --recipe fast93 --runs 2 --threads 2 \
        --data ../shared/data/cifar10 --json benchmarks/results/fast93.json

For a frozen-feature recipe, point CIFARKIT_CACHE at an empty folder: the first
run then pays for the backbone pass over all 60,000 images (cold cache), and
the second reuses the cached features, i.e. retrains the head (warm cache).

A distillation recipe (``--set teacher=RUN_DIR``) has the teacher's outputs
cached before the first run, timed apart as the teacher's one-off cost
(``teacher_cache_seconds``), so every run's wall time is the student's alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cifarkit.data import load_cifar10
from cifarkit.evaluate import evaluate
from cifarkit.files import write_json
from cifarkit.recipes import get_recipe
from cifarkit.runtime import keep_freed_memory, machine_info
from cifarkit.train import teacher_split_logits, train
from provenance import record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast93")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", help="CIFAR-10 location (default $CIFARKIT_DATA)")
    parser.add_argument("--out", help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="recipe override")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does: without it each training step here took about 1.5x as long
    provenance = record(args.threads)
    machine = machine_info()
    print(f"machine: {json.dumps(machine)}", flush=True)

    data = load_cifar10(args.data)
    base = get_recipe(args.recipe).replace(**dict(item.split("=", 1) for item in args.set))
    root = Path(args.out or tempfile.mkdtemp(prefix="tta-bench-"))
    teacher_seconds = None
    if base.teacher:
        t0 = time.perf_counter()
        teacher_split_logits(base, data, None)  # the cache every seed's run then reads
        teacher_seconds = time.perf_counter() - t0
        print(f"teacher outputs cached (or found in the cache) in {teacher_seconds:.0f} s", flush=True)
    runs = []
    for i in range(args.runs):
        recipe = base.replace(seed=args.first_seed + i)
        t0 = time.perf_counter()
        run_dir = train(recipe, data, root / f"{recipe.name}-seed{recipe.seed}", progress=False, threads=args.threads)
        metrics = evaluate(run_dir, data)
        wall = time.perf_counter() - t0
        train_seconds = json.loads((run_dir / "metrics.json").read_text())["train_seconds"]
        bf16 = json.loads((run_dir / "config.json").read_text()).get("bf16", False)  # as resolved for this machine
        row = {
            "seed": recipe.seed,
            "wall_seconds": wall,
            "train_seconds": train_seconds,
            "bf16": bf16,
            "test_acc": metrics["test_acc"],
            "test_acc_tta": metrics.get("test_acc_tta"),
            "run_dir": str(run_dir),
        }
        runs.append(row)
        tta = f"{row['test_acc_tta']:.4f}" if row["test_acc_tta"] is not None else "n/a"
        print(
            f"run {i + 1}/{args.runs} seed {recipe.seed}: {wall / 60:.1f} min ({train_seconds:.0f} s training), "
            f"test acc {row['test_acc']:.4f}, with TTA {tta}",
            flush=True,
        )

    def summary(key: str) -> dict[str, float]:
        values = [r[key] for r in runs if r[key] is not None]
        if not values:
            return {}
        return {
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }

    result = {
        **provenance,
        "recipe": base.to_dict(),
        "runs": runs,
        "wall_seconds": summary("wall_seconds"),
        "train_seconds": summary("train_seconds"),
        "test_acc": summary("test_acc"),
        "test_acc_tta": summary("test_acc_tta"),
        "teacher_cache_seconds": teacher_seconds,
        "runtime": machine,
    }
    for key in ("wall_seconds", "train_seconds", "test_acc", "test_acc_tta"):
        if result[key]:
            s = result[key]
            print(f"{key}: mean {s['mean']:.4f}  std {s['std']:.4f}  range {s['min']:.4f}-{s['max']:.4f}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
