"""The teaching notebook's three Keras CNNs, reproduced layer for layer.

3x3 'same' convolutions, LeakyReLU(0.1), 2x2 max-pooling and dropout, with Keras' initialisation so that they
train like the notebook's; parameter counts match its summaries (2,105,066 / 2,105,066 / 1,084,234).
``seed_cnn1`` is ``seed_cnn2`` with the classic Keras dropout rates, which the notebook did not state.
"""

from __future__ import annotations

from torch import nn

from cifarkit.models.dropout import Dropout, dropouts
from cifarkit.models.heads import keras_init
from cifarkit.models.registry import register_model


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    # In place: a convolution's gradient needs its input, not its output, so the activation may overwrite it
    # (one tensor fewer written per layer; the same numbers).
    return [nn.Conv2d(c_in, c_out, 3, padding="same"), nn.LeakyReLU(0.1, inplace=True)]


def _one_stage_cnn(num_classes: int, drop_conv: float, drop_pool: float, drop_dense: float) -> nn.Sequential:
    """conv16 - conv32 - pool - flatten(16*16*32) - dense256 - dense10."""
    layers = [
        *_conv(3, 16),
        *dropouts(drop_conv),
        *_conv(16, 32),
        nn.MaxPool2d(2),
        *dropouts(drop_pool),
        nn.Flatten(),
        nn.Linear(16 * 16 * 32, 256),
        nn.LeakyReLU(0.1, inplace=True),
        *dropouts(drop_dense),
        nn.Linear(256, num_classes),
    ]
    return keras_init(nn.Sequential(*layers))


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
    return keras_init(nn.Sequential(*layers))
