"""The Python API (docs/python-api.md): the whole workflow from ``import cifarkit``, results shown in Jupyter.

The command line is built from the same functions, so both make the same checks before any work, write the
same files and refuse bad input with the same one-line :class:`~cifarkit.errors.CifarkitError` (naming the
CLI flag); nothing here calls ``sys.exit``. torch, matplotlib and scikit-learn are imported only inside the
functions that compute, so ``import cifarkit`` stays light.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarkit.errors import CifarkitError, DataError

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy as np

    from cifarkit.data.dataset import CIFAR10
    from cifarkit.export import Int8Report, Parity
    from cifarkit.models.summary import ModelSummary
    from cifarkit.plots import Picture
    from cifarkit.recipes import Recipe
    from cifarkit.tracking import Callback

    # What ``data=`` takes everywhere: a loaded data set, a place to load it from, or None for the default place.
    Data: TypeAlias = CIFAR10 | str | os.PathLike[str] | None


# --- data ------------------------------------------------------------------------------------------------------------


def load_data(
    path: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> CIFAR10:
    """CIFAR-10 as uint8 arrays: from ``path`` (any layout), else ``$CIFARKIT_DATA``, else the download cache."""
    from cifarkit.data import load_cifar10

    for flag, value in (("--data", path), ("--cache-dir", cache_dir)):
        if isinstance(value, str) and not value.strip():  # `--data "$DIR"` with DIR unset: not the current folder
            raise CifarkitError(
                f"{flag} is empty (an unset shell variable?); name a folder or file, or leave {flag} out"
            )
    if cache_dir:
        from cifarkit.runs import run_directory_of

        if (run := run_directory_of(cache_dir)) is not None:
            raise CifarkitError(f"--cache-dir {cache_dir} lies in the run directory {run}; choose another folder")
    return load_cifar10(path, cache_dir=cache_dir, download=download)


def _loaded(data: Data, cache_dir: str | os.PathLike[str] | None = None) -> CIFAR10:
    """``data`` itself when it is loaded already, else loaded from where it names (None: the default place)."""
    from cifarkit.data.dataset import CIFAR10

    return data if isinstance(data, CIFAR10) else load_data(data, cache_dir=cache_dir)


SHOW_MAX = 256  # images `data show` draws at most: 256 take about 10 s, and the figure grows with every row


def check_sample(count: int, seed: int) -> None:
    """Refuse a sample grid's size or seed before the data is loaded (``cifarkit data show --count --seed``)."""
    if not 1 <= count <= SHOW_MAX:
        raise CifarkitError(f"--count must be from 1 to {SHOW_MAX} (images in the grid), got {count}")
    if seed < 0:
        raise CifarkitError(f"--seed must be a whole number >= 0, got {seed}")


def sample_grid(data: CIFAR10, count: int = 32, *, seed: int = 0) -> Picture:
    """``count`` training images drawn at random (reproducibly from ``seed``), each titled with its class."""
    import numpy as np

    from cifarkit.plots import Picture, titled_grid

    check_sample(count, seed)
    if count > len(data.x_train):
        raise CifarkitError(
            f"--count {count} is more than the {len(data.x_train)} training images in {data.source}; "
            f"choose 1 to {len(data.x_train)}"
        )
    pick = np.random.default_rng(seed).choice(len(data.x_train), size=count, replace=False)
    return Picture.of(titled_grid(data.x_train[pick], [data.classes[i] for i in data.y_train[pick]]))


def show_images(data: Data = None, count: int = 32, *, seed: int = 0) -> Picture:
    """A grid of ``count`` random training images with their classes, shown inline in Jupyter (``.save(path)``)."""
    check_sample(count, seed)  # before the data is loaded
    return sample_grid(_loaded(data), count, seed=seed)


# --- models ----------------------------------------------------------------------------------------------------------


def summary(model: str, **model_kwargs: Any) -> Summary:
    """A registered model's layers, output shapes and parameters, like Keras' ``model.summary()`` (no weights)."""
    from cifarkit.models import create_model
    from cifarkit.models.summary import summarize

    return Summary(summarize(create_model(model, pretrained=False, **model_kwargs)))


