"""The `cifarkit` command line: each verb parses its flags, refuses bad input before work, and calls the Python API."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from cifarkit import __version__
from cifarkit.errors import CifarkitError
from cifarkit.recipes import CHOICES, DEFAULT_RECIPE, Recipe
from cifarkit.runtime import keep_freed_memory


def _data(args: argparse.Namespace):
    from cifarkit.api import load_data

    return load_data(args.data, cache_dir=args.cache_dir)


def _output_file(path: str, run: str | None = None, own: tuple[str, ...] = ()) -> Path:
    """An output file path, checked before any work: writable, and never a file of a run (see check_output_file)."""
    from cifarkit.runs import check_output_file

    return check_output_file(path, "-o", run=run, own=own)


def cmd_info(args: argparse.Namespace) -> None:
    from cifarkit.runtime import machine_info, precision_name

    info = machine_info(args.device)
    features = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in info["cpu_features"].items())
    lines = [
        ("cifarkit", info["cifarkit"]),
        ("torch", info["torch"]),
        ("python", info["python"]),
        ("device", info["device"] + (f" ({info['gpu']})" if "gpu" in info else "")),
        ("CPU", info["cpu_model"]),
        ("CPU kind", info["cpu_kind"]),
        ("ISA", features),
        ("cores", info["cores"]),
        ("CPUs usable", f"{info['cpu_budget']['cpus']} ({info['cpu_budget']['why']})"),
        (
            "torch threads",
            f"{info['torch_threads']} (one per usable core; training uses fewer while other programs keep CPUs "
            "busy; --threads N fixes the count)",
        ),
        ("bf16=auto means", precision_name(info["bf16_auto"])),
    ]
    if args.estimate:
        info["estimate"] = _default_command_estimate(args.threads)
        matmul = info["estimate"]["matmul_gflops"]
        lines += [
            ("matmul", f"{matmul['float32']:,.0f} GFLOP/s float32, {matmul['bfloat16']:,.0f} bfloat16 (2048x2048)"),
            ("default command", info["estimate"]["says"]),
        ]
    if args.json:
        print(json.dumps(info, indent=2))
        return
    for name, value in lines:
        print(f"{name + ':':<18}{value}")


def _default_command_estimate(threads: int | None) -> dict[str, Any]:
    """How long `cifarkit train` (the default recipe on all of CIFAR-10) takes here, from a few seconds of it."""
    from cifarkit.estimate import minutes, run_work
    from cifarkit.recipes import get_recipe
    from cifarkit.runtime import machine_record

    recipe = get_recipe(DEFAULT_RECIPE)
    per_image = _seconds_per_image(recipe, threads)
    val = round(TRAIN_IMAGES * recipe.val_fraction)
    seconds = run_work(recipe, TRAIN_IMAGES - val, val, TEST_IMAGES) * per_image
    return {
        "recipe": recipe.name,
        "seconds_per_image": per_image,
        "default_command_s": seconds + DATA_LOAD_S,
        "matmul_gflops": machine_record(threads)["matmul_gflops"],
        "says": f"`cifarkit train` ({recipe.name}, {recipe.epochs} epochs): {minutes(seconds + DATA_LOAD_S)} here "
        f"({per_image * 1e3:.2f} ms per training image; while other programs leave the CPUs free)",
    }


def _seconds_per_image(recipe: Recipe, threads: int | None = None, images: int = 1000) -> float:
    """Seconds a training image at full side takes here: three epochs of ``recipe`` on random images.

    Through the training loop itself; batches of 500, since a step's speed per image barely depends on the batch
    (``benchmarks/train_step.py``) and a slow machine still finishes within about 10 seconds. The first epoch
    prepares kernels; the faster of the other two is taken, as a moment's load from another program only slows.
    """
    import tempfile

    import numpy as np

    from cifarkit.data.dataset import CIFAR10
    from cifarkit.files import read_json
    from cifarkit.train import train

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(images) % 10
    data = CIFAR10(pixels, labels, pixels[:10], labels[:10], source="random pixels")
    probe = recipe.replace(epochs=3, val_fraction=0, batch_size=min(500, recipe.batch_size), patience=0)
    with tempfile.TemporaryDirectory() as folder:
        run = train(probe, data, Path(folder) / "probe", progress=False, threads=threads)
        return min(row["seconds"] for row in read_json(run / "history.json", list)[1:]) / images


TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR-10, which the default command trains on
# Loading CIFAR-10 once its decoded copy is cached, whitening init and start-up: measured with the default command.
DATA_LOAD_S = 10.0


def cmd_data(args: argparse.Namespace) -> None:
    from cifarkit.api import check_sample, sample_grid

    if args.action == "show":
        check_sample(args.count, args.seed)
    output = _output_file(args.output) if args.action == "show" else None
    data = _data(args)
    if args.action == "info":
        print(f"source: {data.source}")
        for split, x in (("train", data.x_train), ("test", data.x_test)):
            print(f"{split}: images {x.shape} {x.dtype}")
            for name, n in data.class_counts(split).items():
                print(f"  {name:<12}{n:>7,}")
        return
    sample_grid(data, args.count, seed=args.seed).save(output)
    print(f"wrote {args.output}")


def cmd_models(args: argparse.Namespace) -> None:
    from cifarkit.models import count_parameters, create_model, get_model_info, list_models
    from cifarkit.models.summary import summarize

    # pretrained=False: counting and summarising need no weights, so no weight file is read.
    if args.name:
        print(f"{args.name}: {get_model_info(args.name).description}")
        print(summarize(create_model(args.name, pretrained=False)))
        return
    for info in list_models():
        print(f"{info.name:<22}{count_parameters(create_model(info.name, pretrained=False)):>12,}  {info.description}")


def cmd_recipes(args: argparse.Namespace) -> None:
    from cifarkit.estimate import training_compute
    from cifarkit.recipes import DEFAULT_RECIPE, RECIPES

    name_width = max(len(r.name) for r in RECIPES.values()) + 2
    model_width = max(len(r.model) for r in RECIPES.values()) + 2
    compute = {name: training_compute(r) for name, r in RECIPES.items()}
    for r in RECIPES.values():
        mark = "*" if r.name == DEFAULT_RECIPE else " "
        print(
            f"{mark} {r.name:<{name_width}}{r.model:<{model_width}}{r.epochs:>3} ep {compute[r.name]:>6.2f} ae  "
            f"{r.optimizer:<7} lr {r.lr:<8g} {r.description}"
        )
    if args.verbose:
        for r in RECIPES.values():
            print(json.dumps({**r.to_dict(), "compute": round(compute[r.name], 3)}))
    print("(* = default; ae = training compute in airbench94-epochs: fastnet_s at 32 px over 50,000 images = 1)")


def _overrides(args: argparse.Namespace) -> dict:
    from cifarkit.recipes import load_config_file

    changes = load_config_file(args.config) if args.config else {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CifarkitError(f"--set expects FIELD=VALUE, got {item!r}")
        changes[key.strip()] = value.strip()
    for key in ("epochs", "seed", "batch_size", "lr", "optimizer"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    return changes


def cmd_train(args: argparse.Namespace) -> None:
    from cifarkit.api import explain_moved_data, plan_training, train_planned
    from cifarkit.distributed import is_main, setup

    setup(args.device)  # an unavailable device is an error before the data is loaded; torchrun: join the others
    plan = plan_training(args.recipe, args.out, changes=_overrides(args), subset=args.subset, resume=args.resume)
    given, args.data = bool(args.data), args.data or plan.data_source  # resuming: where the run found its data
    with explain_moved_data(plan, given):
        data = _data(args)
    try:
        _, evaluation = train_planned(
            plan, data, device=args.device, threads=args.threads, evaluate=not args.no_eval, track=args.track
        )
    except KeyboardInterrupt:
        done = "continues from the last finished epoch" if (plan.out / "resume.pt").is_file() else "starts it again"
        hint = f"`cifarkit train --resume --out {plan.out}` {done}"
        print(f"cifarkit: interrupted; {hint}", file=sys.stderr)
        sys.exit(130)
    if evaluation is not None and is_main():  # under torchrun, rank 0 alone prints
        _print_eval(evaluation.metrics, plan.out)


def _run_data(args: argparse.Namespace):
    """The data to evaluate a run on: --data, else the data the run trained on (said which), else the default."""
    from cifarkit.api import recorded_data
    from cifarkit.distributed import is_main

    if not args.data:
        recorded = recorded_data(args.run)
        if recorded:
            args.data = recorded
            if is_main():
                print(f"data: {recorded}, where the run trained (--data DIR evaluates on other data)", file=sys.stderr)
    return _data(args)


def _print_eval(metrics: dict, run_dir: Path) -> None:
    from cifarkit.api import evaluation_lines

    print(metrics["report"])
    print("\n".join(evaluation_lines(metrics, run_dir)))


TUNE_EPILOG = """\
search space file (TOML): one entry per recipe field, a range, a list of choices or a fixed value
  epochs = 6                                  # fixed for every trial
  lr = {low = 1e-4, high = 1e-2, log = true}  # log-uniform; omit log for uniform, add step = 0.1 for a grid
  translate = {low = 0, high = 4}             # integer fields take whole numbers
  optimizer = {choices = ["adamw", "sgd"]}
  [model_kwargs]
  dropout = {low = 0.0, high = 0.6}           # keys of model_kwargs and lr_scale go in their own table

