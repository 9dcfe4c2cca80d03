"""Data-parallel training on two CPU processes (gloo), started from the tests the way torchrun starts them.

The two-process work runs once, in one launch (starting processes is the
slow part), and each test checks one promise of it against one process:

* 2 processes x a batch of B train the same parameters as 1 process x 2B,
  for a notebook CNN (Adamax), a fast recipe (Muon + SGD) and a head on
  frozen-backbone features (AdamW), whose extraction they share: the same
  steps exactly, and the same weights up to float32 rounding, which training
  amplifies (see SAME_TRAINING for the measure and its tolerance);
* sharded evaluation and validation give exactly one process's figures on
  sets of odd size;
* rank 0 alone writes the one run directory, the files one process writes,
  which resumes on one process as an uninterrupted run continues: its
  history, epochs and step counts exactly, its weights as above;
* torchrun stops a launch whose worker was killed, naming the rank;
* a launcher killed outright (SIGKILL) takes its workers with it, and the
  run they leave resumes.

Augmentation is off. So is dropout (a patched Dropout): its masks are
drawn per process and cannot match one process's draws. The fast recipe's
BatchNorm normalises each process's part of the batch on its own (sync_bn
needs CUDA), so its one-process reference normalises each half of its batch
separately, which is what two processes compute. References run on one
thread, as each launched process does: fastnet's BatchNorm (eps 1e-12) turns
the rounding differences of another thread count into visible ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cifarkit import distributed, runtime
from cifarkit.data.batches import batches, to_tensor
from cifarkit.data.dataset import CIFAR10
from cifarkit.errors import CifarkitError
from cifarkit.evaluate import evaluate
from cifarkit.features import extract_features
from cifarkit.files import read_json
from cifarkit.models.backbones import create_backbone
from cifarkit.models.dropout import Dropout
from cifarkit.recipes import Recipe, for_processes, get_recipe, validate
from cifarkit.runs import load_model, load_torch
from cifarkit.tracking import Callback
from cifarkit.train import evaluate_loss_acc, train
from cli_runner import run_cli
from conftest import synthetic_cifar
from data_factories import write_python_batches

# A quarter held out: 75 training images (global batches of 32, 32 and 11, so the last one splits unevenly),
# 25 validation images and 101 test images, odd sizes that two processes share unevenly.
N_TRAIN, N_TEST, BATCH = 100, 101, 32
NO_AUGMENTATION = dict(flip=False, alternating_flip=False, translate=0, cutout=0, val_fraction=0.25, bf16=False)
CNN = get_recipe("seed_cnn3").replace(epochs=2, batch_size=BATCH, **NO_AUGMENTATION)
FAST = get_recipe("fast90").replace(epochs=1, batch_size=BATCH, lr=0.053 * BATCH, **NO_AUGMENTATION)
FROZEN = get_recipe("lite0_frozen").replace(
    epochs=1, batch_size=BATCH, model_kwargs={"input_size": 32}, **NO_AUGMENTATION
)
RUN_FILES = [  # among them
    "best.safetensors",
    "config.json",
    "curves.png",
    "history.csv",
    "history.json",
    "last.safetensors",
    "metrics.json",
    "resume.pt",
]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch has no torch.distributed")


class StopAfterFirstEpoch(Callback):
    """Stops training after its first epoch, leaving a resumable run (as a pruned trial or a Ctrl-C would)."""

    def on_epoch_end(self, row) -> bool:
        return True


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _identity(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x


def _batch_norm_per_half(monkeypatch: pytest.MonkeyPatch) -> None:
    """BatchNorm in training normalising each half of the batch on its own, as two processes without sync_bn do."""
    forward = nn.BatchNorm2d.forward

    def per_half(self: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([forward(self, half) for half in x.tensor_split(2)]) if self.training else forward(self, x)

    monkeypatch.setattr(nn.BatchNorm2d, "forward", per_half)


def _record_writes() -> list[str]:
    """The files this process will write from now on: every cifarkit write ends in os.replace."""
    written: list[str] = []
    replace = os.replace

    def recording(src, dst, *args, **kwargs):
        written.append(str(dst))
        return replace(src, dst, *args, **kwargs)

    os.replace = recording
    return written


def _two_process_work(runs: Path) -> dict:
    """What each launched process does; returns what it wrote and what it measured."""
    written = _record_writes()
    nn.Dropout.forward = Dropout.forward = _identity
    data = synthetic_cifar(N_TRAIN, N_TEST)
    train(CNN, data, runs / "cnn", progress=False, callbacks=[StopAfterFirstEpoch()])
    train(FAST, data, runs / "fast", progress=False)
    os.environ["CIFARKIT_CACHE"] = str(runs.parent / "cache")
    train(FROZEN, data, runs / "frozen", progress=False)
    record = evaluate(runs / "fast", data)
    x, y = to_tensor(data.x_test), torch.from_numpy(data.y_test)
    validation = evaluate_loss_acc(load_model(runs / "fast"), x, y, torch.device("cpu"))
    return {
        "written": written,
        "confusion_matrix": record["confusion_matrix"],
        "test_acc": record["test_acc"],
        "validation": validation,
    }


def _process(rank: int, world: int, port: int, runs: Path, results: Path) -> None:
    """One launched process: torchrun's environment variables, one thread, the work; its results as JSON."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    (results / f"rank{rank}.json").write_text(json.dumps(_two_process_work(runs)))
    # Done, its last collective behind it: end without the interpreter's teardown, a second with torch loaded.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The run directories of one two-process launch, and each process's results."""
    root = tmp_path_factory.mktemp("distributed")
    runs, results = root / "runs", root / "results"
    results.mkdir()
    mp.start_processes(_process, args=(2, _free_port(), runs, results), nprocs=2, start_method="spawn")
    return runs, [json.loads((results / f"rank{rank}.json").read_text()) for rank in range(2)]


