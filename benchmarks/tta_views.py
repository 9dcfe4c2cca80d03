"""Test accuracy of trained runs under test-time augmentations with more views than the recipes' TTA modes.

TTA costs no training compute, so more views would be a free lever for the time-to-accuracy target (issue 26)
if they helped. Each run's test images (and its validation images) are classified once per view, each
view a translation by (dy, dx) pixels with the reflected border (``cifarkit.inference``'s own shift) and its
mirror image; the view sets below are then weighted averages of those logits:

    airbench      the recipes' ``flip_translate``: half the image and its mirror, half the mirrored pair
                  shifted one pixel up-left and down-right
    cross         half the image and its mirror, half the four one-pixel shifts along the axes
    diagonals     half the image and its mirror, half the four one-pixel diagonal shifts
    ring          half the image and its mirror, half all eight one-pixel shifts
    grid          the 3x3 one-pixel shifts, equally weighted
    grid+2        two fifths on the image and its mirror, two fifths on the eight one-pixel shifts and a fifth
                  on the four two-pixel shifts along the axes

    python benchmarks/tta_views.py RUN_DIR [RUN_DIR ...] --data ../shared/data/cifar10 --threads 2 --json FILE
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from cifarkit.data import load_cifar10
from cifarkit.files import write_json
from cifarkit.inference import _shift, predict_logits
from cifarkit.runs import load_model, native_run_bf16, read_config, validation_set
from provenance import record

ONE = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
TWO = [(-2, 0), (2, 0), (0, -2), (0, 2)]


def _even(shifts: list[tuple[int, int]], weight: float) -> dict[tuple[int, int], float]:
    return {shift: weight / len(shifts) for shift in shifts}


CENTRE = {(0, 0): 0.5}
VIEW_SETS = {  # shift -> weight of the shifted image and its mirror together
    "none": {(0, 0): 1.0},  # the image alone (the only set without its mirror)
    "flip": {(0, 0): 1.0},
    "airbench": {**CENTRE, **_even([(-1, -1), (1, 1)], 0.5)},
    "cross": {**CENTRE, **_even([(-1, 0), (1, 0), (0, -1), (0, 1)], 0.5)},
    "diagonals": {**CENTRE, **_even([(-1, -1), (1, 1), (-1, 1), (1, -1)], 0.5)},
    "ring": {**CENTRE, **_even(ONE, 0.5)},
    "grid": _even([(0, 0), *ONE], 1.0),
    "grid+2": {(0, 0): 0.4, **_even(ONE, 0.4), **_even(TWO, 0.2)},
}


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """uint8 images (N, H, W, 3) translated by (dy, dx) as the recipes' TTA translates them."""
    return _shift(torch.from_numpy(images).permute(0, 3, 1, 2), dy, dx).permute(0, 2, 3, 1).numpy()


def view_accuracies(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, bf16: bool) -> dict[str, float]:
    """Accuracy of every view set, each shift classified once with and once without the mirror."""
    shifts = sorted({shift for views in VIEW_SETS.values() for shift in views})
    logits = {}
    for dy, dx in shifts:
        view = shifted(images, dy, dx)
        logits[dy, dx, False] = predict_logits(model, view, bf16=bf16)
        logits[dy, dx, True] = predict_logits(model, np.ascontiguousarray(view[:, :, ::-1]), bf16=bf16)
    result = {}
    for name, views in VIEW_SETS.items():
        mirrors = (False,) if name == "none" else (False, True)
        mean = sum(w / len(mirrors) * logits[s[0], s[1], m] for s, w in views.items() for m in mirrors)
        result[name] = float((mean.argmax(1) == labels).mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="trained run directories (fastnet recipes: 32x32 inputs)")
    parser.add_argument("--data", help="CIFAR-10 location (default $CIFARKIT_DATA)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    provenance = record(args.threads)
    data = load_cifar10(args.data)
    rows = []
    for run in args.runs:
        config = read_config(run)
        model, bf16 = load_model(run), native_run_bf16(config, "cpu")
        row = {"run": run, "seed": config["seed"], "test": view_accuracies(model, data.x_test, data.y_test, bf16)}
        row["validation"] = view_accuracies(model, *validation_set(data, config), bf16)
        rows.append(row)
        print(run, " ".join(f"{name} {acc:.4f}" for name, acc in row["test"].items()), flush=True)
    means = {name: statistics.mean(row["test"][name] for row in rows) for name in VIEW_SETS}
    print("mean test accuracy:", " ".join(f"{name} {acc:.4f}" for name, acc in means.items()))
    if args.json:
        write_json(
            args.json,
            {
                **provenance,
                "views": {k: [[*s, w] for s, w in v.items()] for k, v in VIEW_SETS.items()},
                "runs": rows,
                "mean_test": means,
            },
        )


if __name__ == "__main__":
    main()
