"""Seconds per epoch of a notebook CNN through cifarkit's training loop, beside the notebook's Keras pipeline.

Both sides train in the same run on the same images (cifarkit through ``cifarkit.train.train``, the
one training loop): the recipe's stratified
90% of the CIFAR-10 training images (45,000), batch 32, Adamax at the
recipe's learning rate, and validate on the held-out 10% after each epoch, as
``cifarkit train`` and the notebook's ``model.fit(..., validation_split=0.1)``
do. The Keras model is translated layer for layer from the registered PyTorch
one (same layers and parameter count, Keras' default initialisation, which the
PyTorch one copies), and trains in a process of its own. Epochs alternate,
cifarkit then Keras, so on a shared machine both see the same load; the median
epoch of each is compared.

Keras is timed when TensorFlow is installed (``pip install -e '.[peers]'``,
which brings tensorflow-cpu and Keras 3); without it the script says the
comparison was skipped and why, and times cifarkit alone. cifarkit trains in
the precision its recipe resolves to on this machine (``bf16 = auto``: bfloat16
autocast where the CPU has it natively), or as ``--bf16`` says; Keras in
float32, as the notebook did. The machine (CPU model and kind, cores,
threads, versions) is printed first and kept in the JSON.

    python benchmarks/epoch_time.py --model seed_cnn3 --epochs 3 --threads 2 --data ../shared/data/cifar10 \\
        --json benchmarks/results/epoch_time_seed_cnn3_2threads.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarkit.data import load_cifar10
from cifarkit.data.batches import unit_range
from cifarkit.files import write_json
from cifarkit.models import count_parameters
from cifarkit.models.dropout import Dropout
from cifarkit.recipes import get_recipe
from cifarkit.runs import build_model
from cifarkit.runtime import keep_freed_memory, machine_info, precision_name, resolve_bf16, use_threads
from cifarkit.tracking import Callback
from cifarkit.train import prepare_split, train
from provenance import record

NOTEBOOK_MODELS = ("seed_cnn1", "seed_cnn2", "seed_cnn3")
BF16_SETTINGS = {"auto": "auto", "true": True, "false": False}


def keras_twin(model: nn.Sequential) -> Any:
    """The Keras model with ``model``'s layers: a notebook CNN, an ``nn.Sequential`` of 'same' Conv2d,
    LeakyReLU, MaxPool2d, Dropout, Flatten and Linear layers."""
    import keras

    layers = keras.layers
    translate = {
        nn.Conv2d: lambda m: layers.Conv2D(m.out_channels, m.kernel_size, padding="same"),
        nn.LeakyReLU: lambda m: layers.LeakyReLU(negative_slope=m.negative_slope),
        nn.MaxPool2d: lambda m: layers.MaxPooling2D(m.kernel_size),
        Dropout: lambda m: layers.Dropout(m.p),
        nn.Flatten: lambda m: layers.Flatten(),
        nn.Linear: lambda m: layers.Dense(m.out_features),
    }
    twin = keras.Sequential([keras.Input((32, 32, 3)), *(translate[type(m)](m) for m in model)])
    if twin.count_params() != count_parameters(model):
        raise RuntimeError(f"Keras twin: {twin.count_params():,} parameters, the model {count_parameters(model):,}")
    return twin


def keras_worker(conn: Connection, config: dict[str, Any], data: str | None, threads: int | None) -> None:
    """In a process of its own: the Keras twin of ``config``'s model on the images ``train()`` takes, trained one
    epoch per index received on ``conn``, each answered with its seconds (None ends it).

    First sent: the versions, or {"skipped": why} where TensorFlow is not installed. An epoch is Keras' own: the
    training pass over the split's training images, shuffled, then validation.
    """
    os.environ["KERAS_BACKEND"] = "tensorflow"  # the notebook's backend, whatever the environment says
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow as tf
    except ImportError as exc:
        why = f"TensorFlow is not installed ({exc}); pip install -e '.[peers]' to time the notebook's Keras pipeline"
        conn.send({"skipped": why})
        return
    if threads:  # otherwise TensorFlow's own default, as a notebook user gets it
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    split = prepare_split(load_cifar10(data), config["val_fraction"], config["seed"], subset=None)
    twin = keras_twin(build_model(config))
    twin.compile(
        optimizer=keras.optimizers.Adamax(config["lr"]),
        metrics=["accuracy"],
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # The notebook's arrays: float32 pixels in [0, 1], (N, H, W, 3); made once, as the notebook does.
    x_train, x_val = _nhwc(split.x_train), _nhwc(split.x_val)
    starts, seconds = [], []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: starts.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: seconds.append(time.perf_counter() - starts[-1]),
    )
    conn.send({"precision": "float32", "keras": keras.__version__, "tensorflow": tf.__version__})
    while (epoch := conn.recv()) is not None:
        twin.fit(
            x_train,
            split.y_train.numpy(),
            batch_size=config["batch_size"],
            verbose=0,
            validation_data=(x_val, split.y_val.numpy()),
            initial_epoch=epoch,
            epochs=epoch + 1,
            callbacks=[timer],
        )
        conn.send(seconds[-1])


def _nhwc(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) uint8 images, channels-last in memory, as Keras' (N, H, W, 3) float32 array in [0, 1]."""
    return unit_range(images).permute(0, 2, 3, 1).numpy()


