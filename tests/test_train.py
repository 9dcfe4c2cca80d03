import json

import pytest
import torch
from safetensors.torch import load_file

import cifarkit.train as train_module
from cifarkit.errors import CifarkitError
from cifarkit.recipes import Recipe, get_recipe
from cifarkit.runs import build_model, load_model
from cifarkit.train import train
from conftest import THREADS, busy_cpus
from interrupt import dies_in_epoch, train_killed_in_epoch


def history(run, *keys: str) -> list:
    """The run's per-epoch history: whole rows, or the tuple of ``keys`` of each row."""
    rows = json.loads((run / "history.json").read_text())
    return rows if not keys else [tuple(r[k] for k in keys) for r in rows]


def quick(**changes) -> Recipe:
    """seed_cnn3 on a tiny set: a real model, seconds per epoch."""
    return get_recipe("seed_cnn3").replace(**{"epochs": 3, **changes})


def test_run_directory_contents_and_learning(tiny_data, tmp_path):
    run = train(quick(epochs=4, lr=0.003), tiny_data, tmp_path / "run", progress=False)
    names = {p.name for p in run.iterdir()}
    assert {
        "config.json",
        "history.json",
        "history.csv",
        "metrics.json",
        "curves.png",
        "best.safetensors",
        "last.safetensors",
        "resume.pt",
    } <= names
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(r["val_acc"] for r in history) > 0.5  # colour-coded classes are easy
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["params"] == 1_084_234 and metrics["epochs_run"] == 4
    assert metrics["best_val_acc"] == max(r["val_acc"] for r in history)
    assert (run / "history.csv").read_text().splitlines()[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc")


@pytest.mark.parametrize("epochs", [2, 3, 40])
def test_curves_mark_whole_epochs(epochs):
    from cifarkit.plots import training_curves

    rows = [dict(epoch=e, train_acc=0.5, val_acc=0.5, train_loss=1.0, val_loss=1.0) for e in range(1, epochs + 1)]
    for ax in training_curves({"run": rows}).axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks().tolist() if low <= t <= high]
        assert all(t.is_integer() for t in ticks) and 2 <= len(ticks) <= 10  # a readable count at any length
        assert epochs > 3 or ticks == list(range(1, epochs + 1))  # a short run: each of its epochs


def test_best_weights_are_from_best_epoch(tiny_data, tmp_path, monkeypatch):
    # Validation says epoch 1 was best, epoch 2 worse: best.safetensors must hold epoch 1's weights,
    # which a one-epoch run of the same recipe (constant lr, same seed) reproduces exactly.
    scripted = iter([(0.5, 0.9), (0.6, 0.4)])
    monkeypatch.setattr(train_module, "evaluate_loss_acc", lambda *a, **k: next(scripted))
    two = train(quick(epochs=2), tiny_data, tmp_path / "two", progress=False, threads=THREADS)
    monkeypatch.undo()
    one = train(quick(epochs=1), tiny_data, tmp_path / "one", progress=False, threads=THREADS)
    best, epoch1, last = (
        load_file(p) for p in (two / "best.safetensors", one / "last.safetensors", two / "last.safetensors")
    )
    assert set(best) == set(epoch1)
    assert all(torch.equal(best[k], epoch1[k]) for k in best)
    assert not all(torch.equal(best[k], last[k]) for k in best)
    loaded = load_model(two).state_dict()
    assert all(torch.equal(loaded[k], best[k]) for k in best)
    assert json.loads((two / "metrics.json").read_text())["best_epoch"] == 1


def test_select_last_keeps_the_last_epoch_whatever_validation_says(tiny_data, tmp_path, monkeypatch):
    scripted = iter([(0.5, 0.9), (0.6, 0.4)])
    monkeypatch.setattr(train_module, "evaluate_loss_acc", lambda *a, **k: next(scripted))
    run = train(quick(epochs=2, select="last"), tiny_data, tmp_path / "run", progress=False)
    best, last = load_file(run / "best.safetensors"), load_file(run / "last.safetensors")
    assert all(torch.equal(best[k], last[k]) for k in best)
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["best_epoch"], metrics["best_val_acc"]) == (2, 0.4)
    with pytest.raises(CifarkitError, match="patience.*select=best"):
        train(quick(select="last", patience=2), tiny_data, tmp_path / "other", progress=False)


