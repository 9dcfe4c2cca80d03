"""FastNet: a small residual-free VGG-style CNN for fast CIFAR-10 training, in the airbench style.

Keller Jordan's airbench (arXiv 2404.00498), re-implemented: a frozen 2x2 patch-whitening convolution (in a
positive and a negative copy, so the GELU after it loses nothing); three blocks of conv3x3 -> maxpool2 -> BN ->
GELU -> conv3x3 -> BN -> GELU, the convolutions initialised to partial identity; BatchNorm with a short memory and
its scale fixed at 1; global max pooling and a bias-free head scaled by 1/width.

Models take [0, 1] images (N, 3, 32, 32) and normalise them inside; ``model.data_init(images)`` sets the
whitening filters once before training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cifarkit.models.registry import register_model

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class FastNetConfig:
    """Shape and normalisation settings of a FastNet.

    ``bn_momentum`` is airbench's: the weight of the *old* running statistic (PyTorch's is ``1 - bn_momentum``).
    """

    widths: tuple[int, int, int] = (64, 256, 256)
    whiten_kernel: int = 2
    bn_momentum: float = 0.6
    bn_eps: float = 1e-12

    @property
    def whiten_width(self) -> int:
        """Output channels of the whitening layer: one filter per patch dimension, twice (+/-)."""
        return 2 * 3 * self.whiten_kernel**2


def _batch_norm(channels: int, cfg: FastNetConfig) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=cfg.bn_eps, momentum=1.0 - cfg.bn_momentum)
    # With the scale frozen at 1 the following conv's weights alone set the scale,
    # which removes a redundant degree of freedom that short runs cannot afford to tune.
    bn.weight.requires_grad_(False)
    return bn


def _identity_conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """A bias-free 3x3 'same' conv whose first min(c_in, c_out) filters start as the identity: a residual at
    initialisation without the memory traffic of an actual skip."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


