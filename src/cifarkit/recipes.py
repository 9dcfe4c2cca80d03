"""Named training configurations, as plain data.

A recipe says everything about a run except the data: model, optimiser,
schedule, augmentation, evaluation. Any field can be overridden from the
command line (``--set lr=0.01``) or a JSON/TOML config file, and the run
directory records the resolved result, so every run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import warnings
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
    optimizer: str = "adamax"  # adamax | adamw | sgd (see cifarkit.optim)
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd / muon only
    nesterov: bool = False
    schedule: str = "constant"  # constant | linear | cosine (see cifarkit.optim)
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    val_fraction: float = 0.1
    flip: bool = False
    alternating_flip: bool = False
    translate: int = 0  # max shift in pixels (reflect padding)
    cutout: int = 0  # side of the zeroed square, 0 = off
    ema: float = 0.0  # decay of an exponential moving average of weights, 0 = off
    tta: str = "none"  # none | flip | flip_translate, used by evaluate
    select: str = "best"  # which epoch's weights evaluate/predict use: best (validation accuracy) | last
    patience: int = 0  # early stopping on validation accuracy, 0 = off
    seed: int = 42
    lr_scale: dict[str, float] = field(default_factory=dict)  # per parameter role, see cifarkit.optim
    muon_lr: float = 0.0  # > 0: conv filters train with Muon at this lr
    muon_momentum: float = 0.6
    whiten_bias_epochs: float = 0.0  # > 0: fastnet's whitening bias trains only this long; 0 = throughout
    frozen_features: bool = False  # transfer: train only the head, on cached backbone features
    # Progressive resizing: epoch 0 trains on resize_start x resize_start images, growing to full size once the
    # fraction resize_until of the epochs is done (see cifarkit.data.augment.progressive_size); 0 = off.
    resize_start: int = 0
    resize_until: float = 0.0
    # Knowledge distillation (see cifarkit.distill): the loss mixes the labels with the softened outputs of the
    # trained run ``teacher`` (a run directory), weight distill_weight on the teacher, at distill_temperature.
    teacher: str = ""
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    bf16: bool | str = "auto"  # bfloat16 autocast: auto (where native: GPUs, CPUs with AVX512-BF16/AMX) | true | false
    compile: bool = False  # torch.compile the model, on CUDA only (slower on CPUs: issue13/train_step_compile.txt)
    # > 0: each step runs its batch in parts of at most this many images and adds their gradients up before the
    # one optimizer step: the activations of a part, not of the batch, are held at once (BatchNorm then
    # normalises each part by its own statistics). 0: the whole batch at once.
    micro_batch: int = 0
    # Several processes (torchrun, see cifarkit.distributed): batch_size is the global batch, split over them,
    # so a recipe trains the same on 1 or N processes. batch_per_process > 0 instead fixes each process's
    # share (global batch = N x it) and scales every lr by lr_scaling: none | linear | sqrt of global / batch_size.
    batch_per_process: int = 0
    lr_scaling: str = "none"
    sync_bn: bool = False  # BatchNorm statistics over the global batch (SyncBatchNorm: CUDA only)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` applied, each converted and type-checked against its field (see :func:`validate`).

        Strings (from ``--set``) are parsed to the field's type; dict fields merge into the recipe's dict
        (a key given as null is removed).
        """
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise CifarkitError(
                f"unknown recipe field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **{k: _coerce(self, k, v) for k, v in changes.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_type(key: str) -> str:
    """The annotation of field ``key`` as written (annotations are strings here)."""
    return {f.name: f.type for f in dataclasses.fields(Recipe)}[key]


def _coerce(recipe: Recipe, key: str, value: Any) -> Any:
    """``value`` as the type of field ``key``: strings from the command line are parsed, others checked."""
    kind, current = _field_type(key), getattr(recipe, key)
    if key == "bf16":
        return _bf16_setting(value)
    if isinstance(value, str) and kind != "str":
        value = _parse(key, kind, value)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    expected = {"str": str, "int": int, "float": float, "bool": bool}.get(kind, dict)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise CifarkitError(f"recipe field {key!r} expects {_describe(kind)}, got {value!r}")
    if expected is dict:  # merge; a key set to null is removed
        return {k: v for k, v in {**current, **value}.items() if v is not None}
    return value


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse(key: str, kind: str, text: str) -> Any:
    try:
        if kind == "bool":
            return _BOOLS[text.lower()]
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        return json.loads(text)
    except (ValueError, KeyError):
        raise CifarkitError(f"recipe field {key!r} expects {_describe(kind)}, got {text!r}") from None


def _describe(kind: str) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
        kind, 'a JSON object such as {"key": 1}'
    )


