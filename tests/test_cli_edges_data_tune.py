"""Issue 17, data and tune: every refusal is one line, exit 2, no traceback, and leaves no directory behind."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
import urllib.error
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

import cifarkit.cli
from cifarkit.data import cache, download, load_cifar10, loader, sources
from cifarkit.errors import CifarkitError, DataError
from cifarkit.recipes import get_recipe, validate
from cifarkit.tune import BEST_CONFIG, best_trial, check_storage, load_study, parse_space, tune
from cli_runner import run_cli
from conftest import synthetic_cifar
from data_factories import (
    make_dataset,
    python_archive,
    write_archive,
    write_binary_batches,
    write_image_folders,
    write_python_batches,
)

pytestmark = pytest.mark.usefixtures("isolated_env")


def assert_refused(code: int, err: str, *expected: str) -> str:
    """Exit 2 and one line `cifarkit: error: ...` (or argparse's usage and one error line) naming ``expected``."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and (lines[-1].startswith("cifarkit: error: ") or lines[-1].startswith("cifarkit tune: error: ")), err
    if lines[-1].startswith("cifarkit: error: "):
        assert len(lines) == 1, err
    for text in expected:
        assert text in lines[-1], err
    return lines[-1]


@pytest.fixture
def batches(tmp_path: Path) -> Path:
    """A cifar-10-batches-py folder of 20 training and 10 test images."""
    return write_python_batches(make_dataset(), tmp_path / "data" / "cifar-10-batches-py")


# --- data show: --count and --seed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, expected",
    [
        (("--count", "-1"), "--count must be from 1 to 256"),
        (("--count", "0"), "--count must be from 1 to 256"),
        (("--count", "60000"), "got 60000"),
        (("--seed", "-1"), "--seed must be a whole number >= 0"),
    ],
)
def test_data_show_refuses_counts_and_seeds_out_of_range(capsys, tmp_path, batches, flags, expected):
    out = tmp_path / "grid.png"
    argv = ("data", "show", *flags, "--data", str(batches), "--cache-dir", str(tmp_path / "cache"), "-o", str(out))
    assert_refused(*run_cli(capsys, *argv)[::2], expected)
    assert not out.exists() and not (tmp_path / "cache").exists()  # refused before the data was loaded


def test_data_show_refuses_more_images_than_the_training_set_holds(capsys, tmp_path, batches):
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, "data", "show", "--count", "21", "--data", str(batches), "-o", str(out))
    assert_refused(code, err, "--count 21 is more than the 20 training images", "choose 1 to 20")
    assert not out.exists()
    code, stdout, err = run_cli(capsys, "data", "show", "--count", "20", "--data", str(batches), "-o", str(out))
    assert code == 0 and out.is_file(), err


# --- --data and --cache-dir -----------------------------------------------------------------------------------


def _train_only_tree(tmp_path: Path) -> Path:
    root = write_image_folders(make_dataset(), tmp_path / "tree")
    shutil.rmtree(root / "test")
    return root


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda tmp: tmp / "nope", "does not exist"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "holds no CIFAR-10 data I recognise"),
        (lambda tmp: (tmp / "notes.txt").write_text("hi") and tmp / "notes.txt", "is not a CIFAR-10 archive"),
        (
            lambda tmp: (
                (tmp / "cifar-10-python.tar.gz").write_bytes(b"not gzip at all") and tmp / "cifar-10-python.tar.gz"
            ),
            "incomplete or corrupt",
        ),
        (_train_only_tree, "test is missing"),
        (lambda tmp: (tmp / "loop").symlink_to("loop") or tmp / "loop", "symbolic link to nothing"),
        (lambda tmp: os.mkfifo(tmp / "pipe.tar.gz") or tmp / "pipe.tar.gz", "neither a file nor a folder"),
        (lambda tmp: "", "--data is empty"),
    ],
    ids=["missing", "empty-folder", "text-file", "not-an-archive", "train-without-test", "link-loop", "fifo", "empty"],
)
def test_bad_data_paths_are_one_line_errors(capsys, tmp_path, monkeypatch, make, expected):
    data = make(tmp_path)
    monkeypatch.setattr(sources, "_decode_images", lambda *a: pytest.fail("decoded images before checking the tree"))
    cache_dir = tmp_path / "cache"
    assert_refused(*run_cli(capsys, "data", "info", "--data", str(data), "--cache-dir", str(cache_dir))[::2], expected)
    assert not cache_dir.exists()


def test_cache_dir_that_is_a_file_warns_and_still_loads(capsys, tmp_path, batches):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the CIFAR-10 cache.*--cache-dir"):
        code, out, err = run_cli(capsys, "data", "info", "--data", str(batches), "--cache-dir", str(blocker))
    assert code == 0 and "train: images (20, 32, 32, 3)" in out, err