def _parameters(run: Path) -> dict[str, torch.Tensor]:
    """The trained parameters in a run's last checkpoint (without BatchNorm's running statistics)."""
    state = load_torch(run / "resume.pt")["model"]
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


# How far apart two runs that train alike may end: the norm of the difference of their parameters, all trained
# parameters together, as a fraction of the norm of how far training moved them (the reference's final minus its
# initial parameters). A scale-free measure, because an element-wise tolerance cannot be argued here: the two
# processes sum each batch's gradient in two halves and convolve half-batches (other summation orders, and other
# kernels on other CPUs), float32 rounding differences of ~1e-7 relative per operation, and training amplifies
# them: ReLU kinks, max-pool choices and fastnet's BatchNorm (eps 1e-12) switch on them, and Adamax and Muon
# rescale each update, so that after a few steps single weights differ by far more than rounding (1.3e-4 in a
# conv filter of seed_cnn3, on a 2-core Xeon with AMX and torch 2.14.1, where rtol=1e-4, atol=1e-5 failed).
# Measured with these recipes on the 2-core AMD EPYC (AVX-512 kernels, and AVX2 and SSE4.1 kernels forced with
# ATEN_CPU_CAPABILITY=avx2|default, ONEDNN_MAX_CPU_ISA=AVX2|SSE41), torch 2.13.0 and 2.14.1 alike:
#   two processes against one (what this compares):   1e-7 to 1e-6 with AVX-512 kernels, at most 1.5e-4 with
#                                                       AVX2 ones (the resumed CNN, whose largest element-wise
#                                                       difference, 1.3e-4, is the failure above);
#   every initial weight moved by one float32 ulp      up to 1.7e-2 (seed_cnn3) and 4.4e-2 (fastnet): a ceiling
#   (far more than another summation order does):       for what rounding can do in these few steps;
#   the smallest mistakes this is to catch:             one optimizer step too few 0.12 (seed_cnn3) and 0.22
#                                                       (fastnet), lr 10% off 0.17 and 0.27, the last, uneven
#                                                       batch dropped 0.35 and 0.22, BatchNorm over the whole
#                                                       batch 0.47, each process stepping on its half 0.78, 1.2.
# 0.05 is above that ceiling and more than 300 times what two processes measured, and below every such mistake.
SAME_TRAINING = 0.05


def _untrained(recipe: Recipe, data: CIFAR10, out: Path) -> Path:
    """A run of ``recipe`` whose checkpoint holds the parameters training starts from (after any data-dependent
    initialisation): one epoch at lr 1e-30, which moves no weight by a float32 ulp (Muon still rescales each
    filter to its fixed norm, as every run of the recipe does before its first update)."""
    tiny = recipe.replace(lr=1e-30, muon_lr=1e-30 if recipe.muon_lr else 0.0)
    return train(tiny, data, out, progress=False, callbacks=[StopAfterFirstEpoch()])


