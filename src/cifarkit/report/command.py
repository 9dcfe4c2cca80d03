"""The ``cifarkit report`` verb's arguments, so the CLI only wires in the data.

Importing this module is cheap (no torch, matplotlib or scikit-learn), so ``cifarkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from .options import ReportOptions

if TYPE_CHECKING:
    from cifarkit.data.dataset import CIFAR10


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Add RUN..., -o/--output and the sampling options to ``parser``."""
    defaults = ReportOptions()
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories to compare")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="HTML file to write")
    parser.add_argument(
        "--no-model", action="store_true", help="do not load models: skip Grad-CAM, robustness and temperature scaling"
    )
    parser.add_argument(
        "--robustness-images",
        type=_count(1),
        default=defaults.robustness_images,
        help="test images corrupted for the robustness table, at least 1; more than the test set has uses "
        "all of them (default %(default)s)",
    )
    parser.add_argument(
        "--gradcam-images",
        type=_count(1),
        default=defaults.gradcam_images,
        help="Grad-CAM images of correct and of wrong predictions each, at least 1 (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=_count(0), default=defaults.seed, help="seed of every random sample, 0 or more (default 0)"
    )


def _count(low: int):
    """An argparse type: a whole number >= ``low``, refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expects a whole number >= {low}, got {text!r}")
        return value

    parse.__name__ = f"whole number >= {low}"  # what argparse names the type in its messages
    return parse


def report_options(args: argparse.Namespace) -> ReportOptions:
    """The :class:`ReportOptions` the parsed arguments ask for."""
    return ReportOptions(robustness_images=args.robustness_images, gradcam_images=args.gradcam_images, seed=args.seed)


def check_runs(run_dirs: Sequence[Path], *, device: str | None = None) -> None:
    """Each RUN is a run directory whose config reads cleanly, and ``device`` is here: said before the data loads."""
    from cifarkit.errors import CifarkitError
    from cifarkit.runs import read_config

    for run in run_dirs:
        if run.exists() and not run.is_dir():
            raise CifarkitError(f"{run} is a file, not a run directory; pass the --out of `cifarkit train`")
        read_config(run)
    if device is not None:
        from cifarkit.runtime import pick_device

        pick_device(device)


def write_report(
    run_dirs: Sequence[Path],
    output: str | Path,
    *,
    data: CIFAR10 | None,
    use_model: bool = True,
    device: str = "auto",
    options: ReportOptions = ReportOptions(),
) -> Path:
    """Build the report with every run locked (it writes RUN/insight/, and RUN/eval/ of a run not evaluated yet)."""
    from cifarkit.runs import locked

    from .html import build_report

    with ExitStack() as stack:
        for run in run_dirs:
            stack.enter_context(locked(run))
        return build_report(run_dirs, output, data=data, use_model=use_model, device=device, options=options)


def run_report(args: argparse.Namespace, *, data: CIFAR10 | None, device: str = "auto") -> Path:
    """Build the report the arguments describe (``--no-model`` loads no model). Returns the HTML path."""
    return write_report(
        args.runs, args.output, data=data, use_model=not args.no_model, device=device, options=report_options(args)
    )