@pytest.mark.parametrize("below", [False, True], ids=["is-a-file", "under-a-file"])
def test_cache_dir_that_cannot_hold_a_download_is_refused_before_downloading(capsys, tmp_path, monkeypatch, below):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(download, "_fetch", lambda *a: pytest.fail("tried to download"))
    cache_dir = blocker / "sub" if below else blocker
    code, _, err = run_cli(capsys, "data", "info", "--cache-dir", str(cache_dir))
    assert_refused(code, err, f"cannot download CIFAR-10 into the cache folder {cache_dir}", "is a file", "--data")


def test_unwritable_cache_dir_is_refused_before_downloading(capsys, tmp_path, monkeypatch):
    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(loader.tempfile, "TemporaryFile", read_only)  # as root, chmod cannot make a folder read-only
    monkeypatch.setattr(download, "_fetch", lambda *a: pytest.fail("tried to download"))
    code, _, err = run_cli(capsys, "data", "info", "--cache-dir", str(tmp_path / "cache"))
    assert_refused(code, err, f"{tmp_path} is not writable (Permission denied)", "--cache-dir")
    assert not (tmp_path / "cache").exists()


def test_offline_download_error_is_one_line_and_creates_nothing(capsys, tmp_path, monkeypatch):
    def offline(url: str, offset: int, timeout: float) -> None:
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(download, "_request", offline)
    cache_dir = tmp_path / "cache"
    code, _, err = run_cli(capsys, "data", "info", "--cache-dir", str(cache_dir))
    line = assert_refused(code, err, "could not download", "Network is unreachable", "CIFARKIT_DATA", "--data")
    assert str(cache_dir / "cifar-10-python.tar.gz") in line
    assert not cache_dir.exists()


# --- archives: a replaced archive is checked again; a re-packed one is not called corrupt ----------------------


