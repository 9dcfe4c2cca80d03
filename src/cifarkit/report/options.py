"""What the report computes and how much: one object shared by the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from cifarkit.errors import CifarkitError

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

    def __post_init__(self) -> None:
        for name, low in (
            ("top_losses", 1),
            ("confused_pairs", 1),
            ("gradcam_images", 1),
            ("robustness_images", 1),
            ("calibration_bins", 1),
            ("batch_size", 1),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CifarkitError(f"{name.replace('_', '-')} must be a whole number >= {low}, got {value!r}")
        unknown = [name for name in self.corruptions if name not in CORRUPTIONS]
        if unknown or not self.corruptions:
            raise CifarkitError(f"corruptions must be some of {', '.join(CORRUPTIONS)}, got {self.corruptions!r}")
        if not self.severities or any(s not in SEVERITIES for s in self.severities):
            raise CifarkitError(f"severities must be some of {SEVERITIES}, got {self.severities!r}")