class ConvBlock(nn.Module):
    """conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU; halves the resolution."""

    def __init__(self, c_in: int, c_out: int, cfg: FastNetConfig) -> None:
        super().__init__()
        self.conv1 = _identity_conv3x3(c_in, c_out)
        self.norm1 = _batch_norm(c_out, cfg)
        self.conv2 = _identity_conv3x3(c_out, c_out)
        self.norm2 = _batch_norm(c_out, cfg)

    def forward(self, x: Tensor) -> Tensor:
        # Pooling before the norm lets BN see (and the activation run on) 4x fewer values.
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """The airbench-style network; see the module docstring. Input (N,3,32,32) in [0,1], output logits."""

    def __init__(self, cfg: FastNetConfig = FastNetConfig(), num_classes: int = 10) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
        # No padding: a padded border would add patches the whitening statistics never saw.
        self.whiten = nn.Conv2d(3, cfg.whiten_width, cfg.whiten_kernel, padding=0, bias=True)
        # The filters come from data_init(), not from gradients; the bias stays trainable.
        self.whiten.weight.requires_grad_(False)
        w1, w2, w3 = cfg.widths
        self.blocks = nn.Sequential(
            ConvBlock(cfg.whiten_width, w1, cfg), ConvBlock(w1, w2, cfg), ConvBlock(w2, w3, cfg)
        )
        self.head = nn.Linear(w3, num_classes, bias=False)
        # Unit-variance head weights with outputs divided by the width (airbench94_muon): the
        # head's learning rate then means the same at every width.
        with torch.no_grad():
            self.head.weight.div_(self.head.weight.std())
        self.head_scale = 1.0 / w3

    def normalize(self, images01: Tensor) -> Tensor:
        """[0, 1] images -> per-channel standardised images (what the whitening layer sees)."""
        x = (images01 - self.mean) / self.std
        # Follow the weights' layout so oneDNN does not convert at every conv.
        if self.whiten.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images01: Tensor) -> Tensor:
        # The whitening gains reach 1/sqrt(eps) ~ 45, which would amplify bf16/fp16
        # rounding of the input into noise; in float32 it costs ~0.1% of the FLOPs.
        with torch.autocast(images01.device.type, enabled=False):
            x = F.gelu(self.whiten(self.normalize(images01.float())))
        x = self.blocks(x)
        x = torch.amax(x, dim=(2, 3))  # global max pool, whatever the remaining resolution
        return self.head(x) * self.head_scale

    @torch.no_grad()
    def data_init(self, train_images: Tensor | Iterable[Tensor], eps: float = 5e-4) -> None:
        """Set the whitening layer from training images in [0, 1]; call once before training.

        ``train_images``: a tensor (N, 3, H, W), or chunks of them, so that the whole set's floats are never held.
        The first half of the channels gets :func:`whitening_filters`, the second half their negatives.
        """
        parts = [train_images] if isinstance(train_images, Tensor) else train_images
        chunks = (self.normalize(part) for part in parts)
        filters, bias = whitening_filters(chunks, self.whiten.in_channels, self.cfg.whiten_kernel, eps)
        self.whiten.weight.copy_(torch.cat((filters, -filters)))
        self.whiten.bias.copy_(torch.cat((bias, -bias)))

    def parameter_roles(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role, for optimizers that treat them differently (as airbench does).

        ``filters`` (3x3 conv weights), ``norm`` (BatchNorm shifts), ``whiten_bias`` (trained only for
        ``whiten_bias_epochs``) and ``head``.
        """
        roles: dict[str, list[nn.Parameter]] = {"filters": [], "norm": [], "whiten_bias": [], "head": []}
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                roles["norm"].append(module.bias)  # the scale stays at 1, see _batch_norm
            elif isinstance(module, nn.Conv2d) and module is not self.whiten:
                roles["filters"].append(module.weight)
        roles["whiten_bias"].append(self.whiten.bias)
        roles["head"].append(self.head.weight)
        return roles


def _patch_moments(chunks: Iterable[Tensor], dim: int, kernel: int) -> tuple[Tensor, Tensor]:
    """Mean (D,) and covariance (D, D) of all kernel x kernel patches of the images in ``chunks``, in float64.

    D = ``dim`` = C*k*k, in a conv weight's ``view(out, -1)`` order; a chunk at a time, never the set unfolded.
    """
    total, outer, count = 0, 0, 0
    for batch in chunks:
        patches = F.unfold(batch.float(), kernel_size=kernel)  # (n, D, L)
        flat = patches.transpose(1, 2).reshape(-1, dim).double()
        total, outer, count = total + flat.sum(0), outer + flat.T @ flat, count + len(flat)
    if not count:
        raise ValueError("whitening needs at least one image")
    mean = total / count
    return mean, outer / count - torch.outer(mean, mean)


def whitening_filters(chunks: Iterable[Tensor], channels: int, kernel: int, eps: float) -> tuple[Tensor, Tensor]:
    """PCA whitening of patches: filters (D, C, k, k) and biases (D,).

    Filter i is the i-th eigenvector of the patch covariance (largest first) over sqrt(eigenvalue_i + eps), its bias
    subtracts the mean patch: outputs of zero mean and about unit covariance. ``eps`` caps near-constant directions.
    """
    mean, cov = _patch_moments(chunks, channels * kernel * kernel, kernel)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0), eigenvectors.flip(1)
    filters = eigenvectors.T / torch.sqrt(eigenvalues + eps).unsqueeze(1)
    bias = -filters @ mean
    return filters.view(-1, channels, kernel, kernel).float(), bias.float()


# The registered sizes: widths of the three blocks, and the line `cifarkit models` shows.
SIZES: dict[str, tuple[tuple[int, int, int], str]] = {
    "fastnet_xs": (
        (32, 128, 128),
        "FastNet, widths 32/128/128 (~1/3.5 of fastnet_s's FLOPs): for CPU budgets of minutes.",
    ),
    "fastnet_s": ((64, 256, 256), "FastNet, widths 64/256/256, the airbench94 network."),
    "fastnet_m": ((128, 384, 384), "FastNet, widths 128/384/384, the airbench95 network."),
    "fastnet_l": (
        (128, 512, 512),
        "FastNet, widths 128/512/512, airbench96's widths without its third conv and residuals.",
    ),
}


def _register_size(name: str) -> None:
    widths, description = SIZES[name]

    def build(num_classes: int = 10, channels_last: bool = True, **overrides) -> FastNet:
        """The FastNet of these widths; ``overrides`` set other :class:`FastNetConfig` fields."""
        model = FastNet(FastNetConfig(widths=widths, **overrides), num_classes=num_classes)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    register_model(name, description)(build)


for _name in SIZES:
    _register_size(_name)
