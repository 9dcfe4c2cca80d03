"""What the report computes and how much: one object shared by the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from .corruptions import CORRUPTIONS, SEVERITIES


@dataclass(frozen=True)
class ReportOptions:
    """Sizes of the samples the report draws; all sampling is reproducible from ``seed``.

    ``robustness_images`` bounds the test images that are corrupted 25 times and
    re-classified, the slowest part of a report (it needs the model). The
    gallery is the one `cifarkit evaluate` drew.
    """

    top_losses: int = 16
    confused_pairs: int = 10
    gradcam_images: int = 8
    robustness_images: int = 1000
    corruptions: tuple[str, ...] = CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    calibration_bins: int = 15
    batch_size: int = 256
    seed: int = 0
