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


def cmd_data(args: argparse.Namespace) -> None:
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
    image_grid(data.x_train[pick], [data.classes[i] for i in data.y_train[pick]], Path(args.output))
    print(f"wrote {args.output}")


def cmd_models(args: argparse.Namespace) -> None:
    from cifarkit.models import count_parameters, create_model, list_models

    for info in list_models():
        try:
            params = f"{count_parameters(create_model(info.name)):,}"
        except CifarkitError:  # e.g. pretrained weights not installed
            params = "n/a"
        print(f"{info.name:<22}{params:>12}  {info.description}")


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


def cmd_train(args: argparse.Namespace) -> None:
    from cifarkit.evaluate import evaluate
    from cifarkit.recipes import get_recipe
    from cifarkit.train import train

    recipe = get_recipe(args.recipe).replace(**_overrides(args))
    out = Path(args.out or f"runs/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    data = _data(args)
    print(f"training {recipe.name} ({recipe.model}) into {out}")
    train(recipe, data, out, subset=args.subset, resume=args.resume, device=args.device)
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
    device_opts.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    device_opts.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: one per core); "
                                                         "1 is fastest on a machine busy with other work")

    p = sub.add_parser("data", parents=[data_opts], help="describe or show the data set")
    p.add_argument("action", choices=["info", "show"])
    p.add_argument("-o", "--output", default="cifar10_samples.png", help="PNG to write (show)")
    p.add_argument("--count", type=int, default=32, help="images in the grid (show)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="list named training configurations")
    p.add_argument("-v", "--verbose", action="store_true", help="print every field of every recipe")
    p.set_defaults(func=cmd_recipes)

    from cifarkit.recipes import DEFAULT_RECIPE

    p = sub.add_parser("train", parents=[data_opts, device_opts], help="train a recipe, then evaluate it")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"recipe name (default {DEFAULT_RECIPE}; see `cifarkit recipes`)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer")
    p.add_argument("--subset", type=int, help="train on a class-balanced subset of N training images")
    p.add_argument("--config", help="JSON or TOML file of recipe fields to override")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override one recipe field (repeatable)")
    p.add_argument("--out", help="run directory (default runs/RECIPE-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
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


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except CifarkitError as e:
        print(f"cifarkit: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cifarkit: interrupted; `cifarkit train --resume --out RUN` continues a training run", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