def test_same_seed_same_numbers(tiny_data, tmp_path):
    """At a fixed thread count, with another program busy on every CPU during the second run on purpose."""
    a = train(quick(epochs=2, flip=True, translate=2), tiny_data, tmp_path / "a", progress=False, threads=THREADS)
    with busy_cpus():
        b = train(quick(epochs=2, flip=True, translate=2), tiny_data, tmp_path / "b", progress=False, threads=THREADS)
    c = train(quick(epochs=2, flip=True, translate=2, seed=7), tiny_data, tmp_path / "c", progress=False, threads=1)

    def loss(r):
        return history(r, "train_loss")

    assert loss(a) == loss(b)
    assert loss(a) != loss(c)
    wa, wb = load_file(a / "last.safetensors"), load_file(b / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_matches_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    """The resumed part beside a busy program, on purpose, and without --threads: the run's own count is reused."""
    recipe = quick(epochs=3, flip=True, translate=2, ema=0.9)
    full = train(recipe, tiny_data, tmp_path / "full", progress=False, threads=THREADS)

    train_killed_in_epoch(recipe, tiny_data, tmp_path / "cut")
    assert len(json.loads((tmp_path / "cut" / "history.json").read_text())) == 2

    with busy_cpus():
        cut = train(recipe, tiny_data, tmp_path / "cut", resume=True, progress=False)
    assert history(cut, "threads", "thread_changes") == [(THREADS, [])] * 3
    timeless = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")  # all but the seconds
    assert history(cut, *timeless) == history(full, *timeless)
    wf, wc = load_file(full / "last.safetensors"), load_file(cut / "last.safetensors")
    assert all(torch.equal(wf[k], wc[k]) for k in wf)


def test_refuses_to_overwrite_and_checks_resume(tiny_data, tmp_path):
    train(quick(epochs=1), tiny_data, tmp_path / "run", progress=False)
    with pytest.raises(CifarkitError, match="--resume"):
        train(quick(epochs=1), tiny_data, tmp_path / "run", progress=False)
    with pytest.raises(CifarkitError, match="different settings.*optimizer"):
        train(quick(epochs=1, optimizer="sgd"), tiny_data, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CifarkitError, match="holds no run to continue"):
        train(quick(epochs=1), tiny_data, tmp_path / "new", resume=True, progress=False)
    assert not (tmp_path / "new").exists()


def test_early_stopping(tiny_data, tmp_path):
    # a vanishing lr never improves on the first epoch's validation accuracy
    run = train(quick(epochs=10, lr=1e-12, patience=2), tiny_data, tmp_path / "run", progress=False)
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 3


def test_schedule_and_label_smoothing_run(tiny_data, tmp_path):
    run = train(
        quick(
            epochs=2,
            optimizer="sgd",
            lr=0.05,
            nesterov=True,
            schedule="linear",
            warmup_epochs=0.5,
            label_smoothing=0.2,
            cutout=8,
        ),
        tiny_data,
        tmp_path / "run",
        progress=False,
    )
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["lr"] < 0.05 * 0.2  # decayed towards 0 at the end


def test_recipe_overrides_are_type_checked():
    r = get_recipe("seed_cnn3")
    assert r.replace(lr="0.01", epochs="3", flip="true").lr == 0.01
    with pytest.raises(CifarkitError, match="unknown recipe field"):
        r.replace(lr_typo=1)
    with pytest.raises(CifarkitError, match="'epochs' expects an integer, got 'many'"):
        r.replace(epochs="many")


def test_notebook_recipes():
    for name, lr, epochs in [("seed_cnn1", 0.005, 10), ("seed_cnn2", 0.005, 10), ("seed_cnn3", 0.001, 15)]:
        r = get_recipe(name)
        assert (r.optimizer, r.lr, r.epochs, r.batch_size, r.val_fraction, r.seed) == (
            "adamax",
            lr,
            epochs,
            32,
            0.1,
            42,
        )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"model_kwargs": {"bogus": 1}}, "model_kwargs"),
        ({"epochs": 0}, "'epochs' must be >= 1"),
        ({"lr": -1.0}, "'lr' must be > 0"),
        ({"val_fraction": 1.0}, "'val_fraction' must be in"),
        ({"optimizer": "rmsprop"}, "choose one of adamax"),
        ({"schedule": "step"}, "choose one of constant"),
        ({"tta": "all"}, "choose one of none"),
        ({"micro_batch": -1}, "'micro_batch' must be >= 0"),
    ],
)
def test_bad_recipe_is_refused_before_anything_is_written(tiny_data, tmp_path, changes, message):
    with pytest.raises(CifarkitError, match=message):
        train(quick(**changes), tiny_data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_recipe_field_types_and_dict_merge():
    r = get_recipe("lite0_frozen")
    with pytest.raises(CifarkitError, match="expects an integer"):
        r.replace(epochs=1.5)
    with pytest.raises(CifarkitError, match="expects true or false"):
        r.replace(flip=1)
    assert r.replace(epochs=3.0).epochs == 3
    merged = r.replace(model_kwargs='{"dropout": 0.1}').model_kwargs
    assert merged == {**r.model_kwargs, "dropout": 0.1}
    assert "hidden" not in r.replace(model_kwargs={"head": "linear", "hidden": None}).model_kwargs
    assert [r.replace(bf16=v).bf16 for v in ("auto", "true", "0", True)] == ["auto", True, False, True]
    with pytest.raises(CifarkitError, match="auto, true or false"):
        r.replace(bf16="fast")


@pytest.mark.parametrize("subset, message", [(0, "between 10"), (5, "between 10"), (20, "val_fraction=0")])
def test_subset_too_small_is_an_error(tiny_data, tmp_path, subset, message):
    with pytest.raises(CifarkitError, match=message):
        train(quick(epochs=1), tiny_data, tmp_path / "run", subset=subset, progress=False)
    assert not (tmp_path / "run").exists()


def test_no_validation_split_writes_null_not_nan(tiny_data, tmp_path):
    run = train(quick(epochs=2, val_fraction=0.0), tiny_data, tmp_path / "run", subset=50, progress=False)

    def strict(name):  # a bare NaN in the file fails the test
        return json.loads((run / name).read_text(), parse_constant=pytest.fail)

    assert [r["val_acc"] for r in strict("history.json")] == [None, None]
    metrics = strict("metrics.json")
    assert metrics["best_val_acc"] is None and metrics["best_epoch"] == 2


def test_run_killed_before_its_first_checkpoint_starts_again(tiny_data, tmp_path, monkeypatch):
    dies = dies_in_epoch(0)
    monkeypatch.setattr(train_module, "augment", dies)
    with pytest.raises(KeyboardInterrupt):
        train(quick(epochs=1), tiny_data, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "config.json").is_file() and not (tmp_path / "run" / "resume.pt").exists()
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt):  # same state again, then both ways of restarting work
        monkeypatch.setattr(train_module, "augment", dies)
        train(quick(epochs=1), tiny_data, tmp_path / "run2", progress=False)
    monkeypatch.undo()
    train(quick(epochs=1), tiny_data, tmp_path / "run", progress=False)
    train(quick(epochs=1), tiny_data, tmp_path / "run2", resume=True, progress=False)
    for run in ("run", "run2"):
        assert json.loads((tmp_path / run / "metrics.json").read_text())["epochs_run"] == 1