def _assert_trained_alike(run: Path, reference: Path, untrained: Path) -> None:
    """``run`` ends within SAME_TRAINING of ``reference``; parameters that did not train are equal."""
    got, expected, start = _parameters(run), _parameters(reference), _parameters(untrained)
    assert got.keys() == expected.keys() == start.keys()
    trained = [name for name in expected if not torch.equal(expected[name], start[name])]
    assert trained
    for name in expected.keys() - set(trained):  # frozen (a pretrained backbone, the whitening filters): as loaded
        assert torch.equal(got[name], expected[name]), name
    difference = {name: (got[name] - expected[name]).norm() for name in trained}
    moved = {name: (expected[name] - start[name]).norm() for name in trained}
    ratio = (torch.stack(list(difference.values())).norm() / torch.stack(list(moved.values())).norm()).item()
    worst = sorted(trained, key=lambda name: -(difference[name] / moved[name]).item())[:3]
    assert ratio <= SAME_TRAINING, f"the runs differ by {ratio:.3g} of the training's update; most: " + ", ".join(
        f"{name} {(difference[name] / moved[name]).item():.3g}" for name in worst
    )


def _optimizer_steps(run: Path) -> list[int]:
    """The step counts in a run's checkpointed optimizer state (Adam-family optimizers count per parameter)."""

    def steps(node) -> list[int]:
        if isinstance(node, dict):
            return ([int(node["step"])] if "step" in node else []) + [n for v in node.values() for n in steps(v)]
        return [n for v in node for n in steps(v)] if isinstance(node, list | tuple) else []

    return steps(load_torch(run / "resume.pt")["optimizer"])


def test_batches_are_split_between_processes_in_near_equal_parts():
    x, y = torch.zeros(75, 1), torch.arange(75)
    alone = list(batches(x, y, BATCH, shuffle_seed=3))
    parts = [list(batches(x, y, BATCH, shuffle_seed=3, rank=rank, world=2)) for rank in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(alone) == 3
    for (_, whole), (_, first), (_, second) in zip(alone, *parts):
        assert torch.equal(torch.cat([first, second]), whole)
        assert len(first) - len(second) in (0, 1)


def test_global_batch_and_learning_rate_scaling_are_recipe_fields():
    fast = get_recipe("fast90")  # batch 2000, lr 0.053 x 2000, muon_lr 0.24
    assert for_processes(fast, 4) == fast  # by default the global batch is the recipe's on any number of processes
    linear = for_processes(fast.replace(batch_per_process=1000, lr_scaling="linear"), 4)
    assert (linear.batch_size, linear.lr, linear.muon_lr) == (4000, pytest.approx(2 * fast.lr), pytest.approx(0.48))
    root = for_processes(fast.replace(batch_per_process=1000, lr_scaling="sqrt"), 8)
    assert (root.batch_size, root.lr) == (8000, pytest.approx(2 * fast.lr))
    assert for_processes(fast.replace(batch_per_process=500), 2).lr == fast.lr  # lr_scaling none
    with pytest.raises(CifarkitError, match="lr_scaling"):
        validate(fast.replace(lr_scaling="cubic"))
    with pytest.raises(CifarkitError, match="batch_per_process"):
        validate(fast.replace(batch_per_process=-1))


def test_sync_bn_on_cpus_and_a_bad_timeout_are_clear_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CifarkitError, match="sync_bn=true needs CUDA"):
        distributed.check_sync_bn(True, torch.device("cpu"))
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(CifarkitError, match="CIFARKIT_DIST_TIMEOUT"):
        distributed.timeout()


def test_two_processes_train_a_notebook_cnn_as_one_process_does(launched, tmp_path, monkeypatch, one_thread):
    runs, _ = launched
    monkeypatch.setattr(Dropout, "forward", _identity)
    data = synthetic_cifar(N_TRAIN, N_TEST)
    alone = train(CNN, data, tmp_path / "alone", progress=False, callbacks=[StopAfterFirstEpoch()])
    assert _optimizer_steps(runs / "cnn") == _optimizer_steps(alone) and set(_optimizer_steps(alone)) == {3}
    _assert_trained_alike(runs / "cnn", alone, _untrained(CNN, data, tmp_path / "untrained"))
    two, one = read_json(runs / "cnn" / "history.json")[0], read_json(alone / "history.json")[0]
    # The same predictions: the smallest gap between a training image's two highest logits in this epoch is
    # 4e-3, a thousand times what rounding moves a logit by. The mean loss of the 75 images, computed by other
    # summation orders from weights that differ by rounding (measured: 5e-6 of the update after this epoch at most),
    # differs by ~1e-7 relative (0 measured; 1.3e-6 even from initial weights moved by one ulp each).
    assert two["train_acc"] == one["train_acc"]
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)


