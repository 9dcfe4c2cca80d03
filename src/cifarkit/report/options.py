"""What the report computes and how much: one object shared by the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from cifarkit.errors import CifarkitError

from .corruptions import CORRUPTIONS, SEVERITIES


@dataclass(frozen=True)
class ReportOptions:
    """Sizes of the samples the report draws, reproducibly from ``seed``; ``robustness_images`` is the slow part."""

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
        lows = dict.fromkeys(("top_losses", "confused_pairs", "gradcam_images", "robustness_images"), 1)
        for name, low in {**lows, "calibration_bins": 1, "batch_size": 1, "seed": 0}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CifarkitError(f"{name.replace('_', '-')} must be a whole number >= {low}, got {value!r}")
        unknown = [name for name in self.corruptions if name not in CORRUPTIONS]
        if unknown or not self.corruptions:
            raise CifarkitError(f"corruptions must be some of {', '.join(CORRUPTIONS)}, got {self.corruptions!r}")
        if not self.severities or any(s not in SEVERITIES for s in self.severities):
            raise CifarkitError(f"severities must be some of {SEVERITIES}, got {self.severities!r}")