Running the same command again resumes the study; the same command with the same --storage and --study
on other machines adds workers. The best trial's changes are written to STUDY/best_config.json for
`cifarkit train --recipe RECIPE --config STUDY/best_config.json`; `cifarkit report STUDY` shows the study.
"""


def cmd_tune(args: argparse.Namespace) -> None:
    from cifarkit.recipes import DEFAULT_RECIPE, get_recipe
    from cifarkit.runtime import pick_device
    from cifarkit.train import check_split
    from cifarkit.tune import BEST_CONFIG, best_trial, check_storage, check_study_dir, load_space, retrain_best, tune

    recipe = get_recipe(args.recipe or DEFAULT_RECIPE)
    space = load_space(args.space, recipe)
    pick_device(args.device)
    out = Path(args.out or f"studies/{recipe.name}-{Path(args.space).stem}")
    check_study_dir(out)  # the study directory and the storage are refused before the data is loaded,
    check_storage(args.storage)  # and nothing is created until they and the subset pass
    data = _data(args)
    check_split(data.y_train, space.recipe(recipe, {}), args.subset)
    print(f"tuning {recipe.name} over {', '.join(space.params)} in {out}")
    try:
        study = tune(
            recipe,
            space,
            data,
            out,
            n_trials=args.trials,
            storage=args.storage,
            study_name=args.study,
            pruner=args.pruner,
            subset=args.subset,
            track_with=args.track,
            device=args.device,
        )
    except KeyboardInterrupt:
        print("cifarkit: interrupted; the same command resumes the study", file=sys.stderr)
        sys.exit(130)
    best = best_trial(study, recipe, space)
    print(
        f"best: trial {best.number}, validation accuracy {best.value:.4f}, {best.params}\n"
        f"wrote {out / BEST_CONFIG}: `cifarkit train --recipe {recipe.name} --config {out / BEST_CONFIG}`"
    )
    if args.final:
        run_dir, metrics = retrain_best(
            study, recipe, space, data, out, subset=args.subset, track_with=args.track, device=args.device
        )
        _print_eval(metrics, run_dir)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from cifarkit.distributed import is_main
    from cifarkit.evaluate import evaluate

    record = evaluate(args.run, _run_data(args), tta=args.tta, device=args.device)
    if is_main():  # under torchrun every process has the figures; rank 0 alone prints them
        _print_eval(record, Path(args.run))


def cmd_predict(args: argparse.Namespace) -> None:
    from cifarkit.predict import predict

    results = predict(args.run, args.images, top_k=args.top_k, device=args.device)
    # The predictions of the good files go to stdout (as JSON: every file, a bad one as {image, error});
    # each bad file is one `cifarkit: error: FILE: reason` line on stderr, and the exit status is then 2.
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if not r.error:
                print(f"{r.source}:")
                for name, p in r.top:
                    print(f"  {name:<12}{p:8.4f}")
    sys.stdout.flush()
    for r in results:
        if r.error:
            print(f"cifarkit: error: {r.error}", file=sys.stderr)  # the message names the file
    if any(r.error for r in results):
        sys.exit(2)


def cmd_report(args: argparse.Namespace) -> None:
    from cifarkit.report.command import check_runs, run_report

    _output_file(args.output)
    if len(args.runs) == 1 and (args.runs[0] / "study.json").is_file():  # a `cifarkit tune` study directory
        from cifarkit.report.study import study_report
        from cifarkit.tune import load_study

        print(f"wrote {study_report(load_study(args.runs[0]), args.runs[0], args.output)}")
        return
    # Not a run, a damaged config, a device this machine lacks (where a model runs): said before the data is loaded.
    check_runs(args.runs, device=None if args.no_data or args.no_model else args.device)
    data = None if args.no_data else _data(args)
    print(f"wrote {run_report(args, data=data, device=args.device)}")


def cmd_export(args: argparse.Namespace) -> None:
    from cifarkit.api import check_export, export_run

    check_export(args.run, args.format, args.output, args.int8)  # before the data is loaded
    data = _data(args)
    if args.check_images > len(data.x_test):
        print(
            f"cifarkit: note: --check-images {args.check_images:,} is more than the {len(data.x_test):,} test "
            "images; checking all of them",
            file=sys.stderr,
        )
    export_run(
        args.run,
        args.format,
        data,
        output=args.output,
        tta=args.tta,
        check_images=args.check_images,
        int8=args.int8,
        say=print,
    )


def cmd_serve(args: argparse.Namespace) -> None:
    import dataclasses

    from cifarkit.serve.server import serve
    from cifarkit.serve.settings import ServeSettings

    settings = ServeSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeSettings)})
    where = {name: getattr(args, name) for name in ("host", "port", "backend", "device", "tta", "model_file")}
    serve(args.run, settings=settings, **where)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error told like every other refusal: one ``cifarkit: error:`` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"cifarkit: error: {self.prog}: {message}; see `{self.prog} --help`\n")


TTA_CHOICES = CHOICES["tta"]  # recipes imports no torch: `cifarkit --help` stays fast


def build_parser() -> argparse.ArgumentParser:
    """The `cifarkit` command line: one subcommand per verb, each with its own options."""
    parser = _Parser(
        prog="cifarkit",
        description="Train, evaluate, explain, serve and export CIFAR-10 "
        "image classifiers. `cifarkit COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"cifarkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_opts, device_opts = _shared_options()
    _add_info_commands(sub, data_opts, device_opts)
    _add_train(sub, data_opts, device_opts)
    _add_tune(sub, data_opts, device_opts)
    _add_run_commands(sub, data_opts, device_opts)
    _add_export(sub, data_opts, device_opts)
    _add_serve(sub, data_opts, device_opts)
    return parser


def _shared_options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The options several commands take: where the data is, and what computes."""
    data_opts = argparse.ArgumentParser(add_help=False)
    data_opts.add_argument(
        "--data",
        help="CIFAR-10 location: archive, batches folder or class-folder tree "
        "(default: $CIFARKIT_DATA, then the download cache)",
    )
    data_opts.add_argument(
        "--cache-dir",
        help="where downloads and decoded arrays are kept (default: $CIFARKIT_CACHE or ~/.cache/cifarkit)",
    )
    device_opts = argparse.ArgumentParser(add_help=False)
    device_opts.add_argument(
        "--device", default="auto", help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    device_opts.add_argument(
        "--threads",
        type=_threads,
        help="CPU threads for PyTorch, fixed (default: one per core this process may use, within its affinity "
        "and container CPU quota; training uses fewer while other programs keep CPUs busy)",
    )
    return data_opts, device_opts


def _add_info_commands(sub: Any, data_opts: argparse.ArgumentParser, device_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser("data", parents=[data_opts], help="describe or show the data set")
    p.add_argument("action", choices=["info", "show"], help="info: sizes, classes and source; show: a grid of images")
    p.add_argument("-o", "--output", default="cifar10_samples.png", help="PNG to write (show)")
    p.add_argument("--count", type=int, default=32, help="images in the grid, 1 to 256 (show; default 32)")
    p.add_argument("--seed", type=int, default=0, help="which images show draws: a whole number >= 0 (default 0)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser(
        "info", parents=[device_opts], help="version, device, CPU features and the precision bf16=auto picks here"
    )
    p.add_argument("--json", action="store_true", help="print JSON (what the benchmarks record)")
    p.add_argument(
        "--no-estimate",
        dest="estimate",
        action="store_false",
        help="skip the ~10 s measurement of how long the default `cifarkit train` takes here",
    )
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list registered models with parameter counts, or summarise one")
    p.add_argument("name", nargs="?", help="print this model's layers, output shapes and parameters")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="list named training configurations")
    p.add_argument("-v", "--verbose", action="store_true", help="print every field of every recipe")
    p.set_defaults(func=cmd_recipes)


def _add_train(sub: Any, data_opts: argparse.ArgumentParser, device_opts: argparse.ArgumentParser) -> None:
    from cifarkit.tracking import TRACKERS

    p = sub.add_parser("train", parents=[data_opts, device_opts], help="train a recipe, then evaluate it")
    p.add_argument("--recipe", help=f"recipe name (default {DEFAULT_RECIPE}; see `cifarkit recipes`)")
    p.add_argument("--epochs", type=int, help="epochs to train (default: the recipe's)")
    p.add_argument(
        "--seed", type=int, help="random seed of initialisation, split, augmentation and order (default: the recipe's)"
    )
    p.add_argument("--batch-size", type=int, help="images per optimiser step (default: the recipe's)")
    p.add_argument(
        "--lr",
        type=float,
        help="peak learning rate (default: the recipe's; with --resume, a lower one continues a run that diverged)",
    )
    p.add_argument("--optimizer", help="adamax, adamw or sgd (default: the recipe's)")
    p.add_argument("--subset", type=int, help="train on a class-balanced subset of N training images")
    p.add_argument("--config", help="JSON or TOML file of recipe fields to override")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override one recipe field (repeatable)")
    p.add_argument("--out", help="run directory (default runs/RECIPE-TIMESTAMP)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (its recipe and data come from the run)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation after training")
    p.add_argument(
        "--track",
        choices=TRACKERS,
        help="mirror the run to TensorBoard (event files in RUN/tensorboard) "
        "or MLflow ($MLFLOW_TRACKING_URI); needs cifarkit[track]",
    )
    p.set_defaults(func=cmd_train)


def _add_tune(sub: Any, data_opts: argparse.ArgumentParser, device_opts: argparse.ArgumentParser) -> None:
    from cifarkit.tracking import TRACKERS

    p = sub.add_parser(
        "tune",
        parents=[data_opts, device_opts],
        help="search a recipe's hyperparameters with Optuna",
        epilog=TUNE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipe", help=f"recipe to tune (default {DEFAULT_RECIPE})")
    p.add_argument("--space", required=True, help="TOML search space (see below; examples/spaces/ has some)")
    p.add_argument(
        "--trials",
        type=_positive_int,
        required=True,
        help="finished (completed or pruned) trials the study should hold; more are run until it does",
    )
    p.add_argument("--out", help="study directory (default studies/RECIPE-SPACE)")
    p.add_argument("--study", help="study name in the storage (default: the study directory's name)")
    p.add_argument(
        "--storage",
        help="SQLAlchemy URL of a database many workers share, e.g. "
        "postgresql://user@host/db (default: a SQLite file in the study directory)",
    )
    p.add_argument(
        "--pruner",
        choices=["median", "halving", "none"],
        default="median",
        help="stop bad trials early: below the median of earlier trials at the same epoch (default), "
        "successive halving, or never",
    )
    p.add_argument(
        "--subset", type=_positive_int, help="train every trial on a class-balanced subset of N training images"
    )
    p.add_argument("--track", choices=TRACKERS, help="mirror every trial to TensorBoard or MLflow")
    p.add_argument(
        "--final",
        action="store_true",
        help="then retrain the best trial on all training images and evaluate it on the test set",
    )
    p.set_defaults(func=cmd_tune)


def _add_run_commands(sub: Any, data_opts: argparse.ArgumentParser, device_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser("evaluate", parents=[data_opts, device_opts], help="evaluate a run on the test set")
    p.add_argument("run", help="run directory")
    p.add_argument("--tta", choices=TTA_CHOICES, help="test-time augmentation (default: the recipe's)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[device_opts], help="classify image files with a trained run")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, any Pillow format and size)")
    p.add_argument(
        "--top-k", type=_positive_int, default=3, help="classes to print per image, at most the run's (default 3)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead of a table: one entry per image, {image, predictions} or {image, error}",
    )
    p.set_defaults(func=cmd_predict)

    from cifarkit.report.command import add_report_arguments

    p = sub.add_parser("report", parents=[data_opts, device_opts], help="self-contained HTML report comparing runs")
    add_report_arguments(p)
    p.add_argument(
        "--no-data",
        action="store_true",
        help="render what `cifarkit evaluate` wrote alone (no top-loss images, Grad-CAM, robustness "
        "or temperature scaling; runs must be evaluated already)",
    )
    p.set_defaults(func=cmd_report)


def _add_export(sub: Any, data_opts: argparse.ArgumentParser, device_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[data_opts], help="write a run as an ONNX or torch.export model file")

    def export_format(text: str) -> str:
        """A format cifarkit writes; a removed one (torchscript) is refused naming its replacement."""
        from cifarkit.export import check_format

        try:
            check_format(text)
        except CifarkitError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    p.add_argument("run", help="run directory")
    p.add_argument(
        "--format",
        type=export_format,
        choices=["onnx", "torch-export"],
        default="onnx",
        help="onnx (default): for ONNX Runtime and `cifarkit serve --backend onnx`; torch-export: a torch.export "
        "program for torch.export.load, AOTInductor or ExecuTorch (load it with the PyTorch version that wrote it)",
    )
    p.add_argument("-o", "--output", help="file to write (default RUN/model.onnx or RUN/model.pt2)")
    p.add_argument("--tta", choices=TTA_CHOICES, help="test-time augmentation built in (default: the recipe's)")
    p.add_argument(
        "--check-images",
        type=_positive_int,
        default=1000,
        help="CIFAR-10 test images the export is checked against PyTorch on (default 1000; "
        "more than the test set has checks all of them)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write an int8-quantised ONNX model, with its test accuracy and speed beside the float model's",
    )
    p.add_argument(
        "--threads", type=_threads, help="CPU threads for PyTorch (default: one per core this process may use)"
    )
    p.set_defaults(func=cmd_export)


def _add_serve(sub: Any, data_opts: argparse.ArgumentParser, device_opts: argparse.ArgumentParser) -> None:
    from cifarkit.serve.settings import ServeSettings

    limits = ServeSettings()
    p = sub.add_parser("serve", parents=[device_opts], help="serve a run over HTTP: a web page and a JSON API")
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; any other needs an API key)",
    )
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 1 to 65535 (default 8000)")
    p.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="PyTorch (default) or ONNX Runtime on the file `cifarkit export` wrote",
    )
    p.add_argument("--model-file", help="ONNX file for --backend onnx (default RUN/model.onnx)")
    p.add_argument(
        "--tta", choices=TTA_CHOICES, help="test-time augmentation (default: the recipe's, or the ONNX file's)"
    )
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on /v1/ requests (default "
        "$CIFARKIT_API_KEY, which keeps the key out of the process list)",
    )
    g = p.add_argument_group("limits and batching")
    for name, kind, text in (
        ("max_upload_mb", _positive_float, "largest request body; 413 beyond"),
        ("max_files", _positive_int, "most images per request"),
        ("max_pixels", _positive_int, "largest image, width x height, refused before decoding"),
        ("max_batch", _positive_int, "most images in one forward pass"),
        ("batch_wait_ms", _nonnegative_float, "how long an idle model waits for requests being decoded, to batch them"),
        ("max_queue", _positive_int, "most images waiting for the model; 503 with Retry-After beyond"),
    ):
        flag, default = "--" + name.replace("_", "-"), getattr(limits, name)
        g.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    p.set_defaults(func=cmd_serve)