def test_two_processes_train_a_fast_recipe_with_muon_as_one_process_does(launched, tmp_path, monkeypatch, one_thread):
    runs, _ = launched
    assert FAST.muon_lr > 0  # conv filters train with Muon, each process on the averaged gradient
    _batch_norm_per_half(monkeypatch)
    data = synthetic_cifar(N_TRAIN, N_TEST)
    alone = train(FAST, data, tmp_path / "alone", progress=False)
    _assert_trained_alike(runs / "fast", alone, _untrained(FAST, data, tmp_path / "untrained"))


def test_two_processes_extract_features_once_and_train_a_head_as_one_process_does(
    launched, tmp_path, monkeypatch, one_thread
):
    runs, results = launched
    (cached,) = (runs.parent / "cache" / "features").iterdir()  # extracted once, shared, written by rank 0
    assert str(cached) in results[0]["written"]
    data = synthetic_cifar(N_TRAIN, N_TEST)
    alone = extract_features(create_backbone("efficientnet_lite0", input_size=32), data.x_train, progress=False)
    # Features are float32 computations stored as float16: the same images through the same backbone differ by
    # float32 rounding at most (~1e-6 relative, features up to ~3 here), so their float16 copies by at most one
    # float16 step, 2^-10 of the value (measured: equal, with AVX-512, AVX2 and SSE4.1 kernels). bf16 features or
    # another backbone's would be percents off.
    np.testing.assert_allclose(np.load(cached).astype(np.float32), alone.astype(np.float32), rtol=1e-3, atol=1e-4)
    monkeypatch.setattr(Dropout, "forward", _identity)
    monkeypatch.setenv("CIFARKIT_CACHE", str(runs.parent / "cache"))  # the same features: a cache hit
    head = train(FROZEN, data, tmp_path / "alone", progress=False)
    assert _optimizer_steps(runs / "frozen") == _optimizer_steps(head) and set(_optimizer_steps(head)) == {3}
    _assert_trained_alike(runs / "frozen", head, _untrained(FROZEN, data, tmp_path / "untrained"))


def test_sharded_evaluation_gives_exactly_the_one_process_figures(launched, tmp_path):
    runs, results = launched
    data = synthetic_cifar(N_TRAIN, N_TEST)
    alone = evaluate(shutil.copytree(runs / "fast", tmp_path / "fast"), data)
    assert sum(map(sum, alone["confusion_matrix"])) == N_TEST
    assert read_json(runs / "fast" / "eval" / "metrics.json")["confusion_matrix"] == alone["confusion_matrix"]
    loss, acc = evaluate_loss_acc(
        load_model(runs / "fast"), to_tensor(data.x_test), torch.from_numpy(data.y_test), torch.device("cpu")
    )
    # The same weights on other batch compositions: logits differ by float32 rounding (~1e-6 relative), and the
    # smallest gap between a test image's two highest logits is 1.4e-3 (of logits up to 1.7), so the predictions,
    # and every count made of them, are exactly the same; the mean loss differs by rounding.
    for result in results:  # every process gets the whole set's figures
        assert (result["confusion_matrix"], result["test_acc"]) == (alone["confusion_matrix"], alone["test_acc"])
        assert result["validation"][1] == acc
        assert result["validation"][0] == pytest.approx(loss, rel=1e-5)


def test_two_process_run_is_one_run_directory_that_resumes_on_one_process(launched, tmp_path, monkeypatch, one_thread):
    runs, results = launched
    assert sorted(p.name for p in runs.iterdir()) == ["cnn", "fast", "frozen"]
    assert results[0]["written"] and results[1]["written"] == []  # rank 0 writes, rank 1 never does
    assert read_json(runs / "cnn" / "metrics.json")["processes"] == 2
    monkeypatch.setattr(Dropout, "forward", _identity)
    data = synthetic_cifar(N_TRAIN, N_TEST)
    resumed = train(CNN, data, shutil.copytree(runs / "cnn", tmp_path / "resumed"), resume=True, progress=False)
    uninterrupted = train(CNN, data, tmp_path / "uninterrupted", progress=False)
    files = sorted(p.name for p in (runs / "cnn").iterdir())
    assert files == sorted(p.name for p in uninterrupted.iterdir()) and set(RUN_FILES) <= set(files)
    history, two_processes = read_json(resumed / "history.json"), read_json(runs / "cnn" / "history.json")
    assert [row["epoch"] for row in history] == [1, 2] and history[0] == two_processes[0]  # kept as it was
    assert [row["lr"] for row in history] == [row["lr"] for row in read_json(uninterrupted / "history.json")]
    # 2 epochs of 3 global batches (32, 32, 11 images), whatever the processes: 6 steps.
    assert _optimizer_steps(resumed) == _optimizer_steps(uninterrupted) and set(_optimizer_steps(resumed)) == {6}
    _assert_trained_alike(resumed, uninterrupted, _untrained(CNN, data, tmp_path / "untrained"))


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


