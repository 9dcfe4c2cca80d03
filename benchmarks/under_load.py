"""Epoch time on a machine that is not quiet: one core kept busy by another ordinary process.

Users' laptops and shared servers always run something else. This times one
training epoch of each recipe through the command line (``cifarkit train
--subset N --epochs 1 --no-eval``, each in a fresh process, as users run it),
quiet and beside a plain busy loop (``python -c "while True: pass"``, same
priority), with the default thread count and with ``--threads 1`` and
``--threads 2``, after one untimed epoch per recipe. It prints each epoch's
seconds (from the run's history) and peak resident memory (from the kernel's
accounting of that process), records the thread counts the default chose
(its ``threads N: ...`` lines), then
the ratios that matter: under load, the default against the better of 1 and 2
threads; and each setting busy against quiet. With TensorFlow installed
(``pip install -e '.[peers]'``) it also times the notebook's Keras pipeline
beside cifarkit (``benchmarks/epoch_time.py``, one full epoch each, each tool
with its default threads) under the same conditions.

    python benchmarks/under_load.py --data ../shared/data/cifar10 --recipes seed_cnn3 fast93 \
        --subset 5000 --json benchmarks/results/issue18/under_load_avx2.json

Only one of these runs at a time; the busy loop is started before and killed
after each timed run. Never run two benchmarks at once on the same machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cifarkit.files import write_json
from cifarkit.runtime import machine_info
from provenance import record


def timed_epoch(
    recipe: str, threads: int | None, busy: bool, args: argparse.Namespace, sets: Sequence[str] = ()
) -> dict:
    """One epoch of ``recipe`` (with ``--set`` ``sets``) in a fresh `cifarkit train` process: seconds, peak memory."""
    with tempfile.TemporaryDirectory(prefix="under-load-") as tmp:
        command = [sys.executable, "-m", "cifarkit", "train", "--recipe", recipe, "--epochs", "1", "--no-eval"]
        command += ["--subset", str(args.subset), "--out", f"{tmp}/run", "--set", "val_fraction=0.02"]
        command += ["--data", args.data] + (["--threads", str(threads)] if threads else [])
        command += [arg for field in sets for arg in ("--set", field)]
        with busy_core(busy), open(f"{tmp}/stderr", "w") as err:
            run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(run.pid, 0)  # this process's own peak memory, not the maximum of all
            run.returncode = os.waitstatus_to_exitcode(status)
        if run.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{Path(f'{tmp}/stderr').read_text()}")
        history = json.loads(Path(f"{tmp}/run/history.json").read_text())
        log = Path(f"{tmp}/stderr").read_text().replace("\r", "\n").splitlines()
    return {
        "seconds": history[0]["seconds"],
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "thread_changes": [line for line in log if line.startswith("threads ")],  # what the default decided
    }


@contextmanager
def busy_core(busy: bool) -> Iterator[None]:
    """Another ordinary process keeping one core busy (or nothing), for the time of the block."""
    if not busy:
        yield
        return
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # the loop has its core before the timed work starts
        yield
    finally:
        loop.kill()
        loop.wait()


def keras_beside_cifarkit(busy: bool, args: argparse.Namespace) -> dict | None:
    """The notebook's Keras pipeline and cifarkit, one timed seed_cnn3 epoch each after an untimed one,
    alternating (epoch_time.py, which trains Keras in a process of its own)."""
    if importlib.util.find_spec("tensorflow") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="under-load-keras-") as tmp, busy_core(busy):
        command = [sys.executable, str(Path(__file__).with_name("epoch_time.py")), "--model", "seed_cnn3"]
        command += ["--epochs", "2", "--data", args.data, "--json", f"{tmp}/k.json"]  # each tool's default threads
        subprocess.run(command, check=True, capture_output=True)
        result = json.loads(Path(f"{tmp}/k.json").read_text())
    return {
        "cifarkit_seconds": result["cifarkit"]["median_seconds"],
        "keras_seconds": result["keras"]["median_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("CIFARKIT_DATA"), help="CIFAR-10 (default $CIFARKIT_DATA)")
    parser.add_argument("--recipes", nargs="+", default=["seed_cnn3", "fast93"])
    parser.add_argument("--subset", type=int, default=5000, help="training images per epoch (default 5000)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: the busy loop is stopped on the way out
    if not args.data:
        raise SystemExit("pass --data or set CIFARKIT_DATA")
    results: dict = {**record(), "runtime": machine_info(), "subset": args.subset, "recipes": {}}
    print(f"{results['runtime']['cpu_model']}, {results['runtime']['cpu_kind']}, {os.cpu_count()} cores", flush=True)
    for recipe in args.recipes:
        # Untimed first: in a run without it, fast93's first epoch (default threads, which stayed at 2) took 28.5 s
        # and the same epoch with --threads 2 right after it 22.6 s; the first process to use that much memory
        # after others seems to pay for getting it (benchmarks/results/issue18/under_load_avx2_no_warmup.txt).
        timed_epoch(recipe, None, False, args)
        rows = {}
        for busy in (False, True):
            for threads in (None, 1, 2):
                key = f"{'busy' if busy else 'quiet'}/{'default' if threads is None else f'threads{threads}'}"
                rows[key] = timed_epoch(recipe, threads, busy, args)
                print(
                    f"{recipe:<10} {key:<16} {rows[key]['seconds']:7.2f} s  {rows[key]['peak_rss_mb']:6,} MB",
                    flush=True,
                )
        best_busy = min(rows["busy/threads1"]["seconds"], rows["busy/threads2"]["seconds"])
        ratios = {
            "busy default / best of 1 and 2 threads": rows["busy/default"]["seconds"] / best_busy,
            **{
                f"{setting}: busy / quiet": rows[f"busy/{setting}"]["seconds"] / rows[f"quiet/{setting}"]["seconds"]
                for setting in ("default", "threads1", "threads2")
            },
        }
        for name, value in ratios.items():
            print(f"{recipe:<10} {name:<40} {value:5.2f}x", flush=True)
        results["recipes"][recipe] = {"epochs": rows, "ratios": ratios}
    for busy in (False, True):
        keras = keras_beside_cifarkit(busy, args)
        if keras is None:
            print("Keras: TensorFlow is not installed (pip install -e '.[peers]'); not timed")
            break
        load = "busy" if busy else "quiet"
        results[f"keras_seed_cnn3_{load}"] = keras
        speed = keras["keras_seconds"] / keras["cifarkit_seconds"]
        print(
            f"seed_cnn3 full epoch, {load}: cifarkit {keras['cifarkit_seconds']:.1f} s, Keras "
            f"{keras['keras_seconds']:.1f} s: cifarkit {speed:.2f}x as fast"
        )
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
