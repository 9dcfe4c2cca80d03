"""The ``cifarkit report`` verb's arguments, so the CLI only wires data and model loading.

Usage in ``cli.py``::

    parser = subparsers.add_parser("report", help="HTML report comparing runs")
    add_report_arguments(parser)
    ...
    run_report(args, data=data, model_loader=load_model, validation_loader=...)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cifarkit.data.dataset import CIFAR10

from .html import ModelLoader, ValidationLoader, build_report
from .options import ReportOptions


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Add RUN..., -o/--output and the sampling options to ``parser``."""
    defaults = ReportOptions()
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories to compare")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="HTML file to write")
    parser.add_argument("--no-model", action="store_true",
                        help="do not load models: skip Grad-CAM, robustness and temperature scaling")
    parser.add_argument("--robustness-images", type=int, default=defaults.robustness_images,
                        help="test images corrupted for the robustness table (default %(default)s)")
    parser.add_argument("--gradcam-images", type=int, default=defaults.gradcam_images,
                        help="Grad-CAM images of correct and of wrong predictions each (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of every random sample")


def report_options(args: argparse.Namespace) -> ReportOptions:
    """The :class:`ReportOptions` the parsed arguments ask for."""
    return ReportOptions(robustness_images=args.robustness_images, gradcam_images=args.gradcam_images, seed=args.seed)


def run_report(
    args: argparse.Namespace,
    *,
    data: CIFAR10 | None,
    model_loader: ModelLoader | None,
    validation_loader: ValidationLoader | None = None,
) -> Path:
    """Build the report the arguments describe; ``--no-model`` drops the loaders. Returns the HTML path."""
    use_model = not args.no_model
    return build_report(
        args.runs,
        args.output,
        data=data,
        model_loader=model_loader if use_model else None,
        validation_loader=validation_loader if use_model else None,
        options=report_options(args),
    )