def _worker_pid(launcher: int, rank: int) -> int:
    """The process id of torchrun's worker of ``rank``: the launcher's child whose environment says RANK=rank."""
    for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return int(pid)
    raise AssertionError(f"torchrun (pid {launcher}) has no worker of rank {rank}")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers in /proc (Linux)")
def test_killing_a_worker_ends_the_launch_naming_its_rank(tmp_path):
    folder = write_python_batches(synthetic_cifar(N_TRAIN, N_TEST), tmp_path / "cifar-10-batches-py")
    run, log = tmp_path / "run", tmp_path / "torchrun.log"
    # cifarkit's launcher: torchrun, with each failed rank told in one line
    command = _launch_command(run, folder, tmp_path / "cache", epochs=1000, launcher="cifarkit.launch")
    with log.open("w") as output:
        launch = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        # Both workers are in the process group once rank 0 says how they share the batch: the survivor then waits on
        # rank 1 in its next collective, as in training (killing it later would only wait for an epoch).
        _wait_for(lambda: "global batch" in log.read_text() or launch.poll() is not None, 120)
        assert launch.poll() is None, log.read_text()
        survivor = _worker_pid(launch.pid, 0)
        os.kill(_worker_pid(launch.pid, 1), signal.SIGKILL)
        launch.wait(timeout=60)
    finally:
        if launch.poll() is None:
            launch.terminate()  # torchrun passes it on to its workers
            launch.wait(timeout=30)
    text = log.read_text()
    assert "2 processes (gloo), global batch 32 (16 per process)" in text  # what rank 0 printed at the start
    assert launch.returncode != 0
    assert re.search(
        r"^cifarkit: error: rank 1 \(local rank 1, pid \d+\) was killed by SIGKILL: failed first$", text, re.M
    )
    assert "Traceback" not in text, text  # neither the survivor's nor torchrun's own
    with pytest.raises(ProcessLookupError):  # and the other worker did not outlive the launch
        os.kill(survivor, 0)


def _stat_fields(path: Path) -> list[str] | None:
    """The fields of a /proc stat file after "pid (command)" (the command may hold spaces); None once it is gone
    (its thread ended before the open, or between the open and the read, which reports ESRCH)."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (in clock ticks since boot), or None once it has ended: every thread of it a
    zombie or gone. Its main thread alone is not enough: a process killed by a signal can show its main thread a
    zombie while other threads are still exiting, and holding its open files (the run's lock among them).

    Compared with the start time seen before, it tells an ended process from a new one that got its pid.
    """
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    if fields is None:
        return None
    threads = [_stat_fields(task / "stat") for task in Path(f"/proc/{pid}/task").glob("*")]
    running = [state for state in [fields, *threads] if state is not None and state[0] not in "ZX"]
    return fields[19] if running else None


def _launch_command(
    run: Path, data: Path, cache: Path, epochs: int, launcher: str = "torch.distributed.run"
) -> list[str]:
    """A launcher training seed_cnn3 on two processes: by default plain torchrun (the module the `torchrun` command
    runs, which tells its workers nothing of itself)."""
    return [
        sys.executable,
        "-m",
        launcher,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cifarkit",
        "train",
        "--recipe",
        "seed_cnn3",
        "--epochs",
        str(epochs),
        "--set",
        "val_fraction=0.25",
        "--data",
        str(data),
        "--cache-dir",
        str(cache),
        "--out",
        str(run),
        "--no-eval",
        "--threads",
        "1",
    ]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers in /proc (Linux)")