def test_resuming_a_finished_run_keeps_its_results(tiny_data, tmp_path):
    run = train(quick(epochs=1), tiny_data, tmp_path / "run", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "test_acc": 0.5}))
    train(quick(epochs=1), tiny_data, run, resume=True, progress=False)
    assert json.loads((run / "metrics.json").read_text())["test_acc"] == 0.5


def test_out_that_is_a_file_or_a_foreign_folder_is_refused(tiny_data, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CifarkitError, match="is a file"):
        train(quick(epochs=1), tiny_data, tmp_path / "file", progress=False)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_text("x")
    with pytest.raises(CifarkitError, match="other files"):
        train(quick(epochs=1), tiny_data, tmp_path / "photos", progress=False)
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg"]


def test_fast_recipe_resume_retraces_the_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    """fast90's machinery (whitening init, Muon + SGD chain, alternating flip, linear decay) resumes exactly."""
    recipe = get_recipe("fast90").replace(
        epochs=3, batch_size=100, val_fraction=0.1, bf16=False, whiten_bias_epochs=1.5, ema=0.9
    )
    full = train(recipe, tiny_data, tmp_path / "full", progress=False, threads=THREADS)
    train_killed_in_epoch(recipe, tiny_data, tmp_path / "cut")
    cut = train(recipe, tiny_data, tmp_path / "cut", resume=True, progress=False)
    wf, wc = load_file(full / "last.safetensors"), load_file(cut / "last.safetensors")
    assert set(wf) == set(wc) and all(torch.equal(wf[k], wc[k]) for k in wf)
    assert history(cut, "train_loss", "val_acc", "lr") == history(full, "train_loss", "val_acc", "lr")


