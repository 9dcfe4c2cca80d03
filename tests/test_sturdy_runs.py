"""Nothing a command does can destroy or silently change a run; every refusal comes before work, in one line.

Each refused command is checked three ways: exit status 2, one line that
starts ``cifarkit: error:`` (no traceback), and no directory created or run
file changed.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import cifarkit.train as train_module
from cifarkit.data.dataset import CIFAR10
from cifarkit.errors import CifarkitError
from cifarkit.evaluate import evaluate
from cifarkit.files import LOCK_FILE
from cifarkit.recipes import get_recipe
from cifarkit.runs import load_torch, save_torch
from cli_runner import run_cli
from conftest import synthetic_cifar
from interrupt import train_killed_in_epoch

RECIPE = get_recipe("seed_cnn3").replace(epochs=2, lr=0.003)
TINY = ["--recipe", "seed_cnn3", "--epochs", "1", "--subset", "100", "--set", "lr=0.003"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes); the empty lock file aside."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def refused(capsys, *argv: str, started: bool = False) -> str:
    """Run the CLI, assert a one-line refusal (exit 2, no traceback); returns the message.

    A refusal before work prints that line alone; one after training ``started``
    follows its progress lines.
    """
    code, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()[-1:] if started else err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("cifarkit: error:"), (code, err)
    assert "Traceback" not in err and err.count("cifarkit: error:") == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, CIFAR10]:
    """A trained and evaluated run, to be copied by tests that try to damage it."""
    data = synthetic_cifar()
    run = tmp_path_factory.mktemp("finished") / "run"
    train_module.train(RECIPE.replace(epochs=1), data, run, subset=100, progress=False)
    evaluate(run, data)
    return run, data


@pytest.fixture
def run_copy(finished_run, tmp_path) -> tuple[Path, CIFAR10]:
    run, data = finished_run
    return Path(shutil.copytree(run, tmp_path / "run")), data


# --- refused before work: nothing created ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], "'seed' must be in [0, 4.29497e+09]"),
        (["--seed", "4294967296"], "'seed' must be"),
        (["--set", 'lr_scale={"head": 2}'], "lr_scale names roles ['head'] that seed_cnn3 lacks"),
        (["--set", 'lr_scale={"all": NaN}'], "lr_scale values must be finite"),
        (["--set", "whiten_bias_epochs=3"], "whiten_bias_epochs needs a model with a whitening layer"),
        (["--set", "lr=nan"], "'lr' must be > 0, got nan"),
        (["--set", "lr=inf"], "'lr' must be > 0, got inf"),
        (["--set", "label_smoothing=nan"], "'label_smoothing'"),
        (["--set", "warmup_epochs=inf"], "'warmup_epochs'"),
        (["--recipe", "lite0_frozen", "--set", "flip=true"], "frozen_features trains on fixed features"),
        (["--recipe", "fast90", "--set", 'model_kwargs={"bn_eps": -1}'], "break its forward pass"),
        (["--recipe", "fast90", "--set", 'model_kwargs={"whiten_kernel": 0}'], "break its forward pass"),
        (["--recipe", "fast90", "--set", 'model_kwargs={"whiten_kernel": 33}'], "break its forward pass"),
        (["--set", 'model_kwargs={"num_classes": 0}'], "non-finite or misshapen outputs"),
        (["--set", 'model_kwargs={"num_classes": 5}'], "num_classes 5 differs from the 10 classes"),
        (["--set", "name=../../elsewhere"], "recipe name '../../elsewhere' must be letters"),
        (["--threads", "100000"], "expects at most 1024 threads"),  # PyTorch would crash
        (["--threads", "0"], "train: argument --threads: expects a whole number >= 1"),
        (["--set", "epochs=0"], "'epochs' must be >= 1"),
        (["--config", "."], "is a folder, not a file"),
    ],
)
def test_bad_recipes_are_refused_before_a_run_directory_exists(capsys, cli_data, tmp_path, args, message):
    out = tmp_path / "run"
    argv = ["train", "--recipe", "seed_cnn3", *args] if "--recipe" not in args else ["train", *args]
    assert message in refused(capsys, *argv, "--out", str(out))
    assert not out.exists()


def test_bad_places_for_a_run_are_refused_before_anything_is_created(capsys, cli_data, tmp_path, run_copy):
    run, _ = run_copy
    before = snapshot(run)
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in refused(capsys, "train", *TINY, "--out", str(tmp_path / "file" / "run"))
    assert "cannot write in /sys" in refused(capsys, "train", *TINY, "--out", "/sys/cifarkit-test/run")
    assert "lies inside the run directory" in refused(capsys, "train", *TINY, "--out", str(run / "sub" / "run"))
    assert "already holds a run; pass --resume" in refused(capsys, "train", *TINY, "--out", str(run))
    assert "is not a cifarkit run directory" in refused(capsys, "train", "--resume", "--out", str(tmp_path / "new"))
    assert "--out is empty" in refused(capsys, "train", *TINY, "--out", "")
    assert not (tmp_path / "new").exists() and not (run / "sub").exists() and snapshot(run) == before


# --- outputs never land on a run's files -----------------------------------------------------------------------------


def test_no_output_option_writes_a_runs_files(capsys, cli_data, run_copy, tmp_path):
    run, _ = run_copy
    (tmp_path / "link").symlink_to(run)
    before = snapshot(run)
    for argv in (
        ["export", str(run), "-o", str(run / "best.safetensors")],
        ["export", str(run), "-o", str(run / "resume.pt")],
        ["export", str(run), "--format", "torch-export", "-o", str(run / "eval" / "model.pt2")],
        ["report", str(run), "--no-data", "-o", str(run / "config.json")],
        ["report", str(run), "--no-data", "-o", str(run / "insight" / "report.html")],
        ["report", str(run), "--no-data", "-o", str(run / "new.html")],
        ["data", "show", "-o", str(run / "samples.png")],
        ["export", str(run), "-o", str(run / "eval" / ".." / "best.safetensors")],  # the same file by another name
        ["report", str(run), "--no-data", "-o", str(tmp_path / "link" / "config.json")],  # a link to the run
    ):
        assert "lies in the run directory" in refused(capsys, *argv)
    (tmp_path / "x.png").write_text("x")
    assert "is a file, not a folder" in refused(capsys, "data", "show", "-o", str(tmp_path / "x.png" / "y.png"))
    assert "cannot write in /sys" in refused(capsys, "report", str(run), "--no-data", "-o", "/sys/report.html")
    assert snapshot(run) == before


def test_a_cache_folder_inside_a_run_is_refused(capsys, run_copy, tmp_path):
    run, _ = run_copy
    message = refused(capsys, "data", "info", "--data", str(tmp_path), "--cache-dir", str(run / "cache"))
    assert "--cache-dir" in message and "lies in the run directory" in message and not (run / "cache").exists()


def test_each_command_writes_only_its_own_files_and_replaces_none_of_another(capsys, cli_data, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *TINY, "--out", str(run))
    assert code == 0, err
    trained = snapshot(run)
    assert {"config.json", "metrics.json", "resume.pt", "best.safetensors", "eval/metrics.json"} <= set(trained)

    def writes(*argv: str) -> set[str]:
        """What the command added or changed in the run; it must not remove or change another's file."""
        before = snapshot(run)
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err
        after = snapshot(run)
        assert set(before) <= set(after)
        return {name for name in after if before.get(name) != after[name]}

    own = lambda prefix: lambda name: name.startswith(prefix)  # noqa: E731
    assert all(map(own("eval/"), writes("evaluate", str(run), "--tta", "none")))
    assert writes("train", "--resume", "--out", str(run), "--no-eval") == set()  # finished: nothing to do
    assert all(map(own("insight/"), writes("report", str(run), "--no-data", "-o", str(tmp_path / "r.html"))))
    assert writes("export", str(run), "--check-images", "20") == {"model.onnx"}
    assert writes("export", str(run), "--format", "torch-export", "--check-images", "20") == {"model.pt2"}
    assert writes("predict", str(run), str(_image(tmp_path, cli_data))) == set()
    other = synthetic_cifar(seed=7)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cifarkit.cli._data", lambda args: other)
        changed = writes("evaluate", str(run))
    folder = f"eval-synthetic-{other.test_fingerprint[:8]}/"
    assert changed and all(map(own(folder), changed))  # other data: beside the run's own results
    assert {k: v for k, v in snapshot(run).items() if k in trained and not k.startswith("eval/")} == {
        k: v for k, v in trained.items() if not k.startswith("eval/")
    }  # train's files are as train left them


