"""Peak resident memory of one training epoch of each recipe, each in a fresh `cifarkit train` process.

Memory is what decides whether a recipe runs on an 8 GB laptop at all. Each
recipe trains one epoch on a subset (``cifarkit train --subset N --epochs 1
--no-eval``, the default threads) and the kernel's accounting of that process
(``ru_maxrss`` from ``wait4``) gives its peak. The whole training set adds its
images and each epoch's augmented copy (uint8: about 0.15 GB each for 49,000
images) to a subset's figure; the default command's full run is measured end
to end in the README (``whole_command.py``). The distillation recipes are fast93/fast94 plus a teacher's logits
(2 MB) and need a trained teacher run, so they are left out.

    python benchmarks/peak_memory.py --data ../shared/data/cifar10 --subset 5000 \
        --json benchmarks/results/issue18/peak_memory.json
    python benchmarks/peak_memory.py --data ../shared/data/cifar10 --subset 5000 --recipes fast93 \
        --set micro_batch=0 --json benchmarks/results/issue18/peak_memory_fast93_whole_batch.json

Run it alone on the machine: its seconds are printed too, and mean nothing beside other work.
"""

from __future__ import annotations

import argparse
import os

from cifarkit.files import write_json
from cifarkit.recipes import RECIPES
from cifarkit.runtime import machine_info
from provenance import record
from under_load import timed_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("CIFARKIT_DATA"), help="CIFAR-10 (default $CIFARKIT_DATA)")
    parser.add_argument("--recipes", nargs="+", default=[name for name in RECIPES if not name.startswith("distill")])
    parser.add_argument("--subset", type=int, default=5000, help="training images of the epoch (default 5000)")
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE for every recipe, as in train")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not args.data:
        raise SystemExit("pass --data or set CIFARKIT_DATA")
    provenance = record()  # the default threads, as the timed commands use
    machine = machine_info()
    print(f"{machine['cpu_model']}, {machine['cpu_kind']}, {os.cpu_count()} cores; {args.subset:,} images", flush=True)
    rows = {}
    for recipe in args.recipes:
        rows[recipe] = timed_epoch(recipe, None, False, args, args.set)
        print(f"{recipe:<22} {rows[recipe]['peak_rss_mb']:6,} MB  {rows[recipe]['seconds']:7.1f} s", flush=True)
    if args.json:
        result = {**provenance, "runtime": machine, "subset": args.subset, "set": args.set, "recipes": rows}
        write_json(args.json, result)


if __name__ == "__main__":
    main()