class Summary:
    """A model's :class:`~cifarkit.models.summary.ModelSummary`: a table in Jupyter, ``cifarkit models`` text."""

    def __init__(self, model_summary: ModelSummary) -> None:
        self.model_summary = model_summary
        self.layers, self.total, self.trainable = model_summary.layers, model_summary.total, model_summary.trainable
        self.non_trainable = model_summary.non_trainable

    def __str__(self) -> str:
        return str(self.model_summary)

    def __repr__(self) -> str:
        return f"Summary({len(self.layers)} layers, {self.total:,} parameters)"

    def _repr_html_(self) -> str:
        from cifarkit.report import markup

        rows = [(f"{r.name} ({r.kind})", r.output_shape, f"{r.params:,}") for r in self.layers]
        totals = f"total params: {self.total:,}, trainable: {self.trainable:,}, non-trainable: {self.non_trainable:,}"
        return markup.table(("layer (type)", "output shape", "params"), rows) + markup.paragraph(totals)


# --- training --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPlan:
    """What a training call will do, decided and checked before any data is loaded (see :func:`plan_training`)."""

    recipe: Recipe
    out: Path
    subset: int | None
    resume: bool
    data_source: str | None = None
    """Where a resumed run found its data (from its config.json): the default place to load it from again."""


def plan_training(
    recipe: str | Recipe | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    changes: Mapping[str, Any] | None = None,
    subset: int | None = None,
    resume: bool = False,
) -> TrainingPlan:
    """The recipe (with ``changes``, validated) and run directory of a training call, checked before any data is loaded;
    resuming, the recipe, subset and data place come from the run in ``out``."""
    from cifarkit.recipes import DEFAULT_RECIPE, get_recipe, recipe_from_config, validate

    changes = dict(changes or {})
    named = recipe if isinstance(recipe, str) or recipe is None else recipe.name
    data_source = None
    if not resume:
        base = get_recipe(recipe or DEFAULT_RECIPE) if isinstance(recipe, str) or recipe is None else recipe
        chosen = validate(base.replace(**changes))
    else:
        if not out:
            raise CifarkitError("--resume needs --out RUN, the run directory to continue")
        from cifarkit.distributed import on_main
        from cifarkit.runs import read_config

        config = on_main(lambda: read_config(out))  # the run directory is where rank 0 wrote it
        recorded = recipe_from_config(config)
        if named and named != recorded.name:
            raise CifarkitError(
                f"--resume: {out} trains recipe {recorded.name!r}, not {named!r}; "
                f"drop --recipe (the run directory knows its recipe)"
            )
        chosen = validate(recorded.replace(**changes))
        subset = subset if subset is not None else config.get("subset")
        data_source = config.get("data_source")
    if isinstance(out, str) and not out.strip():
        raise CifarkitError("--out is empty (an unset shell variable?); name the run directory, or leave --out out")
    where = Path(out) if out else Path(f"runs/{chosen.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return TrainingPlan(chosen, where, subset, resume, data_source)


@contextmanager
def explain_moved_data(plan: TrainingPlan, given: bool) -> Iterator[None]:
    """Around loading a resumed run's data from where it trained: if it is gone from there, say how to pass it."""
    try:
        yield
    except DataError as exc:
        if given or not plan.resume:
            raise
        raise CifarkitError(
            f"{exc}; if the data the run trained on has moved, pass its new place: "
            f"`cifarkit train --resume --out {plan.out} --data NEW_PLACE` (the pixels, not the path, must match)"
        ) from None


def train_planned(
    plan: TrainingPlan,
    data: CIFAR10,
    *,
    device: str = "auto",
    threads: int | None = None,
    evaluate: bool = True,
    track: str | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> tuple[Run, EvalResult | None]:
    """Train a planned run on ``data`` (mirrored to ``track``), then evaluate it: the run and evaluation (or None)."""
    from cifarkit.distributed import is_main
    from cifarkit.tracking import track as tracking
    from cifarkit.train import train as train_run

    main, out = is_main(), plan.out
    if main and progress:
        print(f"training {plan.recipe.name} ({plan.recipe.model}) into {out}")
    evaluated = plan.resume and (out / "eval" / "metrics.json").is_file()  # a finished run resumed: nothing to do
    with tracking(track if main else None, out, out.name) as tracked:
        train_run(
            plan.recipe,
            data,
            out,
            subset=plan.subset,
            resume=plan.resume,
            progress=progress,
            device=device,
            callbacks=[*tracked, *callbacks],
            threads=threads,
        )
        run = Run(out, data=data)
        if evaluated and main and progress:
            print(f"{out / 'eval'} holds its test evaluation already; `cifarkit evaluate {out}` runs it again")
        fresh = run.evaluate(data, device=device, threads=threads) if evaluate and not evaluated else None
    return run, fresh


def train(
    recipe: str | Recipe | None = None,
    data: Data = None,
    out: str | os.PathLike[str] | None = None,
    *,
    subset: int | None = None,
    resume: bool = False,
    evaluate: bool = True,
    device: str = "auto",
    threads: int | None = None,
    track: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    **changes: Any,
) -> Run:
    """Train a recipe into a run directory, evaluate it on the test set, and return the :class:`Run`.

    ``cifarkit train`` in one call: ``recipe`` is a name or a :class:`~cifarkit.recipes.Recipe`, ``changes``
    override its fields (as ``--set``), ``data`` is a loaded data set or where to load it; the other arguments
    are the CLI flags of the same name. Ctrl-C leaves a run that ``resume=True`` continues.
    """
    from cifarkit.distributed import setup
    from cifarkit.runtime import keep_freed_memory

    keep_freed_memory()  # reuse activation memory between training steps, as the CLI does (see cifarkit.runtime)
    setup(device)  # an unavailable device is an error before the data is loaded
    plan = plan_training(recipe, out, changes=changes, subset=subset, resume=resume)
    given = data is not None
    with explain_moved_data(plan, given):
        loaded = _loaded(data if given else plan.data_source, cache_dir)
    options = dict(device=device, threads=threads, evaluate=evaluate, track=track, progress=progress)
    try:
        run, _ = train_planned(plan, loaded, callbacks=callbacks, **options)
    except KeyboardInterrupt:
        done = "continues from the last finished epoch" if (plan.out / "resume.pt").is_file() else "starts it again"
        raise KeyboardInterrupt(f"cifarkit.train(out={str(plan.out)!r}, resume=True) {done}") from None
    return run


def _compute(threads: int | None) -> None:
    """The process settings the CLI makes for a command that computes: allocator, and thread count (None: all)."""
    from cifarkit.runtime import keep_freed_memory, use_threads

    keep_freed_memory()
    use_threads(threads)


# --- a run -----------------------------------------------------------------------------------------------------------


class History(Sequence[dict[str, Any]]):
    """A run's epochs (``history.json``): one dict per epoch, a column by name (``history["val_acc"]``), curves."""

    def __init__(self, rows: list[dict[str, Any]], name: str = "run") -> None:
        self.rows, self.name = rows, name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if self.rows and key not in self.rows[0]:
                raise KeyError(f"{key!r}; the history's columns are {', '.join(self.columns)}")
            return [row.get(key) for row in self.rows]
        return self.rows[key]

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []

    def plot(self) -> Picture:
        """Accuracy and loss per epoch, training dashed and validation solid (the run's ``curves.png``)."""
        from cifarkit.plots import Picture, training_curves

        return Picture.of(training_curves({self.name: self.rows}))

    def __repr__(self) -> str:
        return f"History({len(self)} epoch{'' if len(self) == 1 else 's'}: {', '.join(self.columns)})"

    def _repr_html_(self) -> str:
        from cifarkit.report import markup

        if not self.rows:
            return markup.note("No epoch has finished yet.")
        cells = [[_cell(row.get(key)) for key in self.columns] for row in self.rows]
        return markup.image(self.plot().png, "training curves") + markup.table(self.columns, cells)


def _cell(value: Any) -> str:
    """A number as a table shows it: 4 significant decimals for fractions, whole numbers as they are."""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1 else f"{value:.4f}"
    return "—" if value is None else str(value)


def evaluation_lines(metrics: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> list[str]:
    """What an evaluation says after its classification report: accuracies, the most confused pair, where it is."""
    line = f"test accuracy {metrics['test_acc']:.4f}"
    if "test_acc_tta" in metrics:
        line += f"   with TTA ({metrics['tta']}) {metrics['test_acc_tta']:.4f}"
    test_data = metrics["test_data"]
    lines = [f"{line}   ({test_data['images']:,} test images from {test_data['source']})"]
    if "most_confused" in metrics:
        mc = metrics["most_confused"]
        lines.append(f"most confused: {mc['actual']} -> {mc['predicted']} ({mc['count']} images)")
    where = Path(metrics["eval_dir"])
    if where.name != "eval":
        lines.append(f"(not the run's own test set: results kept apart from {Path(run_dir) / 'eval'})")
    lines.append(f"figures and reports in {where}")
    return lines


class EvalResult:
    """A run's test-set evaluation: ``metrics`` is the metrics.json evaluate wrote, with ``report`` and ``eval_dir``."""

    def __init__(self, metrics: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> None:
        self.metrics, self.run_dir = dict(metrics), Path(run_dir)

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str]) -> EvalResult | None:
        """The evaluation of a run on its own test set, None before there is one."""
        from cifarkit.files import read_json

        folder = Path(run_dir) / "eval"
        if not (folder / "metrics.json").is_file():
            return None
        again = f"evaluate the run again: `cifarkit evaluate {run_dir}` rewrites {folder}"
        record = read_json(folder / "metrics.json", dict, again)
        text = folder / "classification_report.txt"
        report = text.read_text(encoding="utf-8") if text.is_file() else ""
        return cls({**record, "report": report, "eval_dir": folder}, run_dir)

    @property
    def path(self) -> Path:
        """The folder the evaluation wrote: RUN/eval/, or RUN/eval-NAME-HASH/ on other data."""
        return Path(self.metrics["eval_dir"])

    @property
    def accuracy(self) -> float:
        """Test accuracy as the model is best used: with the run's test-time augmentation when it has one."""
        return self.metrics.get("test_acc_tta", self.metrics["test_acc"])

    @property
    def report(self) -> str:
        """scikit-learn's classification report, as text."""
        return self.metrics["report"]

    @property
    def confusion_matrix(self) -> np.ndarray:
        """Counts of test images, actual class by row, predicted class by column."""
        import numpy as np

        return np.asarray(self.metrics["confusion_matrix"], dtype=np.int64)

    def plot_confusion_matrix(self) -> Picture:
        """The confusion matrices, counts and row-normalised, as evaluate drew them."""
        from cifarkit.plots import Picture

        return Picture.read(self.path / "confusion_matrix.png")

    def gallery(self) -> Picture:
        """Random test images titled actual, then predicted class and probability: green right, red wrong."""
        from cifarkit.plots import Picture

        return Picture.read(self.path / "gallery.png")

    def __str__(self) -> str:
        return "\n".join([self.report, *evaluation_lines(self.metrics, self.run_dir)])

    def __repr__(self) -> str:
        return f"EvalResult({self.run_dir.name}: test accuracy {self.accuracy:.4f})"

    def _repr_html_(self) -> str:
        from cifarkit.report import markup
        from cifarkit.report.sections import classification_table

        report = self.metrics["classification_report"]
        classes = [key for key in report if key not in ("accuracy", "macro avg", "weighted avg")]
        return (
            "".join(markup.paragraph(line) for line in evaluation_lines(self.metrics, self.run_dir))
            + classification_table(report, classes)
            + markup.image(self.plot_confusion_matrix().png, "confusion matrix: counts and row-normalised")
            + markup.image(self.gallery().png, "random test predictions")
        )


class Predictions(list):
    """:func:`cifarkit.predict.predict`'s answers, one :class:`~cifarkit.analysis.Prediction` per image, a table."""

    def _repr_html_(self) -> str:
        from cifarkit.report import markup

        rows = [(p.source, p.error or ", ".join(f"{name} {prob:.2%}" for name, prob in p.top)) for p in self]
        return markup.table(("image", "predicted classes"), rows)


@dataclass(frozen=True)
class Exported:
    """A model file :meth:`Run.export` wrote, how it compares with PyTorch, and the int8 model when asked for."""

    path: Path
    parity: Parity
    int8: Int8Report | None = None

    def __str__(self) -> str:
        text = f"wrote {self.path}\n{self.parity}"
        return text + (f"\nwrote {self.int8.path}\n{self.int8}" if self.int8 else "")


def recorded_data(run_dir: str | os.PathLike[str]) -> str | None:
    """Where the run trained, if that place still exists: the data a run is evaluated on when none is named."""
    from cifarkit.distributed import on_main
    from cifarkit.runs import read_config

    recorded = on_main(lambda: read_config(run_dir)).get("data_source")
    return recorded if recorded and Path(recorded).exists() else None


def check_export(run_dir: str | os.PathLike[str], fmt: str, output: str | os.PathLike[str] | None, int8: bool) -> None:
    """Refuse an export before the test data is loaded: the format, the output file, a damaged or diverged run."""
    from cifarkit.export import DEFAULT_FILES, check_exportable, check_format
    from cifarkit.runs import check_output_file

    if int8 and fmt != "onnx":
        raise CifarkitError("--int8 quantises ONNX models; use it with --format onnx")
    check_format(fmt)
    if output:  # into the run, only under a name an export writes
        check_output_file(output, "-o", run=run_dir, own=tuple(Path(name).suffix for name in DEFAULT_FILES.values()))
    check_exportable(run_dir)


def export_run(
    run_dir: str | os.PathLike[str],
    fmt: str,
    data: CIFAR10,
    *,
    output: str | os.PathLike[str] | None = None,
    tta: str | None = None,
    check_images: int = 1000,
    int8: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> Exported:
    """Export a checked run (see :func:`check_export`) with the run locked; ``say`` hears each file as it is written."""
    from cifarkit.export import export_model, quantize_int8, sample
    from cifarkit.runs import locked

    with locked(run_dir):  # the model files are written into the run by default
        path, parity = export_model(run_dir, fmt, sample(data.x_test, check_images), out=output, tta=tta)
        say(f"wrote {path}\n{parity}")
        report = quantize_int8(path, data) if int8 else None
        if report is not None:
            say(f"wrote {report.path}\n{report}")
    return Exported(path, parity, report)


class Run:
    """A run directory, opened from Python: its records (read afresh each time), and the commands that use its model."""

    def __init__(self, path: str | os.PathLike[str], *, data: CIFAR10 | None = None) -> None:
        from cifarkit.distributed import on_main
        from cifarkit.report.command import check_runs

        self.path = Path(path)
        on_main(lambda: check_runs([self.path]))  # rank 0 wrote it; on other machines it may not be seen
        self._data = data  # what it was trained on, when this process knows: the default of evaluate and report

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict[str, Any]:
        """config.json: the resolved recipe and where the data came from."""
        from cifarkit.runs import read_config

        return read_config(self.path)

    @property
    def recipe(self) -> Recipe:
        """The recipe the run trains, as config.json records it."""
        from cifarkit.recipes import recipe_from_config

        return recipe_from_config(self.config)

    def _record(self, name: str, kind: type) -> Any:
        from cifarkit.files import read_json

        path = self.path / name
        return read_json(path, kind, "restore it from a copy, or train the run again") if path.is_file() else kind()

    @property
    def history(self) -> History:
        """The finished epochs: losses, accuracies, learning rate, seconds (empty before the first)."""
        return History(self._record("history.json", list), self.name)

    @property
    def metrics(self) -> dict[str, Any]:
        """The training summary (metrics.json): parameters, best epoch and validation accuracy, time; {} until done."""
        return self._record("metrics.json", dict)

    @property
    def evaluation(self) -> EvalResult | None:
        """The evaluation on the run's own test set, None before :meth:`evaluate` has run."""
        return EvalResult.read(self.path)

    def summary(self) -> Summary:
        """The run's model layer by layer (no weights loaded), as :func:`summary` shows it."""
        from cifarkit.models.summary import summarize
        from cifarkit.runs import build_model

        return Summary(summarize(build_model(self.config, pretrained=False)))

    def _data_for(self, data: Data, cache_dir: str | os.PathLike[str] | None) -> CIFAR10:
        """``data``; else what the run was trained on in this process, where it trained, or the default place."""
        if data is None and cache_dir is None and self._data is not None:
            return self._data
        return _loaded(data if data is not None else recorded_data(self.path), cache_dir)

    def evaluate(
        self,
        data: Data = None,
        *,
        tta: str | None = None,
        device: str = "auto",
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> EvalResult:
        """Evaluate the best weights on ``data`` (default: what the run trained on), as ``cifarkit evaluate``."""
        from cifarkit.evaluate import evaluate

        _compute(threads)
        data = self._data_for(data, cache_dir)
        return EvalResult(evaluate(self.path, data, tta=tta, device=device), self.path)

    def predict(
        self,
        images: np.ndarray | Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        top_k: int = 3,
        device: str = "auto",
        threads: int | None = None,
    ) -> Predictions:
        """The ``top_k`` classes of each image file (one unreadable gets an ``error``) or uint8 RGB array."""
        from cifarkit.predict import predict

        _compute(threads)
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        return Predictions(predict(self.path, images, top_k=top_k, device=device))

    def report(
        self,
        output: str | os.PathLike[str] = "report.html",
        *,
        compare: Sequence[Run | str | os.PathLike[str]] = (),
        data: Data = None,
        use_data: bool = True,
        use_model: bool = True,
        device: str = "auto",
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Path:
        """Write the HTML report of this run (beside the runs in ``compare``), as ``cifarkit report``; returns its path.

        ``use_data``/``use_model`` False are ``--no-data``/``--no-model``; ``options`` are
        :class:`~cifarkit.report.options.ReportOptions` fields.
        """
        from cifarkit.report.command import check_runs, write_report
        from cifarkit.report.options import ReportOptions
        from cifarkit.runs import check_output_file

        settings = ReportOptions(**options)
        check_output_file(output, "-o")
        runs = [self.path, *(other.path if isinstance(other, Run) else Path(other) for other in compare)]
        check_runs(runs, device=device if use_data and use_model else None)
        _compute(threads)
        loaded = self._data_for(data, cache_dir) if use_data else None
        return write_report(runs, output, data=loaded, use_model=use_model, device=device, options=settings)

    def export(
        self,
        format: str = "onnx",
        output: str | os.PathLike[str] | None = None,
        *,
        data: Data = None,
        tta: str | None = None,
        check_images: int = 1000,
        int8: bool = False,
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Exported:
        """Write the model as one ``onnx`` or ``torch-export`` file, checked against PyTorch (``cifarkit export``)."""
        check_export(self.path, format, output, int8)
        _compute(threads)
        data = self._data_for(data, cache_dir)
        return export_run(self.path, format, data, output=output, tta=tta, check_images=check_images, int8=int8)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def _repr_html_(self) -> str:
        from cifarkit.report import markup

        config, metrics, evaluation, history = self.config, self.metrics, self.evaluation, self.history
        facts = [
            ("recipe", config.get("name", "?")),
            ("model", config.get("model", "?")),
            ("parameters", f"{metrics['params']:,}" if "params" in metrics else "—"),
            ("epochs", f"{len(history)} of {config.get('epochs', '?')}"),
            ("best validation accuracy", _cell(metrics.get("best_val_acc"))),
            ("training time", f"{metrics['train_seconds']:.0f} s" if "train_seconds" in metrics else "—"),
            ("test accuracy", _cell(evaluation.accuracy) if evaluation else "not evaluated yet"),
        ]
        body = markup.table(("run", str(self.path)), facts)
        return body + (markup.image(history.plot().png, "training curves") if len(history) else "")
