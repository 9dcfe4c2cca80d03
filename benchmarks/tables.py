"""The tables of README.md, docs/*.md and benchmarks/results/README.md, generated from the results files.

    python benchmarks/tables.py          # rewrite every table whose results changed
    python benchmarks/tables.py --check  # change nothing; exit 1 naming every table that is out of date

A table is the text between ``<!-- table:NAME -->`` and ``<!-- /table -->`` in
one of those files; NAME is one of ``TABLES`` below. Nothing between the
markers is typed by hand: it is rewritten from the files under
benchmarks/results/, so a figure there always has a results file behind it,
with the command that wrote it, its commit and date, and the machine it ran on
(CPU model and kind, cores, threads, torch, and the machine's float32 and
bfloat16 matmul throughput, which tells a reader how fast that machine is).

Where the metadata comes from (``meta``):

- a results file that records it itself: the benchmarks write ``command``,
  ``commit``, ``date`` and ``machine`` (``benchmarks/provenance.py``), and what a
  command printed into ``X.txt`` or ``X.log`` belongs to ``X.json`` beside it;
- else its entry in benchmarks/results/index.json, which holds the files
  measured before the benchmarks recorded it (their throughput was not
  measured: null, shown as "not measured").

So a new measurement shows up by being written there by a benchmark: a
``time_to_accuracy.py`` JSON is a row of the recipes table (and of the
time-to-accuracy table), a ``whole_command.py`` run of ``cifarkit train`` with
``--copy-run`` too, and each other benchmark's JSON a row of its own table.
Run this script, and commit the file with the tables it changed.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import json
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
INDEX = RESULTS / "index.json"
META_KEYS = ("command", "commit", "date", "machine")
MACHINE_KEYS = ("cpu_model", "cpu_kind", "cores", "threads", "torch", "matmul_gflops")
COMPANION_SUFFIXES = ("_eval_metrics", "_metrics", "_config")  # whole_command.py --copy-run's copies
NOT_MEASURED = "not measured"
# <!-- table:NAME --> or <!-- table:NAME GLOB ... -->: the table from the results files matching a glob only
MARKER = re.compile(r"(<!-- table:([\w-]+)((?: [^ >]+)*) -->\n)(.*?)(<!-- /table -->)", re.S)
_only: tuple[str, ...] = ()  # the globs of the table being generated (render sets them)


def documents() -> list[Path]:
    """The files whose tables this script writes."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), RESULTS / "README.md"]


# ---------------------------------------------------------------- metadata


@cache
def index() -> dict[str, Any]:
    return json.loads(INDEX.read_text()) if INDEX.is_file() else {"machines": {}, "files": {}}


@cache
def read_json(rel: str) -> Any:
    try:
        return json.loads((RESULTS / rel).read_text())
    except (OSError, ValueError):
        return None


def results_files(scoped: bool = True) -> list[str]:
    """Every results file, relative to benchmarks/results/ (this index and the README aside); with ``scoped``
    those the table being generated asks for."""
    skip = {"README.md", "index.json"}
    if scoped and _only:
        return [rel for rel in results_files(False) if any(fnmatch.fnmatch(rel, glob) for glob in _only)]
    return sorted(
        str(p.relative_to(RESULTS))
        for p in RESULTS.rglob("*")
        if p.is_file() and str(p.relative_to(RESULTS)) not in skip
    )


def owner(rel: str) -> str | None:
    """The self-describing JSON a companion file belongs to: X.txt or X.log -> X.json, X_metrics.json -> X.json."""
    path = Path(rel)
    stems = [path.stem] if path.suffix in (".txt", ".log") else []
    stems += [path.stem[: -len(s)] for s in COMPANION_SUFFIXES if path.suffix == ".json" and path.stem.endswith(s)]
    for stem in stems:
        candidate = str(path.with_name(stem + ".json"))
        if candidate != rel and isinstance(read_json(candidate), dict) and "commit" in read_json(candidate):
            return candidate
    return None


def meta(rel: str) -> dict[str, Any] | None:
    """command, commit, date and machine (and any notes) of one results file; None where nothing records them.

    What the file records itself (or the JSON it belongs to), then its entry in index.json, which may add notes
    (``recipes_table: false``, ``note``, ...) to a file that records the rest.
    """
    data = read_json(rel)
    if isinstance(data, dict) and all(key in data for key in META_KEYS):
        entry = {key: data[key] for key in META_KEYS} | {"machine_source": "recorded in the file"}
    elif owner(rel):
        entry = {key: value for key, value in meta(owner(rel)).items() if key != "note"}
    else:
        entry = {}
    entry |= index()["files"].get(rel, {})
    if not entry:
        return None
    machine = entry.get("machine")
    if isinstance(machine, str):
        machine = dict(index()["machines"][machine])
    if entry.get("threads") is not None:
        machine = {**machine, "threads": entry["threads"]}
    entry["machine"] = machine
    return entry