def _bf16_setting(value: Any) -> bool | str:
    """``auto``, true or false, from a bool or any spelling of them."""
    if isinstance(value, bool):
        return value
    spellings = {"auto": "auto", **_BOOLS}
    if str(value).lower() in spellings:
        return spellings[str(value).lower()]
    raise CifarkitError(f"recipe field 'bf16' expects auto, true or false, got {value!r}")


# Allowed values of the named fields, and numeric ranges: (low, high, low inclusive, high inclusive).
CHOICES = {
    "optimizer": ("adamax", "adamw", "sgd"),
    "schedule": ("constant", "linear", "cosine"),
    "tta": ("none", "flip", "flip_translate"),
    "select": ("best", "last"),
    "lr_scaling": ("none", "linear", "sqrt"),
}
_AT_LEAST_ONE = (1, math.inf, True, False)
_POSITIVE = (0, math.inf, False, False)
_NON_NEGATIVE = (0, math.inf, True, False)
_FRACTION = (0, 1, True, False)  # [0, 1)
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "epochs": _AT_LEAST_ONE,
    "batch_size": _AT_LEAST_ONE,
    "lr": _POSITIVE,
    "weight_decay": _NON_NEGATIVE,
    "momentum": _FRACTION,
    "warmup_epochs": _NON_NEGATIVE,
    "label_smoothing": _FRACTION,
    "val_fraction": _FRACTION,
    "translate": (0, 16, True, True),
    "cutout": (0, 32, True, True),
    "ema": _FRACTION,
    "patience": _NON_NEGATIVE,
    "muon_lr": _NON_NEGATIVE,
    "muon_momentum": _FRACTION,
    "batch_per_process": _NON_NEGATIVE,
    "micro_batch": _NON_NEGATIVE,
    "resize_start": (0, 1024, True, True),
    "resize_until": _FRACTION,
    "distill_weight": (0, 1, True, True),
    "distill_temperature": _POSITIVE,
    "whiten_bias_epochs": _NON_NEGATIVE,
    "seed": (0, 2**32 - 1, True, True),  # NumPy's and PyTorch's seeds: 32-bit unsigned
}


