"""Search spaces: which recipe fields a study varies and over what, read from a small TOML file.

One entry per recipe field: a fixed value, a range ``{low, high, log, step}`` or ``{choices = [...]}``; keys of
``model_kwargs`` and ``lr_scale`` go in a table of that name (the format: ``cifarkit tune --help``,
docs/tuning.md). The whole file is checked against the recipe before any trial runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from cifarkit.errors import CifarkitError
from cifarkit.recipes import Recipe, load_config_file, validate

RANGE_KEYS = ("low", "high", "log", "step")
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Recipe)}


@dataclass(frozen=True)
class SearchSpace:
    """Fixed recipe changes plus the searched parameters, by Optuna name (``lr``, ``model_kwargs.dropout``)."""

    fixed: dict[str, Any]
    params: dict[str, BaseDistribution]
    table: dict[str, Any]  # the file as read: what a study records to recognise its space

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """One value per parameter, drawn by the trial's sampler."""
        return {name: _suggest(trial, name, dist) for name, dist in self.params.items()}

    def recipe(self, base: Recipe, values: Mapping[str, Any]) -> Recipe:
        """``base`` with the fixed changes and the parameter ``values`` applied, checked for training."""
        return trial_recipe(base.replace(**self.fixed).replace(**_nested(values)))


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat parameter values as recipe changes: ``model_kwargs.dropout`` goes into ``model_kwargs``."""
    changes: dict[str, Any] = {}
    for name, value in values.items():
        field, _, key = name.partition(".")
        if key:
            changes.setdefault(field, {})[key] = value
        else:
            changes[field] = value
    return changes


def trial_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` validated for a trial: selection needs a validation split."""
    validate(recipe)
    if recipe.val_fraction <= 0:
        raise CifarkitError("a study selects on the validation split: val_fraction must be > 0")
    return recipe


def load_space(path: str | Path, base: Recipe) -> SearchSpace:
    """The search space in the TOML file ``path``, checked against recipe ``base``."""
    try:
        if Path(path).is_dir():
            raise CifarkitError("it is a folder, not a TOML file; name the file, e.g. examples/spaces/fast90.toml")
        return parse_space(load_config_file(path), base)
    except CifarkitError as e:
        raise CifarkitError(f"search space {path}: {e}") from None


def parse_space(table: Mapping[str, Any], base: Recipe) -> SearchSpace:
    """The search space a parsed TOML table describes, every range end and choice checked against ``base``."""
    fixed_values: dict[str, Any] = {}
    params: dict[str, BaseDistribution] = {}
    for name, entry, kind in _entries(table):
        if _is_spec(entry):
            params[name] = _distribution(name, entry, kind)
        else:
            fixed_values[name] = entry
    if not params:
        raise CifarkitError("nothing to search: give at least one field a range {low, high} or {choices = [...]}")
    space = SearchSpace(_nested(fixed_values), params, dict(table))
    _check_edges(space, base)
    return space


def _entries(table: Mapping[str, Any]) -> Iterator[tuple[str, Any, str | None]]:
    """(name, value, field type) of every entry; keys of dict fields are named ``field.key`` and have no type."""
    for field, value in table.items():
        if field not in _FIELD_TYPES:
            raise CifarkitError(f"unknown recipe field {field!r}; valid fields: {', '.join(sorted(_FIELD_TYPES))}")
        if not _FIELD_TYPES[field].startswith("dict"):
            yield field, value, _FIELD_TYPES[field]
        elif isinstance(value, Mapping):
            yield from ((f"{field}.{key}", sub, None) for key, sub in value.items())
        else:
            raise CifarkitError(
                f"{field} is a table of keys: [{field}] and lines such as dropout = {{low = 0.1, high = 0.5}}"
            )


def _check_edges(space: SearchSpace, base: Recipe) -> None:
    """Every choice, and both ends of every range, must make a valid trial of ``base``."""
    fixed = space.recipe(base, {})
    for name, dist in space.params.items():
        for value in _edges(dist):
            try:
                trial_recipe(fixed.replace(**_nested({name: value})))
            except CifarkitError as e:
                raise CifarkitError(f"{name} = {value!r} is not a valid trial: {e}") from None


def _is_spec(entry: Any) -> bool:
    """A table with low/high or choices searches; anything else is a fixed value."""
    return isinstance(entry, Mapping) and any(k in entry for k in ("low", "high", "choices"))


def _distribution(name: str, spec: Mapping[str, Any], kind: str | None) -> BaseDistribution:
    """The Optuna distribution of one spec; ``kind`` is the field's type (None for keys of dict fields)."""
    allowed = ("choices",) if "choices" in spec else RANGE_KEYS
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise CifarkitError(
            f"{name}: unknown key(s) {', '.join(unknown)}; a range takes low, high and optionally "
            "log or step; a choice takes only choices = [...]"
        )
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise CifarkitError(f"{name}: choices must be a non-empty list, e.g. choices = [0.1, 0.2]")
        if not all(isinstance(c, (bool, int, float, str)) for c in choices):
            raise CifarkitError(f"{name}: choices must be numbers, strings or booleans, got {choices!r}")
        return CategoricalDistribution(choices)
    if kind not in ("int", "float", None):
        raise CifarkitError(f"{name} is not numeric: search it with choices = [...]")
    low, high, log, step = (spec.get(k) for k in RANGE_KEYS)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise CifarkitError(f"{name}: a range needs numbers low and high, got low = {low!r}, high = {high!r}")
    if low >= high:
        raise CifarkitError(f"{name}: low ({low}) must be below high ({high})")
    if not isinstance(log if log is not None else False, bool):
        raise CifarkitError(f"{name}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise CifarkitError(f"{name}: a log scale needs low > 0, got {low}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or log):
        raise CifarkitError(f"{name}: step must be a number > 0, and cannot be combined with log; got {step!r}")
    whole = all(isinstance(v, int) for v in (low, high, step if step is not None else 1))
    if kind == "int" and not whole:
        raise CifarkitError(f"{name} is an integer field: low, high and step must be whole numbers")
    if kind == "int" or (kind is None and whole):
        return IntDistribution(low, high, log=bool(log), step=step or 1)
    return FloatDistribution(float(low), float(high), log=bool(log), step=None if step is None else float(step))


def _edges(dist: BaseDistribution) -> list[Any]:
    """The values worth checking before a study: every choice, or both ends of a range."""
    return list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]