def test_precision_is_resolved_and_recorded(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr("cifarkit.runtime.cpu_has_native_bf16", lambda: False)
    run = train(quick(epochs=1), tiny_data, tmp_path / "auto", subset=100, device="cpu", progress=False)
    assert json.loads((run / "config.json").read_text())["bf16"] is False
    monkeypatch.setattr("cifarkit.runtime.cpu_has_native_bf16", lambda: True)
    run = train(quick(epochs=1), tiny_data, tmp_path / "native", subset=100, device="cpu", progress=False)
    assert json.loads((run / "config.json").read_text())["bf16"] is True


def test_compile_is_for_cuda_and_says_so_elsewhere(tiny_data, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("torch.compile on the CPU")

    monkeypatch.setattr(torch.nn.Module, "compile", never)
    with pytest.warns(UserWarning, match="compile=true is for CUDA; on cpu it trains uncompiled"):
        run = train(quick(epochs=1, compile=True), tiny_data, tmp_path / "run", subset=100, progress=False)
    assert json.loads((run / "config.json").read_text())["compile"] is True


def test_micro_batches_add_up_to_the_step_of_the_whole_batch(tiny_data, tmp_path, monkeypatch):
    """Parts of 3 images (3, 3, 3 and 1) make the step the whole batch of 10 makes.

    Dropout is off, so each forward is the same function, and SGD's step is
    -lr x the gradient: the parts' gradients differ from the whole batch's
    only by float32 summation order, ~1e-7 of the update (1e-4 allowed); a
    part counted twice, left out or scaled by its own size instead of the
    batch's is off by 10% of the update or more.
    """
    from cifarkit.models.dropout import Dropout

    monkeypatch.setattr(Dropout, "forward", lambda self, x: x)
    recipe = quick(optimizer="sgd", lr=0.01, momentum=0.0, bf16=False, epochs=1, batch_size=10, val_fraction=0)
    torch.manual_seed(recipe.seed)  # as training does before it builds the model
    start = build_model(recipe.to_dict()).state_dict()

    def one_step(micro_batch: int) -> tuple[dict[str, torch.Tensor], float]:
        run = train(
            recipe.replace(micro_batch=micro_batch),
            tiny_data,
            tmp_path / str(micro_batch),
            subset=10,
            progress=False,
            threads=1,
        )
        return load_file(run / "best.safetensors"), json.loads((run / "history.json").read_text())[0]

    (whole, whole_row), (parts, parts_row) = one_step(0), one_step(3)
    flat = lambda state: torch.cat([state[k].flatten() for k in sorted(start)])  # noqa: E731
    update = (flat(whole) - flat(start)).norm()
    assert update > 0 and (flat(parts) - flat(whole)).norm() <= 1e-4 * update
    assert parts_row["train_acc"] == whole_row["train_acc"]
    assert parts_row["train_loss"] == pytest.approx(whole_row["train_loss"], rel=1e-5)


def test_training_holds_its_images_as_bytes(tiny_data):
    """A quarter of float32's memory (150 MB rather than 600 MB for 49,000 images, and again for each epoch's
    augmented copy); each batch is scaled to [0, 1] on its way to the model."""
    split = train_module.prepare_split(tiny_data, 0.1, seed=0, subset=None)
    assert split.x_train.dtype == split.x_val.dtype == torch.uint8
    assert split.x_train.shape[1:] == (3, 32, 32) and split.x_train.is_contiguous(memory_format=torch.channels_last)
    batch = train_module._to_device(split.x_train[:4], torch.device("cpu"))
    assert batch.dtype == torch.float32 and 0 <= batch.min() and batch.max() <= 1
    assert torch.equal(batch * 255, split.x_train[:4].float())


def test_a_run_beside_busy_programs_records_its_thread_counts(tiny_data, tmp_path, monkeypatch):
    """Every epoch's starting count, and each change with the step it took effect at, in history and metrics."""
    from cifarkit.runtime import Threads

    monkeypatch.setattr(Threads, "WINDOW_S", 0.05)  # measure the load often: the epochs here last a second
    with busy_cpus():
        run = train(quick(epochs=2), tiny_data, tmp_path / "run", progress=False)
    rows = json.loads((run / "history.json").read_text())
    changes = [change for row in rows for change in row["thread_changes"]]
    steps = [step for step, _ in changes]
    assert steps == sorted(steps) and all(isinstance(row["threads"], int) for row in rows)
    if THREADS > 1:  # a busy program on every CPU leaves one CPU's worth to this run at most
        assert [count for _, count in changes][:1] == [1] or rows[0]["threads"] == 1
    machine = json.loads((run / "metrics.json").read_text())["machine"]
    assert machine["threads"]["fixed"] is None
    assert set(machine["threads"]["used"]) == {row["threads"] for row in rows} | {n for _, n in changes}
    assert machine["cpu_model"] and machine["torch"] == torch.__version__ and machine["precision"]