def _image(tmp_path: Path, data: CIFAR10) -> Path:
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray(data.x_test[0]).save(path)
    return path


# --- training that goes wrong keeps what it had ----------------------------------------------------------------------


def test_divergence_stops_in_one_line_and_writes_no_nan(capsys, cli_data, tmp_path):
    out = tmp_path / "run"
    message = refused(capsys, "train", *TINY, "--set", "lr=1e6", "--out", str(out), started=True)
    assert "training diverged in epoch 1" in message and "lower learning rate" in message
    fix = re.search(r"`cifarkit (train --resume --out \S+ --set lr=\S+)`", message).group(1).split()
    assert float(fix[-1].split("=")[1]) < 1e6
    code, _, err = run_cli(capsys, *fix[:-2], "--set", "lr=0.003", "--no-eval")  # the fix it names works
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["lr"] == 0.003 and (out / "best.safetensors").is_file()

    def refuse(constant):
        raise AssertionError(f"{constant} in a JSON file of the run")

    for path in out.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=refuse)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, tiny_data, monkeypatch):
    real_augment, real_loss, epoch = train_module.augment, train_module.training_loss, [0]

    def augment(images, **kwargs):
        epoch[0] = kwargs["epoch"]
        return real_augment(images, **kwargs)

    def nan_in_second_epoch(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if epoch[0] == 1 else loss

    monkeypatch.setattr(train_module, "augment", augment)
    monkeypatch.setattr(train_module, "training_loss", nan_in_second_epoch)
    out = tmp_path / "run"
    with pytest.raises(CifarkitError, match="diverged in epoch 2 .*training loss nan.*checkpoint of the epoch before"):
        train_module.train(RECIPE, tiny_data, out, subset=100, progress=False)
    assert load_torch(out / "resume.pt")["epoch"] == 1
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [1]


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_resume(tmp_path, tiny_data, monkeypatch):
    real_save = train_module.save_torch

    def full_on_second(obj, path):
        if obj["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(obj, path)

    monkeypatch.setattr(train_module, "save_torch", full_on_second)
    out = tmp_path / "run"
    with pytest.raises(CifarkitError, match=r"the disk is full.*intact.*cifarkit train --resume --out"):
        train_module.train(RECIPE, tiny_data, out, subset=100, progress=False)
    assert load_torch(out / "resume.pt")["epoch"] == 1
    monkeypatch.setattr(train_module, "save_torch", real_save)
    train_module.train(RECIPE, tiny_data, out, subset=100, resume=True, progress=False)
    assert load_torch(out / "resume.pt")["epoch"] == 2


def test_a_checkpoint_of_another_run_is_refused_in_one_line(tmp_path, tiny_data):
    out = tmp_path / "run"
    train_killed_in_epoch(RECIPE, tiny_data, out, epoch=1)
    state = load_torch(out / "resume.pt")
    save_torch({**state, "model": {"conv.weight": torch.zeros(3)}}, out / "resume.pt")
    with pytest.raises(CifarkitError, match="does not fit this run's model.*not this run's checkpoint"):
        train_module.train(RECIPE, tiny_data, out, resume=True, progress=False)
    save_torch({**state, "global_batch": 7}, out / "resume.pt")
    with pytest.raises(CifarkitError, match="global batch of 7.*not this run's checkpoint"):
        train_module.train(RECIPE, tiny_data, out, resume=True, progress=False)


# --- one writer at a time; data that moved ---------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="the test holds the lock with fcntl")
def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stale_lock(capsys, cli_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert "being written by another cifarkit command" in refused(capsys, "train", *TINY, "--out", str(out))
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written beside the lock
    finally:
        holder.kill()  # as kill -9: the OS releases the lock with the process
        holder.wait()
    code, _, err = run_cli(capsys, "train", *TINY, "--out", str(out), "--no-eval")
    assert code == 0, err


@pytest.mark.skipif(sys.platform == "win32", reason="the test holds the lock with fcntl")
def test_no_command_writes_a_run_another_is_writing(capsys, cli_data, run_copy, tmp_path):
    run, _ = run_copy
    before = snapshot(run)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for argv in (
            ["evaluate", str(run)],
            ["report", str(run), "--no-data", "-o", str(tmp_path / "r.html")],
            ["export", str(run), "--check-images", "10"],
            ["train", "--resume", "--out", str(run)],
        ):
            assert "is being written by another cifarkit command" in refused(capsys, *argv)
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(run) == before


def test_resume_accepts_the_same_pixels_at_a_new_place_and_refuses_others(capsys, tmp_path, monkeypatch):
    data = synthetic_cifar()
    gone = CIFAR10(data.x_train, data.y_train, data.x_test, data.y_test, source=str(tmp_path / "gone" / "cifar10"))
    out = tmp_path / "run"
    train_killed_in_epoch(RECIPE, gone, out, epoch=1)
    before = snapshot(out)
    message = refused(capsys, "train", "--resume", "--out", str(out))  # the recorded place is empty now
    assert "gone" in message and f"cifarkit train --resume --out {out} --data NEW_PLACE" in message
    other = synthetic_cifar(seed=3)
    monkeypatch.setattr("cifarkit.cli._data", lambda args: CIFAR10(*_arrays(other), source=args.data))
    message = refused(capsys, "train", "--resume", "--out", str(out), "--data", str(tmp_path / "other"))
    assert "is not the data the run" in message and snapshot(out) == before
    monkeypatch.setattr("cifarkit.cli._data", lambda args: CIFAR10(*_arrays(data), source=args.data))
    code, _, err = run_cli(capsys, "train", "--resume", "--out", str(out), "--data", str(tmp_path / "new"), "--no-eval")
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert (
        config["data_source"] == str(tmp_path / "new")
        and config["data_fingerprints"]["train"] == data.train_fingerprint
    )
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [1, 2]


def _arrays(data: CIFAR10) -> tuple:
    return data.x_train, data.y_train, data.x_test, data.y_test