def summary(seconds: list[float], images: int) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {"seconds_per_epoch": seconds, "median_seconds": median, "images_per_second": images / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="seed_cnn3", choices=NOTEBOOK_MODELS, help="notebook CNN (and recipe)")
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs on each side, at least 2: medians from the second on compared"
    )
    parser.add_argument(
        "--threads",
        type=lambda text: None if text == "auto" else int(text),
        default="auto",
        help="CPU threads for PyTorch and for TensorFlow, or auto (default): each tool's own default, "
        "cifarkit's following the load as `cifarkit train` does",
    )
    parser.add_argument("--data", help="CIFAR-10 location (default $CIFARKIT_DATA)")
    parser.add_argument("--bf16", choices=list(BF16_SETTINGS), help="cifarkit's precision (default: the recipe's)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch of each side sets up, and only later ones count")
    use_threads(args.threads)
    # Freed memory kept for reuse, as `cifarkit train` and cifarkit.train() have it (see cifarkit.runtime): the
    # benchmark times what a user runs (until 4de012d it did not; on a 2-core AMD EPYC the ratios moved within
    # the spread between runs). The Keras process, spawned anew, keeps glibc's defaults, as a Keras user has them.
    malloc_tuned = keep_freed_memory()
    provenance = record(args.threads)  # before the timing: it measures the matmul throughput
    machine = machine_info("cpu")
    print(f"machine: {json.dumps(machine)}", flush=True)

    device = torch.device("cpu")
    recipe = get_recipe(args.model)
    recipe = recipe.replace(epochs=args.epochs, bf16=resolve_bf16(BF16_SETTINGS.get(args.bf16, recipe.bf16), device))
    data = load_cifar10(args.data)
    split = prepare_split(data, recipe.val_fraction, recipe.seed, subset=None)  # the images train() takes
    # Keras trains in a process of its own, as a notebook user runs it. In this one, cifarkit's float32 epochs
    # grew from one to the next between TensorFlow's (36, 41, 43 s on a 2-core AMD EPYC, while Keras' held at 40):
    # a cost of sharing a process that neither tool has on its own. Apart they took 34, 30, 32 s beside Keras' 32,
    # 33, 34 (issue26/epoch_time_seed_cnn3_float32_epyc.json against ..._float32_keras_apart_epyc.json).
    spawn = multiprocessing.get_context("spawn")
    to_keras, its_end = spawn.Pipe()
    worker = spawn.Process(target=keras_worker, args=(its_end, recipe.to_dict(), args.data, args.threads), daemon=True)
    worker.start()
    its_end.close()  # the worker's end is the worker's alone: its exit then ends our reads instead of blocking them

    def ask_keras(epoch: int | None = None) -> Any:
        """The Keras process's next message: its versions first, then, asked to train ``epoch``, its seconds."""
        try:
            if epoch is not None:
                to_keras.send(epoch)
            return to_keras.recv()
        except (EOFError, BrokenPipeError):
            worker.join()
            raise SystemExit(f"the Keras process ended (exit code {worker.exitcode}) before it answered") from None

    keras_info = ask_keras()
    if "skipped" in keras_info:
        print(f"Keras comparison skipped: {keras_info['skipped']}", flush=True)

    # cifarkit trains through `train()` itself; after each of its epochs (training pass, validation,
    # checkpoint) a callback has Keras train one epoch, so both sides share the machine's load, one at a time.
    seconds, keras_seconds, ended = [], [], [time.perf_counter()]

    class Alternate(Callback):
        def on_epoch_end(self, row: dict) -> bool:
            seconds.append(time.perf_counter() - ended[-1])
            line = f"epoch {row['epoch']}: cifarkit {seconds[-1]:.1f} s"
            if "skipped" not in keras_info:
                keras_seconds.append(ask_keras(row["epoch"] - 1))
                line += f", Keras {keras_seconds[-1]:.1f} s"
            print(line, flush=True)
            ended.append(time.perf_counter())
            return False

    with tempfile.TemporaryDirectory() as folder:
        train(recipe, data, Path(folder) / "run", progress=False, callbacks=[Alternate()], threads=args.threads)
    if worker.is_alive():
        to_keras.send(None)
    worker.join()
    # The first epoch of each side sets up (cifarkit: the split and model; Keras: tracing): medians from the second.
    seconds, keras_seconds = seconds[1:], keras_seconds[1:]

    images, steps = len(split.x_train), -(-len(split.x_train) // recipe.batch_size)
    c = {**summary(seconds, images), "precision": precision_name(recipe.bf16), "torch": torch.__version__}
    k = {**summary(keras_seconds, images), **keras_info} if keras_seconds else keras_info
    result = {
        **provenance,
        "model": args.model,
        "train_images": images,
        "val_images": len(split.x_val),
        "batch_size": recipe.batch_size,
        "steps": steps,
        "threads": args.threads or "auto",
        "epoch": "training pass + validation (+ cifarkit's checkpoint), medians from the second epoch on",
        "cifarkit": {**c, "malloc_tuned": malloc_tuned},
        "keras": k,
        "speedup_vs_keras": k["median_seconds"] / c["median_seconds"] if keras_seconds else None,
        "runtime": machine,
    }
    print(
        f"{args.model}: {images:,} images, batch {recipe.batch_size} ({steps:,} steps), then validation on "
        f"{len(split.x_val):,}; threads: {args.threads or 'auto'}; {machine['cpu_model']}, {machine['cpu_kind']}"
    )
    print(
        f"  cifarkit (torch {c['torch']}, {c['precision']}): median {c['median_seconds']:.1f} s/epoch, "
        f"{c['images_per_second']:,.0f} images/s"
    )
    if keras_seconds:
        print(
            f"  Keras {k['keras']} (TensorFlow {k['tensorflow']}, float32): "
            f"median {k['median_seconds']:.1f} s/epoch, {k['images_per_second']:,.0f} images/s"
        )
        print(f"  cifarkit {result['speedup_vs_keras']:.2f}x as fast as the notebook's Keras pipeline (same run)")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
