"""The `cifarkit` command line: each verb parses its flags and calls the Python API, nothing else."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cifarkit import __version__
from cifarkit.errors import CifarkitError
from cifarkit.runtime import keep_freed_memory


def _data(args: argparse.Namespace):
    from cifarkit.data import load_cifar10

    return load_cifar10(args.data, cache_dir=args.cache_dir)


def _output_file(path: str) -> Path:
    """An output file path; a directory there is an error (the file would replace nothing sensible)."""
    out = Path(path)
    if out.is_dir():
        raise CifarkitError(f"-o {out} is a directory; name the file to write, e.g. {out / 'samples.png'}")
    return out


def cmd_info(args: argparse.Namespace) -> None:
    from cifarkit.runtime import machine_info, precision_name

    info = machine_info(args.device)
    features = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in info["cpu_features"].items())
    lines = [("cifarkit", info["cifarkit"]), ("torch", info["torch"]), ("python", info["python"]),
             ("device", info["device"] + (f" ({info['gpu']})" if "gpu" in info else "")),
             ("CPU", info["cpu_model"]), ("CPU kind", info["cpu_kind"]), ("ISA", features),
             ("cores", info["cores"]), ("torch threads", info["torch_threads"]),
             ("bf16=auto means", precision_name(info["bf16_auto"]))]
    if args.json:
        print(json.dumps(info, indent=2))
        return
    for name, value in lines:
        print(f"{name + ':':<18}{value}")


def cmd_data(args: argparse.Namespace) -> None:
    output = _output_file(args.output) if args.action == "show" else None
    data = _data(args)
    if args.action == "info":
        print(f"source: {data.source}")
        for split, x in (("train", data.x_train), ("test", data.x_test)):
            print(f"{split}: images {x.shape} {x.dtype}")
            for name, n in data.class_counts(split).items():
                print(f"  {name:<12}{n:>7,}")
        return
    from cifarkit.plots import image_grid

    pick = np.random.default_rng(args.seed).choice(len(data.x_train), size=args.count, replace=False)
    image_grid(data.x_train[pick], [data.classes[i] for i in data.y_train[pick]], output)
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
    from cifarkit.recipes import DEFAULT_RECIPE, RECIPES

    name_width = max(len(r.name) for r in RECIPES.values()) + 2
    model_width = max(len(r.model) for r in RECIPES.values()) + 2
    for r in RECIPES.values():
        mark = "*" if r.name == DEFAULT_RECIPE else " "
        print(f"{mark} {r.name:<{name_width}}{r.model:<{model_width}}{r.epochs:>3} ep  {r.optimizer:<7} "
              f"lr {r.lr:<8g} {r.description}")
    if args.verbose:
        for r in RECIPES.values():
            print(json.dumps(r.to_dict()))
    print("(* = default)")


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


def _recipe_and_subset(args: argparse.Namespace):
    """The recipe and subset to train: named on the command line, or, with --resume, read from the run."""
    from cifarkit.recipes import DEFAULT_RECIPE, get_recipe, recipe_from_config, validate

    if not args.resume:
        return validate(get_recipe(args.recipe or DEFAULT_RECIPE).replace(**_overrides(args))), args.subset
    if not args.out:
        raise CifarkitError("--resume needs --out RUN, the run directory to continue")
    from cifarkit.runs import read_config

    config = read_config(args.out)
    recipe = recipe_from_config(config)
    if args.recipe and args.recipe != recipe.name:
        raise CifarkitError(f"--resume: {args.out} trains recipe {recipe.name!r}, not {args.recipe!r}; "
                            f"drop --recipe (the run directory knows its recipe)")
    args.data = args.data or config.get("data_source")
    return validate(recipe.replace(**_overrides(args))), args.subset if args.subset is not None else config.get("subset")


def cmd_train(args: argparse.Namespace) -> None:
    from cifarkit.evaluate import evaluate
    from cifarkit.runtime import pick_device
    from cifarkit.train import train

    recipe, subset = _recipe_and_subset(args)
    pick_device(args.device)  # an unavailable device is an error before the data is loaded
    out = Path(args.out or f"runs/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    data = _data(args)
    print(f"training {recipe.name} ({recipe.model}) into {out}")
    try:
        train(recipe, data, out, subset=subset, resume=args.resume, device=args.device)
    except KeyboardInterrupt:
        hint = (f"`cifarkit train --resume --out {out}` continues from the last finished epoch"
                if (out / "resume.pt").is_file() else f"no epoch finished; `cifarkit train --out {out}` starts it again")
        print(f"cifarkit: interrupted; {hint}", file=sys.stderr)
        sys.exit(130)
    if not args.no_eval:
        _print_eval(evaluate(out, data, device=args.device), out)


def _print_eval(metrics: dict, run_dir: Path) -> None:
    print(metrics["report"])
    line = f"test accuracy {metrics['test_acc']:.4f}"
    if "test_acc_tta" in metrics:
        line += f"   with TTA ({metrics['tta']}) {metrics['test_acc_tta']:.4f}"
    print(line)
    if "most_confused" in metrics:
        mc = metrics["most_confused"]
        print(f"most confused: {mc['actual']} -> {mc['predicted']} ({mc['count']} images)")
    print(f"figures and reports in {run_dir / 'eval'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from cifarkit.evaluate import evaluate

    _print_eval(evaluate(args.run, _data(args), tta=args.tta, device=args.device), Path(args.run))


def cmd_predict(args: argparse.Namespace) -> None:
    from cifarkit.predict import predict

    results = predict(args.run, args.images, top_k=args.top_k, device=args.device)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.error:
                print(f"ERROR {r.error}")  # the message names the file
            else:
                print(f"{r.source}:")
                for name, p in r.top:
                    print(f"  {name:<12}{p:8.4f}")
    if any(r.error for r in results):
        sys.exit(1)


def cmd_report(args: argparse.Namespace) -> None:
    from cifarkit.report.command import run_report
    from cifarkit.runs import load_model, read_config
    from cifarkit.train import validation_set

    data = None if args.no_data else _data(args)
    out = run_report(args, data=data, model_loader=load_model,
                     validation_loader=(lambda run: validation_set(data, read_config(run))) if data else None)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifarkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cifarkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_opts = argparse.ArgumentParser(add_help=False)
    data_opts.add_argument("--data", help="CIFAR-10 location: archive, batches folder or class-folder tree "
                                          "(default: $CIFARKIT_DATA, then the download cache)")
    data_opts.add_argument("--cache-dir", help="where downloads and decoded arrays are kept "
                                               "(default: $CIFARKIT_CACHE or ~/.cache/cifarkit)")
    device_opts = argparse.ArgumentParser(add_help=False)
    device_opts.add_argument("--device", default="auto", help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    device_opts.add_argument("--threads", type=_positive_int, help="CPU threads for PyTorch (default: one per core); "
                                                         "1 is fastest on a machine busy with other work")

    p = sub.add_parser("data", parents=[data_opts], help="describe or show the data set")
    p.add_argument("action", choices=["info", "show"])
    p.add_argument("-o", "--output", default="cifar10_samples.png", help="PNG to write (show)")
    p.add_argument("--count", type=int, default=32, help="images in the grid (show)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("info", parents=[device_opts], help="version, device, CPU features and the precision "
                                                           "bf16=auto picks here")
    p.add_argument("--json", action="store_true", help="print JSON (what the benchmarks record)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list registered models with parameter counts, or summarise one")
    p.add_argument("name", nargs="?", help="print this model's layers, output shapes and parameters")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="list named training configurations")
    p.add_argument("-v", "--verbose", action="store_true", help="print every field of every recipe")
    p.set_defaults(func=cmd_recipes)

    from cifarkit.recipes import DEFAULT_RECIPE

    p = sub.add_parser("train", parents=[data_opts, device_opts], help="train a recipe, then evaluate it")
    p.add_argument("--recipe", help=f"recipe name (default {DEFAULT_RECIPE}; see `cifarkit recipes`)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer")
    p.add_argument("--subset", type=int, help="train on a class-balanced subset of N training images")
    p.add_argument("--config", help="JSON or TOML file of recipe fields to override")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override one recipe field (repeatable)")
    p.add_argument("--out", help="run directory (default runs/RECIPE-TIMESTAMP)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (its recipe and data come from the run)")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation after training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[data_opts, device_opts], help="evaluate a run on the test set")
    p.add_argument("run", help="run directory")
    p.add_argument("--tta", choices=["none", "flip", "flip_translate"], help="test-time augmentation (default: the recipe's)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[device_opts], help="classify image files with a trained run")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, any Pillow format and size)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_predict)

    from cifarkit.report.command import add_report_arguments

    p = sub.add_parser("report", parents=[data_opts], help="self-contained HTML report comparing runs")
    add_report_arguments(p)
    p.add_argument("--no-data", action="store_true",
                   help="build from the saved predictions alone (no galleries, Grad-CAM or robustness)")
    p.set_defaults(func=cmd_report)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects a whole number >= 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # reuse activation memory between training steps (see runtime.py)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except CifarkitError as e:
        print(f"cifarkit: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cifarkit: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