def test_workers_stop_when_their_launcher_is_killed_and_the_run_resumes(tmp_path, capsys):
    # 600 images: epochs of about half a second on two processes here. The launcher is killed within about 0.3 s of
    # the first epoch's checkpoint (a poll every 0.2 s, then /proc read), so the workers are still training with
    # three epochs, 1.5 s, to go (a slower machine's epochs are slower too), and the resumed run is short.
    epochs = 4
    folder = write_python_batches(synthetic_cifar(600, N_TEST), tmp_path / "cifar-10-batches-py")
    run, log = tmp_path / "run", tmp_path / "torchrun.log"
    command = _launch_command(run, folder, tmp_path / "cache", epochs)
    with log.open("w") as output:  # a session of its own: nothing of the test's, and only the launcher, is signalled
        launch = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    workers: dict[int, str | None] = {}
    try:
        _wait_for(lambda: (run / "history.json").is_file() or launch.poll() is not None, 120)
        assert launch.poll() is None, log.read_text()
        workers = {pid: _start_time(pid) for pid in (_worker_pid(launch.pid, rank) for rank in range(2))}
        os.kill(launch.pid, signal.SIGKILL)  # the launcher alone: it can pass nothing on to its workers
        launch.wait(timeout=30)
        _wait_for(lambda: all(_start_time(pid) != started for pid, started in workers.items()), 10)
        assert all(_start_time(pid) != started for pid, started in workers.items()), "a worker outlived its launcher"
    finally:
        for pid, started in workers.items():  # a failed test leaves no worker training
            if _start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)
        if launch.poll() is None:
            launch.kill()
            launch.wait(timeout=30)
    # Stopped, not finished: the run has its last finished epoch's checkpoint and no summary yet.
    before = read_json(run / "history.json")
    assert (run / "resume.pt").is_file() and not (run / "metrics.json").exists()
    assert 1 <= len(before) < epochs, "the workers trained on after their launcher was killed"
    # The lock died with its holder, so the run resumes at once, on one process (the test's own: `cifarkit train
    # --resume` run in a new one finds what this one does, and would start another Python with torch), from that
    # epoch, reading the launch's cache (not the user's $CIFARKIT_CACHE, which a test leaves as it found it).
    cache = ("--cache-dir", str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, "train", "--resume", "--out", str(run), *cache, "--no-eval", "--threads", "1")
    assert code == 0, err
    history = read_json(run / "history.json")
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    assert history[: len(before)] == before and (run / "metrics.json").is_file()


def _worker_code(launcher: int | str, platform: str) -> str:
    """A worker's Python code: stop_with_launcher() as on ``platform``, under ``launcher`` ('': its parent); it says
    its pid and waits to be stopped."""
    return (
        "import os, sys, time\n"
        "from cifarkit import runtime  # the tie needs no torch: the worker starts at once\n"
        f"os.environ.update(LOCAL_RANK='0', {runtime.LAUNCHER_ENV}={str(launcher)!r})\n"
        f"sys.platform = {platform!r}  # linux: the kernel's parent-death signal; darwin: the watchdog thread\n"
        "runtime.stop_with_launcher()\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="tells an ended process by /proc (Linux)")
@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_a_worker_stops_when_its_launcher_is_killed(platform):
    start_worker = f"subprocess.Popen([sys.executable, '-c', {_worker_code('', platform)!r}])"
    launcher_code = f"import subprocess, sys, time\n{start_worker}\ntime.sleep(60)\n"
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], stdout=subprocess.PIPE, text=True)
    worker, started = 0, None
    try:
        worker = int(launcher.stdout.readline())  # the worker's pid, once it is watched
        started = _start_time(worker)
        launcher.kill()
        launcher.wait(timeout=30)
        _wait_for(lambda: _start_time(worker) != started, 10)  # the watchdog looks five times a second
        assert _start_time(worker) != started, f"the worker outlived its launcher ({platform})"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=30)
        if started is not None and _start_time(worker) == started:  # a failed test leaves no process behind
            os.kill(worker, signal.SIGKILL)
        launcher.stdout.close()


def test_a_worker_whose_launcher_ended_before_it_was_watched_stops_at_once():
    ended = subprocess.Popen(["true"])  # the launcher the worker is told of: ended, not its parent
    ended.wait()
    worker = subprocess.run(
        [sys.executable, "-c", _worker_code(ended.pid, "linux")], capture_output=True, text=True, timeout=60
    )
    assert worker.returncode == -signal.SIGTERM and worker.stdout == "", worker.stderr
