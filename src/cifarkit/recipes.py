"""Named training configurations, as plain data.

A recipe says everything about a run except the data: model, optimiser,
schedule, augmentation, evaluation. Any field can be overridden from the
command line (``--set lr=0.01``) or a JSON/TOML config file, and the run
directory records the resolved result, so every run can be repeated exactly.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarkit.errors import CifarkitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    model: str
    epochs: int
    batch_size: int
    optimizer: str = "adamax"            # adamax | adam | adamw | sgd (see cifarkit.optim)
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9                 # sgd / muon only
    nesterov: bool = False
    schedule: str = "constant"            # constant | linear | cosine (see cifarkit.optim)
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    val_fraction: float = 0.1
    flip: bool = False
    alternating_flip: bool = False
    translate: int = 0                    # max shift in pixels (reflect padding)
    cutout: int = 0                       # side of the zeroed square, 0 = off
    ema: float = 0.0                      # decay of an exponential moving average of weights, 0 = off
    tta: str = "none"                     # none | flip | flip_translate, used by evaluate
    patience: int = 0                     # early stopping on validation accuracy, 0 = off
    seed: int = 42
    lr_scale: dict[str, float] = field(default_factory=dict)  # per parameter role, see cifarkit.optim
    muon_lr: float = 0.0                  # > 0: conv filters train with Muon at this lr
    muon_momentum: float = 0.6
    frozen_features: bool = False         # transfer: train only the head, on cached backbone features
    bf16: bool = False                    # bfloat16 autocast (fast on GPUs and on CPUs with AVX512-BF16)
    compile: bool = False                 # torch.compile the model, on CUDA only (slower on CPU here)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with ``changes`` applied, type-checked against the field types."""
        known = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise CifarkitError(
                f"unknown recipe field(s) {', '.join(unknown)}; valid fields: {', '.join(known)}"
            )
        return dataclasses.replace(self, **{k: _coerce(self, k, v) for k, v in changes.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(recipe: Recipe, key: str, value: Any) -> Any:
    """Convert command-line strings to the type of the field they replace."""
    current = getattr(recipe, key)
    if not isinstance(value, str) or isinstance(current, str):
        return value
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(current, dict):
            return json.loads(value)
        return type(current)(value)
    except ValueError:
        raise CifarkitError(
            f"recipe field {key!r} expects {type(current).__name__}, got {value!r}"
        ) from None


def _fast(name: str, model: str, epochs: int, description: str, batch_size: int = 2000) -> Recipe:
    """airbench94_muon's recipe (Jordan 2024), written for a mean-reduced loss.

    airbench sums the loss over the batch; averaging instead divides gradients
    by the batch size, so SGD learning rates are multiplied by it and weight
    decays divided by it (lr x decay per step is unchanged). Muon normalises
    its update and needs no such change. Conv filters train with Muon,
    BatchNorm biases at the base lr, the head 12.6x faster; label smoothing
    0.2; alternating flip and 2-pixel translation; linear decay to zero;
    flip+translate test-time augmentation. A 2% validation split is held out
    to watch training (airbench trains on all 50,000 images). bfloat16
    autocast: 3x faster on CPUs with AVX512-BF16 (measured: 27 s against
    75-108 s per fastnet_xs epoch); on older CPUs use ``--set bf16=false``.
    """
    return Recipe(
        name, description, model, epochs=epochs, batch_size=batch_size,
        optimizer="sgd", lr=0.053 * batch_size, momentum=0.85, nesterov=True,
        weight_decay=2e-6 * batch_size / (0.053 * batch_size), lr_scale={"head": 0.67 / 0.053},
        muon_lr=0.24, muon_momentum=0.6, schedule="linear", label_smoothing=0.2, val_fraction=0.02,
        flip=True, alternating_flip=True, translate=2, tta="flip_translate", seed=0, bf16=True,
    )


_NOTEBOOK = dict(optimizer="adamax", batch_size=32, val_fraction=0.1, seed=42)

# Fine-tuning: the pretrained backbone learns 5x slower than the new head, BatchNorm
# keeps its batch statistics (batches of 64 are large enough), and 160 px keeps the
# objects near ImageNet scale at half the compute of 224 px (2.3x the speed here).
LITE0_FINETUNE = Recipe(
    "lite0_finetune", "EfficientNet-Lite0 fine-tuned end to end at 160 px (about 80 minutes on 2 CPU cores)",
    "efficientnet_lite0", epochs=10, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9,
    nesterov=True, weight_decay=5e-5, lr_scale={"backbone": 0.2}, schedule="cosine",
    warmup_epochs=0.3, label_smoothing=0.1, flip=True, translate=2, tta="flip",
    model_kwargs={"input_size": 160, "head": "linear", "dropout": 0.2},
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("seed_cnn1", "notebook CNN 1 exactly as trained there", "seed_cnn1",
               epochs=10, lr=0.005, **_NOTEBOOK),
        Recipe("seed_cnn2", "notebook CNN 2 exactly as trained there", "seed_cnn2",
               epochs=10, lr=0.005, **_NOTEBOOK),
        Recipe("seed_cnn3", "notebook CNN 3 exactly as trained there (its best model)", "seed_cnn3",
               epochs=15, lr=0.001, **_NOTEBOOK),
        Recipe("lite0_frozen", "EfficientNet-Lite0 ImageNet features at 160 px (cached, bf16) + MLP head",
               "efficientnet_lite0", epochs=20, batch_size=256, optimizer="adamw", lr=1e-3, weight_decay=0.05,
               schedule="cosine", label_smoothing=0.1, frozen_features=True, patience=8, bf16=True,
               model_kwargs={"input_size": 160, "head": "mlp", "hidden": 1024, "dropout": 0.5,
                             "trainable_blocks": 0}),
        Recipe("lite0_frozen_notebook", "EfficientNet-Lite0 features + the notebook's VGG16 head and settings",
               "efficientnet_lite0", epochs=10, batch_size=250, optimizer="adamax", lr=0.0005,
               frozen_features=True, bf16=True,
               model_kwargs={"input_size": 160, "head": "notebook", "trainable_blocks": 0}),
        LITE0_FINETUNE,
        # Not measured: no GPU was lent while it was written; `--set compile=true` for more speed.
        LITE0_FINETUNE.replace(
            name="lite0_finetune_gpu", description="EfficientNet-Lite0 fine-tuned at 224 px, for a CUDA GPU",
            epochs=15, batch_size=128, lr=0.1, warmup_epochs=1.0, bf16=True,
            model_kwargs={**LITE0_FINETUNE.model_kwargs, "input_size": 224}),
        *[_fast(name, model, epochs, description) for name, model, epochs, description in [
            ("fast90", "fastnet_xs", 10, "fast from-scratch training: 90%+ in about 5 minutes on 2 CPU cores"),
            ("fast93", "fastnet_s", 10, "fast from-scratch training: 93%+, the recommended start"),
            ("fast94", "fastnet_s", 14, "fast from-scratch training: 94%+"),
        ]],
    ]
}

DEFAULT_RECIPE = "fast93"


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise CifarkitError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)} (see `cifarkit recipes`)")
    return RECIPES[name]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Recipe overrides from a JSON or TOML file (a flat table of field = value)."""
    path = Path(path)
    if not path.is_file():
        raise CifarkitError(f"config file {path} does not exist")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text())
        return json.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise CifarkitError(f"config file {path} is not valid {path.suffix[1:].upper() or 'JSON'}: {e}") from None
