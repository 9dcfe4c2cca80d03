"""The teaching notebook's three Keras CNNs, reproduced layer for layer.

All three use 3x3 'same' convolutions, LeakyReLU(0.1), 2x2 max-pooling and
dropout (:class:`cifarkit.models.dropout.Dropout`: nn.Dropout's, with a mask
cheaper to draw on a CPU), with Keras' default initialisation (Glorot-uniform weights, zero
biases) so that training behaves like the notebook's. Parameter counts match
the notebook's model summaries: 2,105,066 / 2,105,066 / 1,084,234.

The notebook stated the dropout rates of ``seed_cnn2`` (0.2 / 0.2 / 0.5) and
``seed_cnn3`` (0.25 / 0.25 / 0.5); ``seed_cnn1`` is the same network as
``seed_cnn2`` with the classic Keras rates (0.25 after pooling, 0.5 after the
dense layer) and no dropout between its convolutions.
"""

from __future__ import annotations

from torch import nn

from cifarkit.models.dropout import Dropout
from cifarkit.models.registry import register_model


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    # In place: a convolution's gradient needs its input, not its output, so the activation may overwrite it
    # (one tensor fewer written per layer; the same numbers).
    return [nn.Conv2d(c_in, c_out, 3, padding="same"), nn.LeakyReLU(0.1, inplace=True)]


def _dropout(p: float) -> list[nn.Module]:
    return [Dropout(p)] if p > 0 else []


def _keras_init(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases, as Keras initialises Conv2D and Dense."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _one_stage_cnn(num_classes: int, drop_conv: float, drop_pool: float, drop_dense: float) -> nn.Sequential:
    """conv16 - conv32 - pool - flatten(16*16*32) - dense256 - dense10."""
    layers = [
        *_conv(3, 16),
        *_dropout(drop_conv),
        *_conv(16, 32),
        nn.MaxPool2d(2),
        *_dropout(drop_pool),
        nn.Flatten(),
        nn.Linear(16 * 16 * 32, 256),
        nn.LeakyReLU(0.1, inplace=True),
        *_dropout(drop_dense),
        nn.Linear(256, num_classes),
    ]
    return _keras_init(nn.Sequential(*layers))


@register_model("seed_cnn1", "notebook CNN 1: conv16-conv32-pool-dense256 (dropout 0.25/0.5)")
def seed_cnn1(num_classes: int = 10) -> nn.Module:
    return _one_stage_cnn(num_classes, drop_conv=0.0, drop_pool=0.25, drop_dense=0.5)


@register_model("seed_cnn2", "notebook CNN 2: as CNN 1 with dropout 0.2/0.2/0.5")
def seed_cnn2(num_classes: int = 10) -> nn.Module:
    return _one_stage_cnn(num_classes, drop_conv=0.2, drop_pool=0.2, drop_dense=0.5)


@register_model("seed_cnn3", "notebook CNN 3: conv16-32-pool-conv32-64-pool-dense256")
def seed_cnn3(num_classes: int = 10) -> nn.Module:
    layers = [
        *_conv(3, 16),
        *_conv(16, 32),
        nn.MaxPool2d(2),
        Dropout(0.25),
        *_conv(32, 32),
        *_conv(32, 64),
        nn.MaxPool2d(2),
        Dropout(0.25),
        nn.Flatten(),
        nn.Linear(8 * 8 * 64, 256),
        nn.LeakyReLU(0.1, inplace=True),
        Dropout(0.5),
        nn.Linear(256, num_classes),
    ]
    return _keras_init(nn.Sequential(*layers))