def metadata_problems() -> list[str]:
    """Every results file that lacks a command, commit, date or a complete machine record (the test asks none)."""
    problems = []
    for rel in results_files(scoped=False):
        m = meta(rel)
        if m is None:
            problems.append(f"{rel}: no metadata (record it in the file, or add it to index.json)")
            continue
        problems += [f"{rel}: no {key}" for key in META_KEYS if not m.get(key)]
        machine = m.get("machine") or {}
        problems += [f"{rel}: machine lacks {key}" for key in MACHINE_KEYS if key not in machine]
        gflops = machine.get("matmul_gflops") or {}
        problems += [f"{rel}: matmul_gflops lacks {p}" for p in ("float32", "bfloat16") if p not in gflops]
    return problems


# ---------------------------------------------------------------- cells


def kind_short(kind: str) -> str:
    """``native bf16 (AVX512-BF16)`` -> ``AVX512-BF16``; ``float32 only (AVX2, no native bf16)`` -> ``AVX2``."""
    inside = kind[kind.find("(") + 1 : kind.rfind(")")] if "(" in kind else kind
    return inside.split(",")[0].strip()


def cpu_name(model: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\((R|TM|tm)\)|CPU|Processor", "", model)).strip()


def machine_cell(m: dict[str, Any], full: bool = False) -> str:
    """The machine in words: CPU and kind, threads (of cores), and with ``full`` torch."""
    text = f"{cpu_name(m['cpu_model'])} ({kind_short(m['cpu_kind'])}), {m['threads']} of {m['cores']} cores"
    return text + (f", torch {m['torch']}" if full else "")


def throughput_cell(m: dict[str, Any]) -> str:
    """The machine's measured matmul throughput, GFLOP/s float32 / bfloat16, or that it was not measured."""
    g = m.get("matmul_gflops") or {}
    if g.get("float32") is None and g.get("bfloat16") is None:
        return NOT_MEASURED
    return " / ".join(f"{g[p]:,.0f}" if g.get(p) is not None else "?" for p in ("float32", "bfloat16"))


def file_cell(rel: str) -> str:
    return f"`{rel}`"


def number(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def gb(mb: float) -> str:
    return f"{mb / 1000:.2f}"


def table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A Markdown table; ``align`` a letter per column, ``r`` for right-aligned."""
    align = align.ljust(len(header), "l")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def sources(rels: list[str], full: bool = True) -> str:
    """A line under a table: each file with its commit, date and machine."""
    parts = []
    for rel in dict.fromkeys(rels):
        m = meta(rel)
        parts.append(
            f"{file_cell(rel)} ({str(m['commit'])[:7]}, {str(m['date'])[:10]}; {machine_cell(m['machine'], full)}; "
            f"matmul GFLOP/s float32 / bf16: {throughput_cell(m['machine'])})"
        )
    return "\nFrom " + "; ".join(parts) + ".\n"


# ---------------------------------------------------------------- recipes and their measurements


@cache
def current_recipes() -> dict[str, dict[str, Any]]:
    """Every recipe as ``cifarkit recipes -v`` prints it (its ``compute`` included, where it prints one)."""
    out = subprocess.run(
        [sys.executable, "-m", "cifarkit", "recipes", "-v"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    recipes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["name"]: r for r in recipes}


@cache
def recipe_defaults() -> dict[str, Any]:
    """The value a recipe field has where a recorded recipe predates it (what ``recipe_from_config`` assumes)."""
    from cifarkit.recipes import Recipe

    defaults = {}
    for f in dataclasses.fields(Recipe):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def differences(name: str, recorded: dict[str, Any]) -> str:
    """The fields of a recorded recipe that differ from the recipe ``name`` as it is now (precision aside)."""
    current = current_recipes().get(name)
    if current is None:
        return "a recipe that no longer exists"
    defaults = recipe_defaults()
    changed = []
    for key, now in current.items():
        if key in ("name", "description", "seed", "bf16") or (key not in recorded and key not in defaults):
            continue
        then = recorded.get(key, defaults.get(key))
        if then != now:
            changed.append(f"{key}={json.dumps(then) if isinstance(then, (dict, list, str)) else then}")
    return ", ".join(changed)


@dataclass
class Measured:
    """One results file's runs of one recipe: accuracy and minutes per seed."""

    recipe: str
    file: str
    runs: list[dict[str, Any]]  # seed, minutes (None: not valid), acc, acc_tta
    timed: str  # what the minutes cover
    precision: str
    as_measured: str
    meta: dict[str, Any] = field(default_factory=dict)
    recorded: dict[str, Any] | None = None  # the recipe as the file recorded it, where it did

    @property
    def in_recipes_table(self) -> bool:
        return self.meta.get("recipes_table", True)


def precision_of(value: Any, entry: dict[str, Any]) -> str:
    if isinstance(value, bool):
        return "bf16" if value else "float32"
    return entry.get("precision") or ("bf16" if entry["machine"]["cpu_kind"].startswith("native bf16") else "float32")


def note_or_diff(entry: dict[str, Any], name: str, recorded: dict[str, Any] | None) -> str:
    if "recipe_note" in entry:
        return entry["recipe_note"]
    if recorded is None:
        return f"not recorded (the recipe at {str(entry['commit'])[:7]})"
    return differences(name, recorded)


def from_time_to_accuracy(rel: str, data: dict[str, Any], entry: dict[str, Any]) -> Measured:
    recipe = data["recipe"]
    valid = entry.get("wall_time_valid", True)
    runs = [
        {
            "seed": r.get("seed"),
            "minutes": r["wall_seconds"] / 60 if valid else None,
            "acc": r.get("test_acc"),
            "acc_tta": r.get("test_acc_tta"),
        }
        for r in data["runs"]
    ]
    precision = precision_of(data["runs"][0].get("bf16", recipe.get("bf16")), entry)
    return Measured(
        recipe["name"], rel, runs, "train + test", precision, note_or_diff(entry, recipe["name"], recipe), entry, recipe
    )


def from_run_folder(rel: str, config: dict[str, Any], entry: dict[str, Any]) -> Measured | None:
    metrics = read_json(str(Path(rel).with_name("metrics.json")))
    if not isinstance(metrics, dict) or "test_acc" not in metrics:
        return None
    run = {
        "seed": config.get("seed"),
        "minutes": metrics["train_seconds"] / 60,
        "acc": metrics["test_acc"],
        "acc_tta": metrics.get("test_acc_tta"),
    }
    precision = precision_of(config.get("bf16"), entry)
    return Measured(
        config["name"], rel, [run], "training", precision, note_or_diff(entry, config["name"], config), entry, config
    )


def recipe_of_command(command: list[str]) -> str:
    """The recipe a ``cifarkit train`` command line trains (the default, fast93, without --recipe)."""
    for i, arg in enumerate(command):
        if arg == "--recipe" and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith("--recipe="):
            return arg.split("=", 1)[1]
    from cifarkit.recipes import DEFAULT_RECIPE

    return DEFAULT_RECIPE


def from_whole_command(rel: str, data: dict[str, Any], entry: dict[str, Any]) -> Measured | None:
    """A whole ``cifarkit train`` command timed by whole_command.py, its run's accuracy copied beside it."""
    command = data.get("measured_command") or data.get("command")
    command = shlex.split(command) if isinstance(command, str) else command
    if "train" not in command or data.get("exit_status") != 0:
        return None
    stem = str(Path(rel).with_suffix(""))
    evaluation = read_json(stem + "_eval_metrics.json")
    if not isinstance(evaluation, dict) or "test_acc" not in evaluation:
        return None
    config = read_json(stem + "_config.json")
    name = config["name"] if isinstance(config, dict) else recipe_of_command(command)
    run = {
        "seed": config.get("seed") if isinstance(config, dict) else None,
        "minutes": data["wall_seconds"] / 60,
        "acc": evaluation["test_acc"],
        "acc_tta": evaluation.get("test_acc_tta"),
    }
    bf16 = config.get("bf16") if isinstance(config, dict) else None
    as_measured = note_or_diff(entry, name, config if isinstance(config, dict) else None)
    return Measured(name, rel, [run], "whole command", precision_of(bf16, entry), as_measured, entry)


RUN_LINE = re.compile(
    r"run \d+/\d+ seed (\d+): ([\d.]+) min \(\d+ s training\), test acc ([\d.]+), with TTA ([\d.]+|n/a)"
)


def from_log(rel: str, entry: dict[str, Any]) -> Measured | None:
    """What time_to_accuracy.py printed, for a benchmark stopped before it wrote its JSON (index: its recipe)."""
    runs = [
        {"seed": int(s), "minutes": float(m), "acc": float(a), "acc_tta": None if t == "n/a" else float(t)}
        for s, m, a, t in RUN_LINE.findall((RESULTS / rel).read_text())
    ]
    if not runs or "recipe" not in entry:
        return None
    name = entry["recipe"]
    return Measured(name, rel, runs, "train + test", precision_of(None, entry), note_or_diff(entry, name, {}))


def from_kept_metrics(rel: str, data: dict[str, Any], entry: dict[str, Any]) -> Measured | None:
    """A file holding one run's ``metrics`` (the distillation teacher's), its recipe named in the index."""
    metrics = data["metrics"]
    if "recipe" not in entry or "test_acc" not in metrics:
        return None
    run = {"seed": None, "minutes": metrics["train_seconds"] / 60, "acc": metrics["test_acc"]}
    run["acc_tta"] = metrics.get("test_acc_tta")
    precision = precision_of(data.get("bf16"), entry)
    return Measured(entry["recipe"], rel, [run], "training", precision, note_or_diff(entry, entry["recipe"], {}), entry)


def measurements() -> tuple[Measured, ...]:
    """Every results file that says how accurate a recipe trained and how long it took."""
    return _measurements(_only)


@cache
def _measurements(only: tuple[str, ...]) -> tuple[Measured, ...]:
    found = []
    for rel in results_files():
        entry = meta(rel)
        if entry is None:
            continue
        data = read_json(rel) if rel.endswith(".json") else None
        m = None
        if isinstance(data, dict) and isinstance(data.get("recipe"), dict) and isinstance(data.get("runs"), list):
            m = from_time_to_accuracy(rel, data, entry)
        elif rel.endswith("/config.json") and isinstance(data, dict) and "name" in data:
            m = from_run_folder(rel, data, entry)
        elif isinstance(data, dict) and "exit_status" in data and "wall_seconds" in data:
            m = from_whole_command(rel, data, entry)
        elif isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            m = from_kept_metrics(rel, data, entry)
        elif rel.endswith(".log") and not owner(rel):
            m = from_log(rel, entry)
        if m is not None:
            m.meta = entry
            m.timed = entry.get("timed", m.timed)
            for run, seed in zip(m.runs, entry.get("seeds", [])):
                run["seed"] = seed
            found.append(m)
    order = list(current_recipes())
    return tuple(sorted(found, key=lambda m: (order.index(m.recipe) if m.recipe in order else len(order), m.file)))


def accuracy_cell(m: Measured) -> str:
    """Mean ± sample standard deviation over seeds, with the recipe's TTA where the runs have it."""
    key = "acc_tta" if all(r.get("acc_tta") is not None for r in m.runs) else "acc"
    values = [100 * r[key] for r in m.runs]
    seeds = f"{len(values)} seed{'s' if len(values) > 1 else ''}"
    if len(values) == 1:
        return f"{values[0]:.2f} ({seeds})"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({seeds})"


def minutes_cell(m: Measured) -> str:
    if any(r["minutes"] is None for r in m.runs):
        return "not valid (shared cores)"
    return ", ".join(number(r["minutes"]) for r in m.runs)


def compute_cell(name: str) -> str:
    """The recipe's training compute in airbench94-epochs, as ``cifarkit recipes -v`` prints it."""
    value = current_recipes().get(name, {}).get("compute")
    return "—" if value is None else f"{value:.2f}"


def recipes_table() -> str:
    """Every recipe: its accuracy and minutes on each machine it was measured on, beside that machine's speed."""
    header = [
        "recipe",
        "test accuracy %",
        "compute",
        "minutes per run",
        "timed",
        "precision",
        "machine",
        "matmul GFLOP/s fp32 / bf16",
        "as measured (differs from today's recipe)",
        "file",
    ]
    rows = []
    by_recipe: dict[str, list[Measured]] = {}
    for m in measurements():
        if m.in_recipes_table:
            by_recipe.setdefault(m.recipe, []).append(m)
    for name in current_recipes():
        for m in by_recipe.get(name, []):
            rows.append(
                [
                    f"`{name}`",
                    accuracy_cell(m),
                    compute_cell(name),
                    minutes_cell(m),
                    m.timed,
                    m.precision,
                    machine_cell(m.meta["machine"]),
                    throughput_cell(m.meta["machine"]),
                    m.as_measured or "—",
                    file_cell(m.file),
                ]
            )
        if name not in by_recipe:
            rows.append([f"`{name}`", NOT_MEASURED, compute_cell(name), "", "", "", "", "", "", ""])
    return table(header, rows, "lrrr")


def time_to_accuracy_table() -> str:
    """Every measured run of a recipe, superseded ones included, with plain and TTA accuracy."""
    header = [
        "recipe",
        "as measured",
        "precision",
        "seeds",
        "minutes per run",
        "timed",
        "test %",
        "with TTA %",
        "machine",
        "matmul GFLOP/s fp32 / bf16",
        "file",
    ]
    rows = []
    for m in measurements():

        def mean(key: str, runs: list[dict[str, Any]] = m.runs) -> str:
            values = [100 * r[key] for r in runs if r.get(key) is not None]
            return f"{statistics.mean(values):.2f}" if values else "—"

        seeds = ", ".join(str(r["seed"]) for r in m.runs if r["seed"] is not None) or "?"
        rows.append(
            [
                f"`{m.recipe}`",
                m.as_measured or "—",
                m.precision,
                seeds,
                minutes_cell(m),
                m.timed,
                mean("acc"),
                mean("acc_tta"),
                machine_cell(m.meta["machine"], full=True),
                throughput_cell(m.meta["machine"]),
                file_cell(m.file),
            ]
        )
    return table(header, rows, "lllrrlrr")


# airbench94_muon's published figure (Jordan 2024, cifar10-airbench README): 94.01% with TTA, mean of 200 runs,
# 8 epochs of the same network at 32 px = 8.0 airbench94-epochs by definition.
AIRBENCH94_MUON = ("airbench94_muon (published)", 8.0, "94.01 (mean of 200 runs)")


def measured_compute(m: Measured) -> float | None:
    """Training compute of the recipe as ``m`` measured it, in airbench94-epochs (None where it is not recorded)."""
    from cifarkit.errors import CifarkitError
    from cifarkit.estimate import training_compute
    from cifarkit.recipes import recipe_from_config, validate

    if m.recorded is None:
        return current_recipes().get(m.recipe, {}).get("compute") if not m.as_measured else None
    try:  # a field whose meaning has changed since (resize_until once counted epochs) fails today's checks
        return training_compute(validate(recipe_from_config(m.recorded)))
    except (CifarkitError, TypeError, ValueError):
        return None


def compute_table() -> str:
    """Accuracy against training compute for the from-scratch recipes as measured, beside airbench94_muon's."""
    rows = [(AIRBENCH94_MUON[1], [AIRBENCH94_MUON[0], "—", f"{AIRBENCH94_MUON[1]:.2f}", AIRBENCH94_MUON[2], "—"])]
    for m in measurements():
        compute = measured_compute(m)
        if compute is None or not m.recipe.startswith(("fast", "distill_fast")):
            continue
        rows.append(
            (compute, [f"`{m.recipe}`", m.as_measured or "—", f"{compute:.2f}", accuracy_cell(m), file_cell(m.file)])
        )
    header = ["recipe", "as measured", "compute (airbench94-epochs)", "test accuracy % with TTA", "file"]
    return table(header, [row for _, row in sorted(rows, key=lambda r: r[0])], "llr")


# ---------------------------------------------------------------- the other benchmarks' tables


def self_or_indexed(predicate: Callable[[str, Any], bool]) -> Iterator[tuple[str, Any]]:
    for rel in results_files():
        data = read_json(rel) if rel.endswith(".json") else None
        if predicate(rel, data):
            yield rel, data


TRAIN_STEP_ROW = re.compile(
    r"^(\S+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s*$", re.M
)


def train_step_rows() -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of train_step.py: from its JSON, or parsed from what it printed (files from before --json)."""
    for rel in results_files():
        data = read_json(rel) if rel.endswith(".json") else None
        if isinstance(data, dict) and isinstance(data.get("rows"), list) and "images_per_second" in str(data["rows"]):
            for r in data["rows"]:
                variant = r["format"] + ("+bf16" if r["bf16"] else "") + ("+compile" if r["compile"] else "")
                yield rel, {**r, "variant": variant}
        elif rel.endswith(".txt") and not owner(rel) and "fwd GFLOP/img" in (RESULTS / rel).read_text():
            for row in TRAIN_STEP_ROW.findall((RESULTS / rel).read_text()):
                name, batch, size, variant, ips, _, _, gflop, gflops, _ = row
                yield (
                    rel,
                    {
                        "model": name,
                        "batch_size": int(batch),
                        "image_size": int(size),
                        "variant": variant,
                        "images_per_second": float(ips),
                        "forward_gflop_per_image": float(gflop),
                        "gflop_per_second": float(gflops),
                    },
                )


def train_step_table() -> str:
    header = ["model", "batch", "image side px", "variant", "images/s", "fwd GFLOP/image", "training GFLOP/s", "file"]
    rows, rels = [], []
    for rel, r in train_step_rows():
        rels.append(rel)
        rows.append(
            [
                r["model"],
                f"{r['batch_size']:,}",
                str(r["image_size"]),
                r["variant"],
                number(r["images_per_second"], 0),
                f"{r['forward_gflop_per_image']:.3f}",
                number(r["gflop_per_second"], 0),
                file_cell(rel),
            ]
        )
    return table(header, rows, "lrrlrrr") + sources(rels)


def epoch_tflop(d: dict) -> float:
    """The compute of one epoch_time epoch: each training image's forward and backward as three forward passes,
    each validation image's as one (``forward_flops`` of the model at 32 px)."""
    from cifarkit.models.registry import create_model, forward_flops

    flop = forward_flops(create_model(d["model"]))
    return (3 * d["train_images"] + d["val_images"]) * flop / 1e12


def keras_table() -> str:
    header = [
        "model",
        "threads",
        "cifarkit precision",
        "cifarkit s/epoch",
        "Keras s/epoch",
        "Keras / cifarkit",
        "GFLOP/s cifarkit / Keras",
        "1.5x Keras: GFLOP/s, % of matmul",
        "file",
    ]
    rows, rels = [], []
    for rel, d in self_or_indexed(lambda rel, d: isinstance(d, dict) and "speedup_vs_keras" in d):
        rels.append(rel)
        keras = d["keras"].get("median_seconds")
        tflop, seconds = epoch_tflop(d), d["cifarkit"]["median_seconds"]
        # The matmul of cifarkit's precision, measured by the benchmark's own run (older files have none).
        precision = "float32" if d["cifarkit"]["precision"] == "float32" else "bfloat16"
        matmul = (d.get("machine") or {}).get("matmul_gflops", {}).get(precision)
        needed = 1.5 * 1000 * tflop / keras if keras else None
        rows.append(
            [
                d["model"],
                str(d["threads"]),
                d["cifarkit"]["precision"],
                number(seconds),
                number(keras) if keras else "—",
                f"{d['speedup_vs_keras']:.2f}x" if d["speedup_vs_keras"] else "—",
                f"{1000 * tflop / seconds:.0f} / {1000 * tflop / keras:.0f}" if keras else "—",
                (f"{needed:.0f}, {100 * needed / matmul:.0f}%" if matmul else f"{needed:.0f}") if needed else "—",
                file_cell(rel),
            ]
        )
    return table(header, rows, "lrlrrrrr") + sources(rels)


def is_under_load(rel: str, d: Any) -> bool:
    return isinstance(d, dict) and any(isinstance(v, dict) and "epochs" in v for v in d.get("recipes", {}).values())


def under_load_table() -> str:
    header = [
        "recipe",
        "quiet: default / 1 / 2 threads, s",
        "one core busy: default / 1 / 2 threads, s",
        "busy: default ÷ best fixed",
        "default's thread changes (busy)",
        "peak GB",
        "file",
    ]
    rows, rels = [], []
    for rel, d in self_or_indexed(is_under_load):
        rels.append(rel)
        for recipe, r in d["recipes"].items():
            e = r["epochs"]

            def times(load: str, e: dict[str, Any] = e) -> str:
                seconds = (e[f"{load}/{t}"]["seconds"] for t in ("default", "threads1", "threads2"))
                return " / ".join(number(s, 2) for s in seconds)

            peak = max(v["peak_rss_mb"] for v in e.values())
            changes = "; ".join(e["busy/default"].get("thread_changes", [])) or "none"
            rows.append(
                [
                    recipe,
                    times("quiet"),
                    times("busy"),
                    f"{r['ratios']['busy default / best of 1 and 2 threads']:.2f}x",
                    changes,
                    gb(peak),
                    file_cell(rel),
                ]
            )
    return table(header, rows, "lllrlr") + sources(rels)


def under_load_keras_table() -> str:
    header = ["load", "cifarkit s", "Keras s", "Keras / cifarkit", "file"]
    rows, rels = [], []
    for rel, d in self_or_indexed(lambda rel, d: is_under_load(rel, d) and "keras_seed_cnn3_quiet" in d):
        rels.append(rel)
        for load in ("quiet", "busy"):
            k = d.get(f"keras_seed_cnn3_{load}")
            if k:
                ratio = k["keras_seconds"] / k["cifarkit_seconds"]
                label = "quiet" if load == "quiet" else "one core busy"
                rows.append(
                    [
                        label,
                        number(k["cifarkit_seconds"]),
                        number(k["keras_seconds"]),
                        f"{ratio:.2f}x",
                        file_cell(rel),
                    ]
                )
    return table(header, rows, "lrrr") + sources(rels)


PEAK_LINE = re.compile(r"^(\w+)\s+([\d,]+) MB\s+([\d.]+) s$", re.M)


def peak_memory_rows() -> Iterator[tuple[str, str, str, int]]:
    """(file, recipe, --set, peak MB) from peak_memory.py's JSON, or what it printed where it wrote none."""
    for rel in results_files():
        d = read_json(rel) if rel.endswith(".json") else None
        if isinstance(d, dict) and "recipes" in d and not is_under_load(rel, d):
            for recipe, r in d["recipes"].items():
                yield rel, recipe, " ".join(d.get("set", [])), r["peak_rss_mb"]
        elif rel.endswith(".txt") and not (RESULTS / rel).with_suffix(".json").is_file():
            text = (RESULTS / rel).read_text()
            if text.split("\n", 1)[0].endswith(" images"):  # the first line peak_memory.py prints
                for recipe, mb, _ in PEAK_LINE.findall(text):
                    yield rel, recipe, "", int(mb.replace(",", ""))


def peak_memory_table() -> str:
    header = ["recipe", "set", "peak GB", "file"]
    rows, rels = [], []
    for rel, recipe, sets, mb in peak_memory_rows():
        rels.append(rel)
        rows.append([recipe, sets or "—", gb(mb), file_cell(rel)])
    return table(header, rows, "llr") + sources(rels)


def whole_commands_table() -> str:
    header = ["command timed", "exit", "minutes", "peak GB", "note", "file"]
    rows, rels = [], []
    for rel, d in self_or_indexed(lambda rel, d: isinstance(d, dict) and "exit_status" in d and "peak_rss_mb" in d):
        rels.append(rel)
        command = d.get("measured_command") or d["command"]
        command = command if isinstance(command, str) else shlex.join(command)
        rows.append(
            [
                f"`{command}`",
                str(d["exit_status"]),
                number(d["wall_seconds"] / 60),
                gb(d["peak_rss_mb"]),
                meta(rel).get("note", ""),
                file_cell(rel),
            ]
        )
    return table(header, rows, "lrrr") + sources(rels)


def serving_table() -> str:
    header = [
        "recipe",
        "backend",
        "TTA",
        "precision",
        "in-process 1 image p50 / p99 ms",
        "in-process batched images/s",
        "HTTP 1 image p50 / p99 ms",
        "load test requests/s",
        "load test p50 / p99 ms",
        "errors",
    ]
    rows, rels = [], []
    for rel, d in self_or_indexed(lambda rel, d: isinstance(d, dict) and "http_load" in str(d.get("results", ""))):
        rels.append(rel)
        for r in d["results"]:
            p, h, load = r["in_process"], r["http_single"], r["http_load"]
            rows.append(
                [
                    r["recipe"],
                    r["backend"],
                    r["tta"],
                    r["precision"],
                    f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f}",
                    number(p["images_per_s"], 0),
                    f"{h['p50_ms']:.2f} / {h['p99_ms']:.2f}",
                    number(load["requests_per_s"], 0),
                    f"{load['p50_ms']:.1f} / {load['p99_ms']:.1f}",
                    str(load["errors"]),
                ]
            )
    return table(header, rows, "llllrrrrrr") + sources(rels)


def tune_table() -> str:
    header = [
        "study",
        "trials",
        "completed / pruned",
        "best trial",
        "its validation %",
        "retrained: test %",
        "trial minutes, all",
        "file",
    ]
    rows, rels = [], []
    for rel, d in self_or_indexed(lambda rel, d: rel.endswith("study.json") and isinstance(d, dict) and "space" in d):
        folder = Path(rel).parent
        with open(RESULTS / folder / "trials.csv", newline="") as f:
            trials = list(csv.DictReader(f))
        final = read_json(str(folder / "final_metrics.json")) or {}
        best = max((t for t in trials if t["state"] == "complete"), key=lambda t: float(t["val_acc"]))
        done = sum(t["state"] == "complete" for t in trials)
        rels += [rel, str(folder / "trials.csv"), str(folder / "final_metrics.json")]
        rows.append(
            [
                f"`{d['recipe']}` head",
                str(len(trials)),
                f"{done} / {sum(t['state'] == 'pruned' for t in trials)}",
                best["trial"],
                f"{100 * float(best['val_acc']):.2f}",
                f"{100 * final['test_acc']:.2f}" if "test_acc" in final else "—",
                number(sum(float(t["seconds"]) for t in trials) / 60, 0),
                file_cell(str(folder) + "/"),
            ]
        )
    return table(header, rows, "lrrrrrr") + sources(rels[:1])


def scaling_table() -> str:
    header = [
        "processes x threads",
        "training images/s",
        "vs the first row",
        "test %",
        "with TTA %",
        "gradient MB all-reduced per step",
        "file",
    ]
    rows, rels = [], []
    for rel, d in self_or_indexed(lambda rel, d: isinstance(d, dict) and "gradient_bytes_per_step" in d):
        rels.append(rel)
        for r in d["runs"]:
            rows.append(
                [
                    f"{r['processes']} x {r['threads_per_process']}",
                    number(r["images_per_second"], 0),
                    f"{r.get('throughput_ratio', 1.0):.2f}x",
                    f"{100 * r['test_acc']:.1f}",
                    f"{100 * r['test_acc_tta']:.1f}" if r.get("test_acc_tta") is not None else "—",
                    f"{d['gradient_bytes_per_step'] / 1e6:.2f}",
                    file_cell(rel),
                ]
            )
    return table(header, rows, "lrrrrr") + sources(rels)


def whiten_bias_table() -> str:
    header = ["whiten_bias_epochs", "seeds", "test %", "with TTA %", "mean with TTA %", "files"]
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    rels = []
    for rel, d in self_or_indexed(lambda rel, d: rel.startswith("whiten_bias_") and rel.endswith(".metrics.json")):
        w = re.search(r"wb(\d+)_s(\d+)", rel)
        groups.setdefault(w.group(1), []).append((w.group(2), d))
        rels.append(rel)
    rows = []
    for w, runs in sorted(groups.items()):
        tta = [100 * d["test_acc_tta"] for _, d in runs]
        rows.append(
            [
                f"{w}" + (" (trains throughout)" if w == "0" else ""),
                ", ".join(s for s, _ in runs),
                " / ".join(f"{100 * d['test_acc']:.2f}" for _, d in runs),
                " / ".join(f"{t:.2f}" for t in tta),
                f"{statistics.mean(tta):.2f}",
                file_cell(str(Path(rels[0]).parent) + f"/wb{w}_s*.metrics.json"),
            ]
        )
    return table(header, rows, "llrrr") + sources(rels[:1])


def files_table() -> str:
    """Every results file: the commit that added it (or that it ran at), its date, machine and throughput."""
    header = ["file", "commit", "date", "machine", "matmul GFLOP/s fp32 / bf16", "machine recorded"]
    rows = []
    for rel in results_files():
        m = meta(rel)
        if m is None:
            rows.append([file_cell(rel), "?", "?", "no metadata", "?", "?"])
            continue
        rows.append(
            [
                file_cell(rel),
                str(m["commit"])[:7],
                str(m["date"])[:10],
                machine_cell(m["machine"], full=True),
                throughput_cell(m["machine"]),
                m.get("machine_source", ""),
            ]
        )
    return table(header, rows)


TABLES: dict[str, Callable[[], str]] = {
    "recipes": recipes_table,
    "time-to-accuracy": time_to_accuracy_table,
    "compute": compute_table,
    "train-step": train_step_table,
    "keras": keras_table,
    "under-load": under_load_table,
    "under-load-keras": under_load_keras_table,
    "peak-memory": peak_memory_table,
    "whole-commands": whole_commands_table,
    "serving": serving_table,
    "tune": tune_table,
    "scaling": scaling_table,
    "whiten-bias": whiten_bias_table,
    "files": files_table,
}


# ---------------------------------------------------------------- writing and checking


def render(text: str) -> tuple[str, list[str]]:
    """``text`` with every table regenerated, and the names of the tables that changed."""
    changed = []

    def fill(match: re.Match[str]) -> str:
        global _only
        name, globs = match.group(2), tuple(match.group(3).split())
        if name not in TABLES:
            raise SystemExit(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        _only = globs
        try:
            body = TABLES[name]()
        finally:
            _only = ()
        if body != match.group(4):
            changed.append(" ".join((name, *globs)))
        return match.group(1) + body + match.group(5)

    return MARKER.sub(fill, text), changed


def stale() -> list[str]:
    """``FILE: table NAME`` for every table that differs from what the results files give."""
    out = []
    for doc in documents():
        if doc.is_file():
            _, changed = render(doc.read_text())
            out += [f"{doc.relative_to(REPO)}: table {name}" for name in changed]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    args = parser.parse_args(argv)
    problems = metadata_problems()
    for problem in problems:
        print(f"metadata: {problem}", file=sys.stderr)
    if args.check:
        out_of_date = stale()
        for item in out_of_date:
            print(f"out of date: {item} (python benchmarks/tables.py rewrites it)", file=sys.stderr)
        return 1 if out_of_date or problems else 0
    for doc in documents():
        if doc.is_file():
            text, changed = render(doc.read_text())
            if changed:
                doc.write_text(text)
                print(f"{doc.relative_to(REPO)}: {', '.join(changed)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
