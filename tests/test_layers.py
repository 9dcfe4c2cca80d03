"""The import graph flows one way: every cifarkit import goes to the same or a lower layer.

The sources are parsed with ``ast``, not imported, so imports inside
functions count as much as those at the top of a module. A new module must
be placed in :data:`LAYERS` before the test passes.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cifarkit"

# Top to bottom. A unit is a module directly under cifarkit, or a whole subpackage; "__init__" is the package
# root (``from cifarkit import __version__``). export is a task: it builds on inference and runs, and serve and
# the CLI use it. The core modules import only base and foundation modules, and each other.
LAYERS = {
    "top": {"cli", "api", "__main__", "launch"},
    "app": {"report", "serve", "tune"},
    "tasks": {"train", "evaluate", "predict", "export"},
    "core": {
        "runs",
        "optim",
        "features",
        "inference",
        "distill",
        "distributed",
        "muon",
        "tracking",
        "analysis",
        "plots",
        "recipes",
        "estimate",
    },
    "base": {"models", "data"},
    "foundation": {"files", "errors", "runtime", "progress", "__init__"},
}
LAYER_OF = {unit: layer for layer, units in LAYERS.items() for unit in units}
RANK = {layer: len(LAYERS) - i for i, layer in enumerate(LAYERS)}
# Imports the layers would allow but the design does not, with the reason a failure gives.
FORBIDDEN = {
    ("evaluate", "train"): "evaluate never imports train",
    ("evaluate", "report"): "evaluate never imports report",
    ("models", "data"): "models know no data: whatever scaling a model needs, its caller passes",
}
# The package root is the facade of `import cifarkit`: it names the API's functions and imports them when first
# used (so `import cifarkit` stays light), while every layer may read its __version__.
FACADE = ("__init__", "api")


@dataclass(frozen=True)
class Import:
    """One cifarkit import: the importing module, the module it imports and where."""

    importer: str
    target: str
    line: int


def module_name(path: Path) -> str:
    """The dotted name of a source file under :data:`PACKAGE` (a package's ``__init__.py`` names the package)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_names() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    """The layered unit a module belongs to: its name under cifarkit, or ``__init__`` for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@functools.cache
def syntax_tree(path: Path) -> ast.Module:
    """A module's parsed source, parsed once for all the tests here (the package is read by about a dozen)."""
    return ast.parse(path.read_text(), filename=str(path))


def imports_of(path: Path, modules: set[str]) -> list[Import]:
    """Every import of a cifarkit module in ``path``, at any depth, relative ones resolved.

    ``from cifarkit import distributed`` imports the module cifarkit.distributed;
    ``from cifarkit import __version__`` imports the package root.
    """
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    found = []
    for node in ast.walk(syntax_tree(path)):
        if isinstance(node, ast.Import):
            found += [Import(importer, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append(Import(importer, submodule if submodule in modules else source, node.lineno))
    return [i for i in found if i.target == "cifarkit" or i.target.startswith("cifarkit.")]


def broken_rules(imp: Import) -> list[str]:
    """What is wrong with one import, each as a line naming the module, the import and the rule; empty when fine."""
    where = f"{imp.importer} (line {imp.line}) imports {imp.target}"
    src, dst = unit(imp.importer), unit(imp.target)
    if src not in LAYER_OF or dst not in LAYER_OF:
        return [f"{where}: {src if src not in LAYER_OF else dst} is in no layer; add it to LAYERS"]
    problems = []
    if (src, dst) == FACADE:
        return problems
    if RANK[LAYER_OF[dst]] > RANK[LAYER_OF[src]]:
        problems.append(
            f"{where}: {src} is in layer {LAYER_OF[src]}, {dst} in the higher layer {LAYER_OF[dst]}; "
            "imports go to the same or a lower layer"
        )
    if (src, dst) in FORBIDDEN:
        problems.append(f"{where}: {FORBIDDEN[src, dst]}")
    if dst == "cli" and src != "__main__":
        problems.append(f"{where}: nothing imports cli (only __main__, the entry point, runs it)")
    return problems


@functools.cache
def all_imports() -> tuple[Import, ...]:
    modules = module_names()
    return tuple(imp for path in modules.values() for imp in imports_of(path, set(modules)))


def test_every_module_is_placed_in_a_layer() -> None:
    unplaced = sorted({unit(m) for m in module_names()} - LAYER_OF.keys())
    assert not unplaced, f"modules in no layer: {unplaced}; add each to LAYERS in {Path(__file__).name}"


def test_imports_go_to_the_same_or_a_lower_layer() -> None:
    problems = [problem for imp in all_imports() for problem in broken_rules(imp)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "importer, target",
    [
        ("cifarkit.evaluate", "cifarkit.inference"),  # module level
        ("cifarkit.evaluate", "cifarkit.distributed"),  # from cifarkit import <module>
        ("cifarkit.cli", "cifarkit.train"),  # inside a function
        ("cifarkit.runtime", "cifarkit"),  # from cifarkit import __version__, inside a function
        ("cifarkit.report.sections", "cifarkit.report.markup"),  # from . import markup
        ("cifarkit.report.command", "cifarkit.report.options"),  # from .options import ...
        ("cifarkit.models", "cifarkit.models.backbones"),  # a package's __init__
    ],
)
def test_the_parser_finds_known_imports(importer: str, target: str) -> None:
    assert (importer, target) in {(i.importer, i.target) for i in all_imports()}


@pytest.mark.parametrize(
    "importer, target, rule",
    [
        ("cifarkit.runs", "cifarkit.evaluate", "higher layer tasks"),
        ("cifarkit.files", "cifarkit.models.registry", "higher layer base"),
        ("cifarkit.evaluate", "cifarkit.train", "evaluate never imports train"),
        ("cifarkit.evaluate", "cifarkit.report.html", "evaluate never imports report"),
        ("cifarkit.tune.study", "cifarkit.cli", "nothing imports cli"),
        ("cifarkit.models.fastnet", "cifarkit.data.batches", "models know no data"),
        ("cifarkit.optim", "cifarkit.newmodule", "newmodule is in no layer"),
    ],
)
def test_a_broken_rule_names_the_module_the_import_and_the_rule(importer: str, target: str, rule: str) -> None:
    problems = broken_rules(Import(importer, target, 7))
    assert problems and all(p.startswith(f"{importer} (line 7) imports {target}: ") for p in problems)
    assert any(rule in p for p in problems)


def test_allowed_imports_break_no_rule() -> None:
    for importer, target in [("cifarkit.__main__", "cifarkit.cli"), ("cifarkit.predict", "cifarkit.evaluate")]:
        assert broken_rules(Import(importer, target, 1)) == []


MAX_FUNCTION_LINES = 80  # a function a reader can hold at once; split longer ones into named parts
# The one exception: the training loop, kept in one function so that a run reads top to bottom in the order it
# happens (set-up, then each epoch's steps, validation and checkpoint, then finish), with its helpers one level
# below it. A reader holds it as one story, not as pieces; past this it should shed set-up into helpers.
LOOP, MAX_LOOP_LINES = ("train.py", "train"), 200


def test_no_function_in_the_package_is_longer_than_a_reader_can_hold():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(syntax_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > (MAX_LOOP_LINES if (path.name, node.name) == LOOP else MAX_FUNCTION_LINES):
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_one_function_holds_the_training_loop():
    """Every recipe trains through train.train: the only place in the package where a model's loss is
    back-propagated and its optimiser stepped. (report.calibration fits one temperature, not a model.)"""
    steps = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(syntax_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                calls = {
                    n.func.attr for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                }
                if "backward" in calls and "step" in calls:
                    steps.append((path.name, node.name))
    assert [step for step in steps if step != ("calibration.py", "fit_temperature")] == [LOOP]