def _whole(text: str, low: int, high: float, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expects {what}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _whole(text, 1, math.inf, "a whole number >= 1")


MAX_THREADS = 1024  # PyTorch crashes (segmentation fault) at its first operation with 100,000 threads


def _threads(text: str) -> int:
    """A thread count from 1 to MAX_THREADS."""
    value = _positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expects at most {MAX_THREADS} threads, got {text!r}")
    return value


def _float(text: str, low: float, low_ok: bool, what: str) -> float:
    """A finite number above ``low`` (or equal to it where ``low_ok``); NaN and infinity are refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < low or (value == low and not low_ok):
        raise argparse.ArgumentTypeError(f"expects {what}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _float(text, 0.0, False, "a finite number > 0")


def _nonnegative_float(text: str) -> float:
    return _float(text, 0.0, True, "a finite number >= 0")


def _port(text: str) -> int:
    return _whole(text, 1, 65535, "a TCP port from 1 to 65535")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # reuse activation memory between training steps (see runtime.py)
    if hasattr(args, "threads"):  # commands that compute: --threads, or what the CPU budget and the load allow
        from cifarkit.runtime import use_threads

        use_threads(args.threads)
    try:
        args.func(args)
    except CifarkitError as e:
        print(f"cifarkit: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the machine refused (disk full, permissions, ...): say what and where, without a traceback
        where = f" ({e.filename})" if e.filename else ""
        print(f"cifarkit: error: {e.strerror or e}{where}; free space or choose a writable place", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cifarkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        _lost_the_others(e)
        raise


def _lost_the_others(error: RuntimeError) -> None:
    """In a torchrun launch, a collective that fails because another process died: one line, exit 2."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    text = str(error)
    lost = isinstance(error, getattr(dist, "DistError", ())) or any(
        sign in text for sign in ("gloo", "NCCL", "Connection closed", "Connection reset", "timed out", "Timed out")
    )
    if not lost:  # another error in a launch is a bug like any other: its traceback stays
        return
    reason = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    reason = reason.split("] ", 1)[-1].split(". ")[0]  # gloo's "[source file:line] what happened. Advice..."
    print(
        f"cifarkit: error: rank {dist.get_rank()} stopped: another process of the launch failed or was killed "
        f"({reason}); resume with the same launch and `cifarkit train --resume --out RUN`",
        file=sys.stderr,
    )
    sys.exit(2)


if __name__ == "__main__":
    main()