def _range_text(low: float, high: float, low_in: bool, high_in: bool) -> str:
    if high == math.inf:
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def validate(recipe: Recipe) -> Recipe:
    """Check every field before anything is written or trained; returns the recipe.

    The first problem (a name, a range, model keyword arguments) is a :class:`CifarkitError` naming the field.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", recipe.name):
        raise CifarkitError(
            f"recipe name {recipe.name!r} must be letters, digits, '.', '_' or '-' (it names run folders)"
        )
    for key, allowed in CHOICES.items():
        if getattr(recipe, key) not in allowed:
            raise CifarkitError(f"recipe field {key!r} is {getattr(recipe, key)!r}; choose one of {', '.join(allowed)}")
    for key, (low, high, low_in, high_in) in RANGES.items():
        value = getattr(recipe, key)
        above = value >= low if low_in else value > low
        below = value <= high if high_in else value < high
        if not (above and below):
            raise CifarkitError(
                f"recipe field {key!r} must be {_range_text(low, high, low_in, high_in)}, got {value!r}"
            )
    if recipe.patience and recipe.select == "last":
        raise CifarkitError("patience (early stopping) needs select=best: with select=last no epoch is ever 'best'")
    if recipe.warmup_epochs > recipe.epochs:
        raise CifarkitError(f"warmup_epochs ({recipe.warmup_epochs:g}) must not exceed epochs ({recipe.epochs})")
    if recipe.resize_start and not recipe.resize_until:
        raise CifarkitError(
            f"progressive resizing from resize_start {recipe.resize_start} needs resize_until in (0, 1), the "
            "fraction of the epochs after which images are full size (or resize_start=0 to turn it off)"
        )
    if recipe.distill_weight and not recipe.teacher:
        raise CifarkitError(
            f"recipe {recipe.name!r} learns from a teacher (distill_weight {recipe.distill_weight:g}) but names none: "
            "add --set teacher=RUN_DIR, a finished run such as one of lite0_finetune"
        )
    if recipe.teacher and not recipe.distill_weight:
        raise CifarkitError(f"teacher {recipe.teacher} is set but distill_weight is 0; set distill_weight in (0, 1]")
    if recipe.frozen_features and (recipe.teacher or recipe.resize_start):
        raise CifarkitError("frozen_features trains a head on fixed features: drop teacher and resize_start")
    bad_scales = {
        k: v
        for k, v in recipe.lr_scale.items()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf
    }
    if bad_scales:
        raise CifarkitError(f"lr_scale values must be finite numbers >= 0, got {bad_scales}")
    if recipe.frozen_features and (recipe.flip or recipe.translate or recipe.cutout):
        raise CifarkitError("frozen_features trains on fixed features: set flip, translate and cutout off")
    _check_model(recipe)
    return recipe


# Models checked in this process: (name, model_kwargs as JSON, head only) -> the parameter roles.
_CHECKED_MODELS: dict[tuple[str, str, bool], frozenset[str]] = {}


def _check_model(recipe: Recipe) -> None:
    """The model exists, accepts the recipe's ``model_kwargs``, computes finite outputs and has its ``lr_scale`` roles.

    Built once per model and arguments in a process: every training run, tuning trial and estimate validates
    its recipe, and building a model costs more than all the other checks together.
    """
    from cifarkit.models import get_model_info

    get_model_info(recipe.model)
    key = (recipe.model, json.dumps(recipe.model_kwargs, sort_keys=True, default=repr), recipe.frozen_features)
    if key not in _CHECKED_MODELS:
        _CHECKED_MODELS[key] = _model_roles(recipe)
    roles = _CHECKED_MODELS[key]
    unknown = sorted(set(recipe.lr_scale) - roles)
    if unknown:
        raise CifarkitError(f"lr_scale names roles {unknown} that {recipe.model} lacks; it has {sorted(roles)}")
    if recipe.whiten_bias_epochs and "whiten_bias" not in roles:
        raise CifarkitError(
            f"whiten_bias_epochs needs a model with a whitening layer (fastnet_*), not {recipe.model}; "
            "set whiten_bias_epochs=0"
        )


def _model_roles(recipe: Recipe) -> frozenset[str]:
    """Build the recipe's model and run it on two random images; the parameter roles of it (or of its head).

    One forward pass catches keyword arguments that only break it there. The random generators are left as
    they were, so a check changes no run's numbers.
    """
    import torch

    from cifarkit.models import create_model, parameter_roles

    kwargs = f"model_kwargs {recipe.model_kwargs} for {recipe.model}"
    with torch.random.fork_rng():
        try:
            with warnings.catch_warnings():  # e.g. "Initializing zero-element tensors": the error below says it better
                warnings.simplefilter("ignore")
                model = create_model(recipe.model, pretrained=False, **recipe.model_kwargs)
        except CifarkitError as e:
            raise CifarkitError(f"{kwargs}: {e}") from None
        except (TypeError, ValueError, RuntimeError) as e:
            raise CifarkitError(
                f"model_kwargs {recipe.model_kwargs} do not fit {recipe.model} ({e}); "
                f"see `cifarkit recipes -v` for the keyword arguments recipes use"
            ) from None
        try:
            with torch.no_grad():
                torch.manual_seed(0)
                outputs = model.eval()(torch.rand(2, 3, 32, 32))
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CifarkitError(f"{kwargs} break its forward pass ({reason}); change or remove them") from None
    if outputs.dim() != 2 or outputs.shape[1] < 2 or not torch.isfinite(outputs).all():
        raise CifarkitError(f"{kwargs} make it compute non-finite or misshapen outputs; change or remove them")
    return frozenset(parameter_roles(model.head if recipe.frozen_features else model))


LR_SCALING_POWER = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}


def for_processes(recipe: Recipe, processes: int) -> Recipe:
    """The recipe as ``processes`` data-parallel processes train it: ``batch_size`` is then the global batch.

    Unchanged by default; with ``batch_per_process`` B the global batch is ``processes`` x B and the learning
    rates scale by (global batch / batch_size) to the power of ``lr_scaling`` (linear: Goyal et al., 2017).
    """
    if not recipe.batch_per_process:
        return recipe
    batch = recipe.batch_per_process * processes
    factor = (batch / recipe.batch_size) ** LR_SCALING_POWER[recipe.lr_scaling]
    return recipe.replace(batch_size=batch, lr=recipe.lr * factor, muon_lr=recipe.muon_lr * factor)


def recipe_from_config(config: dict[str, Any]) -> Recipe:
    """The recipe a run directory's config.json recorded (its extra keys, such as the data source, ignored)."""
    known = {f.name for f in dataclasses.fields(Recipe)}
    missing = sorted(
        f.name
        for f in dataclasses.fields(Recipe)
        if f.name not in config and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise CifarkitError(
            f"the run's config.json lacks recipe field(s) {', '.join(missing)}; it was not written by `cifarkit train`"
        )
    base = Recipe(**{k: config[k] for k in ("name", "description", "model", "epochs", "batch_size")})
    return base.replace(**{k: v for k, v in config.items() if k in known and k not in ("name", "description")})


def _fast(name: str, model: str, epochs: int, description: str, batch_size: int = 2000) -> Recipe:
    """airbench94_muon's recipe (Jordan 2024), written for a mean-reduced loss (docs/design.md).

    airbench sums the loss over the batch; averaging divides gradients by the batch size, so SGD learning rates
    are multiplied by it and weight decays divided by it (Muon normalises its update and needs no change).
    Micro-batches of 250 hold a fraction of the whole batch's activations
    (benchmarks/results/issue18/peak_memory*.json; ``--set micro_batch=0`` on a GPU). The last epoch's weights
    are kept, as in airbench: the learning rate ends at zero, and 2% of the images validate too noisily to pick
    among the last epochs.
    """
    return Recipe(
        name,
        description,
        model,
        epochs=epochs,
        batch_size=batch_size,
        optimizer="sgd",
        lr=0.053 * batch_size,
        momentum=0.85,
        nesterov=True,
        weight_decay=2e-6 * batch_size / (0.053 * batch_size),
        lr_scale={"head": 0.67 / 0.053},
        muon_lr=0.24,
        muon_momentum=0.6,
        whiten_bias_epochs=3.0,
        schedule="linear",
        label_smoothing=0.2,
        val_fraction=0.02,
        flip=True,
        alternating_flip=True,
        translate=2,
        tta="flip_translate",
        select="last",
        seed=0,
        micro_batch=250,
    )


_NOTEBOOK = dict(optimizer="adamax", batch_size=32, val_fraction=0.1, seed=42)

# Fine-tuning: the pretrained backbone learns 5x slower than the new head, and 160 px keeps the objects near
# ImageNet scale at half the compute of 224 px. Micro-batches of 32 bound its memory (benchmarks/peak_memory.py).
LITE0_FINETUNE = Recipe(
    "lite0_finetune",
    "EfficientNet-Lite0 fine-tuned end to end at 160 px (about 80 minutes on 2 CPU cores)",
    "efficientnet_lite0",
    epochs=10,
    batch_size=64,
    optimizer="sgd",
    lr=0.05,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-5,
    lr_scale={"backbone": 0.2},
    schedule="cosine",
    warmup_epochs=0.3,
    label_smoothing=0.1,
    flip=True,
    translate=2,
    tta="flip",
    model_kwargs={"input_size": 160, "head": "linear", "dropout": 0.2},
    micro_batch=32,
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("seed_cnn1", "notebook CNN 1 exactly as trained there", "seed_cnn1", epochs=10, lr=0.005, **_NOTEBOOK),
        Recipe("seed_cnn2", "notebook CNN 2 exactly as trained there", "seed_cnn2", epochs=10, lr=0.005, **_NOTEBOOK),
        Recipe(
            "seed_cnn3",
            "notebook CNN 3 exactly as trained there (its best model)",
            "seed_cnn3",
            epochs=15,
            lr=0.001,
            **_NOTEBOOK,
        ),
        Recipe(
            "lite0_frozen",
            "EfficientNet-Lite0 ImageNet features at 160 px (cached, bf16) + MLP head",
            "efficientnet_lite0",
            epochs=20,
            batch_size=256,
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.05,
            schedule="cosine",
            label_smoothing=0.1,
            frozen_features=True,
            patience=8,
            model_kwargs={"input_size": 160, "head": "mlp", "hidden": 1024, "dropout": 0.5, "trainable_blocks": 0},
        ),
        Recipe(
            "lite0_frozen_notebook",
            "EfficientNet-Lite0 features + the notebook's VGG16 head and settings",
            "efficientnet_lite0",
            epochs=10,
            batch_size=250,
            optimizer="adamax",
            lr=0.0005,
            frozen_features=True,
            model_kwargs={"input_size": 160, "head": "notebook", "trainable_blocks": 0},
        ),
        LITE0_FINETUNE,
        # Not measured yet; `--set compile=true` for more speed.
        LITE0_FINETUNE.replace(
            name="lite0_finetune_gpu",
            description="EfficientNet-Lite0 fine-tuned at 224 px, for a CUDA GPU",
            epochs=15,
            batch_size=128,
            lr=0.1,
            warmup_epochs=1.0,
            micro_batch=0,  # a GPU holds the whole batch; on a CPU this recipe needs about 13 GB
            model_kwargs={**LITE0_FINETUNE.model_kwargs, "input_size": 224},
        ),
        # Progressive resizing, 16 px growing to full size by 60% of the run: less time at the same accuracy
        # (benchmarks/results/issue13/time_to_accuracy_fast90_fp32*.json).
        _fast("fast90", "fastnet_xs", 10, "fast from-scratch training: 90%+ in about 4 minutes on 2 CPU cores").replace(
            resize_start=16, resize_until=0.6
        ),
        *[
            _fast(name, model, epochs, description)
            for name, model, epochs, description in [
                ("fast93", "fastnet_s", 10, "fast from-scratch training: 93%+, the recommended start"),
                ("fast94", "fastnet_s", 14, "fast from-scratch training: 94%+"),
            ]
        ],
        # Knowledge distillation: the fast recipes with most of the loss on a teacher's softened outputs (no gain
        # measured so far: docs/performance.md).
        *[
            _fast(name, "fastnet_s", epochs, description).replace(distill_weight=0.9, distill_temperature=4.0)
            for name, epochs, description in [
                ("distill_fast93", 10, "fast93 taught by a trained run: --set teacher=RUN_DIR (e.g. lite0_finetune)"),
                ("distill_fast94", 14, "fast94 taught by a trained run: --set teacher=RUN_DIR (e.g. lite0_finetune)"),
            ]
        ],
    ]
}

DEFAULT_RECIPE = "fast93"


def get_recipe(name: str) -> Recipe:
    """The built-in recipe ``name``; an unknown name lists the known ones."""
    if name not in RECIPES:
        raise CifarkitError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)} (see `cifarkit recipes`)")
    return RECIPES[name]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Recipe overrides from a JSON or TOML file: one table of field = value (``.toml`` in any case is TOML)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CifarkitError(f"config file {path} {what}; name a .toml or .json file of recipe fields")
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
        table = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CifarkitError(
            f"config file {path} is not valid {kind} ({e}); name TOML files *.toml and anything else JSON"
        ) from None
    if not isinstance(table, dict):
        raise CifarkitError(
            f"config file {path} holds a {type(table).__name__}; it must be one table of "
            'field = value, e.g. {"lr": 0.01, "epochs": 5}'
        )
    return table