def _same_size_other_bytes(archive: Path, into: Path) -> Path:
    """A copy of ``archive`` with one byte changed (so a different MD5) and the same size."""
    payload = bytearray(archive.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    into.write_bytes(bytes(payload))
    return into


@pytest.mark.parametrize("how", ["in-place", "copy-preserving-timestamps", "renamed-over"])
def test_a_replaced_archive_with_its_old_size_and_mtime_is_checked_again(tmp_path, how):
    archive, md5 = python_archive(make_dataset(), tmp_path)
    cache_dir = tmp_path / "cache"
    load_cifar10(archive, cache_dir=cache_dir, md5=md5, download=False)
    old = archive.stat()
    time.sleep(0.05)  # past the file system clock's tick, so the replacement's change time differs
    other = _same_size_other_bytes(archive, tmp_path / "other.tar.gz")
    if how == "in-place":  # e.g. a disk error or an editor: same file, same size, mtime set back
        archive.write_bytes(other.read_bytes())
    elif how == "copy-preserving-timestamps":  # cp --preserve=timestamps other archive
        os.utime(other, ns=(old.st_atime_ns, old.st_mtime_ns))
        shutil.copy2(other, archive)
    else:  # touch -r archive other && mv other archive
        os.utime(other, ns=(old.st_atime_ns, old.st_mtime_ns))
        os.replace(other, archive)
    os.utime(archive, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (archive.stat().st_size, archive.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    with pytest.raises(DataError, match=f"has MD5 [0-9a-f]{{32}}, expected {md5}"):
        load_cifar10(archive, cache_dir=cache_dir, md5=md5, download=False)


def test_an_unchanged_archive_still_hits_the_cache(tmp_path, monkeypatch):
    archive, md5 = python_archive(make_dataset(), tmp_path)
    load_cifar10(archive, cache_dir=tmp_path / "cache", md5=md5, download=False)
    monkeypatch.setattr(sources, "file_md5", lambda path: pytest.fail("checked the MD5 of an unchanged archive"))
    assert load_cifar10(archive, cache_dir=tmp_path / "cache", md5=md5, download=False).x_train.shape[0] == 20


def test_archive_fingerprint_holds_inode_and_change_time(tmp_path):
    archive, _ = python_archive(make_dataset(), tmp_path)
    stat = archive.stat()
    [line] = cache._listing(archive)
    assert line.split("\0")[1:] == [str(v) for v in (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)]


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_repacked_archive_says_how_to_use_it_extracted(capsys, tmp_path, kind):
    data = make_dataset()
    if kind == "python":
        archive, _ = python_archive(data, tmp_path)
        folder = "cifar-10-batches-py"
    else:
        folder = "cifar-10-batches-bin"
        archive = tmp_path / "cifar-10-binary.tar.gz"
        write_archive(write_binary_batches(data, tmp_path / "build" / folder), archive)
    with pytest.raises(DataError) as caught:
        load_cifar10(archive, cache_dir=tmp_path / "cache", download=False)
    message = str(caught.value)
    assert "is not the official CIFAR-10 archive" in message and "incomplete or corrupt" not in message
    assert f"tar xzf {archive} -C {tmp_path}" in message and f"--data {tmp_path / folder}" in message
    code, _, err = run_cli(capsys, "data", "info", "--data", str(archive), "--cache-dir", str(tmp_path / "cache"))
    assert_refused(code, err, "not the official CIFAR-10 archive")
    with tarfile.open(archive) as tar:  # the advice works
        tar.extractall(tmp_path, filter="data")
    assert load_cifar10(tmp_path / folder, cache_dir=tmp_path / "cache").x_train.shape[0] == 20


def test_truncated_archive_without_an_expected_md5_says_download_again(tmp_path):
    archive, _ = python_archive(make_dataset(), tmp_path)
    archive.write_bytes(archive.read_bytes()[:500])
    with pytest.raises(DataError, match="incomplete or corrupt. Delete it and download it again"):
        load_cifar10(archive, cache_dir=tmp_path / "cache", download=False)


# --- tune: flags refused before anything is created ----------------------------------------------------------


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.toml"
    path.write_text("epochs = 1\nbf16 = false\nlr = {low = 1e-3, high = 1e-2, log = true}\n")
    return path


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the data fails the test: the refusal must come first."""
    monkeypatch.setattr(cifarkit.cli, "_data", lambda args: pytest.fail("loaded the data before refusing"))


def _tune(capsys, space: Path | str, out: Path, *flags: str) -> tuple[int, str, str]:
    argv = ("tune", "--recipe", "seed_cnn3", "--space", str(space), "--out", str(out), "--device", "cpu")
    trials = () if "--trials" in flags else ("--trials", "1")
    return run_cli(capsys, *argv, *trials, *flags)


@pytest.mark.parametrize(
    "storage, expected",
    [
        ("not a url", "--storage is not a SQLAlchemy URL"),
        ("nosuchdb://host/db", "has no database dialect 'nosuchdb'"),
        ("postgresql://nobody:secret@127.0.0.1:1/x", "cannot connect to the study storage postgresql://nobody:***@"),
        ("sqlite:///{tmp}/missing/study.db", "does not exist (SQLite creates the database file, not its folder)"),
        ("sqlite:///{tmp}/space.toml", "(file is not a database)"),
        ("", "--storage is empty"),
    ],
    ids=["not-a-url", "unknown-dialect", "unreachable", "sqlite-no-folder", "sqlite-not-a-database", "empty"],
)
def test_bad_storage_is_refused_before_anything_is_created(capsys, tmp_path, space_file, no_data, storage, expected):
    out = tmp_path / "study"
    code, _, err = _tune(capsys, space_file, out, "--storage", storage.format(tmp=tmp_path))
    assert "secret" not in assert_refused(code, err, expected)
    assert not out.exists() and not (tmp_path / "missing").exists()


def test_check_storage_accepts_a_new_sqlite_file_without_creating_it(tmp_path):
    check_storage(f"sqlite:///{tmp_path / 'new.db'}")
    check_storage(None)
    assert not (tmp_path / "new.db").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (("--trials", "0"), "argument --trials: expects a whole number >= 1"),
        (("--trials", "-1"), "argument --trials: expects a whole number >= 1"),
        (("--subset", "0"), "argument --subset: expects a whole number >= 1"),
        (("--subset", "-5"), "argument --subset: expects a whole number >= 1"),
    ],
)
def test_trials_and_subset_below_one_are_usage_errors(capsys, tmp_path, space_file, no_data, flags, expected):
    out = tmp_path / "study"
    assert_refused(*_tune(capsys, space_file, out, *flags)[::2], expected)
    assert not out.exists()


@pytest.mark.parametrize("subset, expected", [("5", "--subset must be between 10"), ("100000", "and 300, got 100000")])
def test_subset_outside_the_data_is_refused_before_the_study(
    capsys, tmp_path, space_file, monkeypatch, subset, expected
):
    monkeypatch.setattr(cifarkit.cli, "_data", lambda args: synthetic_cifar())
    out = tmp_path / "study"
    code, stdout, err = _tune(capsys, space_file, out, "--subset", subset)
    assert_refused(code, err, expected)
    assert not out.exists() and "tuning" not in stdout


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, "config file {space} does not exist"),
        ("lr = {low = 1e-3, high = ", "is not valid TOML"),
        ("lrr = {low = 1e-3, high = 1e-2}\n", "unknown recipe field 'lrr'"),
        ("[model_kwargs]\nfoo = {low = 1, high = 2}\n", "model_kwargs.foo = 1 is not a valid trial"),
        ("directory", "it is a folder, not a TOML file"),
    ],
    ids=["missing", "invalid-toml", "unknown-field", "unknown-model-kwarg", "directory"],
)
def test_bad_space_files_are_one_line_errors(capsys, tmp_path, no_data, text, expected):
    space = tmp_path / "space.toml"
    if text == "directory":
        space.mkdir()
    elif text is not None:
        space.write_text(text)
    out = tmp_path / "study"
    assert_refused(*_tune(capsys, space, out)[::2], f"search space {space}: ", expected.format(space=space))
    assert not out.exists()


@pytest.mark.parametrize("under", [False, True], ids=["is-a-file", "under-a-file"])
def test_study_directory_that_is_a_file_is_refused_before_the_data(capsys, tmp_path, space_file, no_data, under):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "study" if under else blocker
    assert_refused(*_tune(capsys, space_file, out)[::2], "is a file")


# --- tune: refused recipes fail their trial and never become best_config.json ----------------------------------


def test_a_trial_whose_recipe_is_refused_fails_and_more_trials_run(tmp_path, capfd):
    base = get_recipe("seed_cnn3").replace(bf16=False)
    # Each value is valid alone; patience with select=last is refused by validate, so trial 0 must fail.
    space = parse_space({"epochs": 1, "patience": {"choices": [0, 1]}, "select": {"choices": ["best", "last"]}}, base)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.enqueue_trial({"patience": 1, "select": "last"})
    study.enqueue_trial({"patience": 0, "select": "best"})
    out = tmp_path / "study"
    tune(base, space, synthetic_cifar(), out, n_trials=1, storage=storage, study_name="s", subset=100, progress=False)
    trials = load_study(out).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]  # the failure did not use up --trials
    assert "patience (early stopping) needs select=best" in trials[0].user_attrs["error"]
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0001"]  # the refused recipe never trained
    assert "Traceback" not in capfd.readouterr().err
    best = json.loads((out / BEST_CONFIG).read_text())
    assert best.get("select", "best") == "best" and best.get("patience", 0) == 0
    validate(get_recipe("seed_cnn3").replace(**best))


def _fast_study(tmp_path: Path, trials: list[tuple[int, float]]):
    """fast90 over model_kwargs.whiten_kernel, with completed trials (kernel, accuracy) recorded but never trained."""
    base = get_recipe("fast90").replace(bf16=False, epochs=1, val_fraction=0.1)  # 0.02 of 300: too few to split
    space = parse_space({"model_kwargs": {"whiten_kernel": {"low": 1, "high": 3}}}, base)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    for kernel, accuracy in trials:  # kernel 0: recorded before validate ran the model once; it breaks fastnet
        study.add_trial(
            optuna.trial.create_trial(
                params={"model_kwargs.whiten_kernel": kernel},
                distributions={"model_kwargs.whiten_kernel": IntDistribution(0, 3)},
                value=accuracy,
            )
        )
    return base, space, storage


def test_best_config_skips_a_completed_trial_whose_model_breaks(tmp_path):
    base, space, storage = _fast_study(tmp_path, [(0, 0.9), (3, 0.5)])
    out = tmp_path / "study"
    study = tune(base, space, synthetic_cifar(), out, n_trials=2, storage=storage, study_name="s", progress=False)
    assert best_trial(study, base, space).number == 1
    best = json.loads((out / BEST_CONFIG).read_text())
    assert best["model_kwargs"] == {"whiten_kernel": 3}
    validate(get_recipe("fast90").replace(**best))  # what `cifarkit train --recipe fast90 --config` builds


def test_no_best_config_while_every_completed_trial_is_refused(tmp_path):
    base, space, storage = _fast_study(tmp_path, [(0, 0.9)])
    out = tmp_path / "study"
    kwargs = {"n_trials": 1, "storage": storage, "study_name": "s", "progress": False}
    study = tune(base, space, synthetic_cifar(), out, **kwargs)
    assert not (out / BEST_CONFIG).exists()
    with pytest.raises(CifarkitError, match="has no completed trial whose recipe cifarkit accepts.*trial 0"):
        best_trial(study, base, space)
    (out / BEST_CONFIG).write_text('{"model_kwargs": {"whiten_kernel": 0}}')  # written by an older cifarkit
    tune(base, space, synthetic_cifar(), out, **kwargs)  # resumed: the refused best_config.json is removed
    assert not (out / BEST_CONFIG).exists()
