import json

import pytest
import torch
from safetensors.torch import load_file

import cifarkit.train as train_module
from cifarkit.errors import CifarkitError
from cifarkit.recipes import Recipe, get_recipe
from cifarkit.runs import load_model
from cifarkit.train import train


def quick(**changes) -> Recipe:
    """seed_cnn3 on a tiny set: a real model, seconds per epoch."""
    return get_recipe("seed_cnn3").replace(**{"epochs": 3, **changes})


def test_run_directory_contents_and_learning(tiny_data, tmp_path):
    run = train(quick(epochs=4, lr=0.003), tiny_data, tmp_path / "run", progress=False)
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "history.json", "history.csv", "metrics.json", "curves.png",
            "best.safetensors", "last.safetensors", "resume.pt"} <= names
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(r["val_acc"] for r in history) > 0.5  # colour-coded classes are easy
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["params"] == 1_084_234 and metrics["epochs_run"] == 4
    assert metrics["best_val_acc"] == max(r["val_acc"] for r in history)
    assert (run / "history.csv").read_text().splitlines()[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc")


def test_best_weights_are_from_best_epoch(tiny_data, tmp_path):
    run = train(quick(epochs=3), tiny_data, tmp_path / "run", progress=False)
    model = load_model(run)
    assert set(model.state_dict()) == set(load_file(run / "best.safetensors"))


def test_same_seed_same_numbers(tiny_data, tmp_path):
    a = train(quick(epochs=2, flip=True, translate=2), tiny_data, tmp_path / "a", progress=False)
    b = train(quick(epochs=2, flip=True, translate=2), tiny_data, tmp_path / "b", progress=False)
    c = train(quick(epochs=2, flip=True, translate=2, seed=7), tiny_data, tmp_path / "c", progress=False)
    loss = lambda r: [h["train_loss"] for h in json.loads((r / "history.json").read_text())]  # noqa: E731
    assert loss(a) == loss(b)
    assert loss(a) != loss(c)
    wa, wb = load_file(a / "last.safetensors"), load_file(b / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_matches_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    recipe = quick(epochs=3, flip=True, translate=2, ema=0.9)
    full = train(recipe, tiny_data, tmp_path / "full", progress=False)

    real_epoch = train_module.train_one_epoch

    def dies_in_third_epoch(*args, **kwargs):
        if args[4] == 2:  # epoch index
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", dies_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tiny_data, tmp_path / "cut", progress=False)
    assert len(json.loads((tmp_path / "cut" / "history.json").read_text())) == 2
    monkeypatch.setattr(train_module, "train_one_epoch", real_epoch)

    cut = train(recipe, tiny_data, tmp_path / "cut", resume=True, progress=False)
    drop_time = lambda r: [{k: v for k, v in h.items() if k != "seconds"}  # noqa: E731
                           for h in json.loads((r / "history.json").read_text())]
    assert drop_time(cut) == drop_time(full)
    wf, wc = load_file(full / "last.safetensors"), load_file(cut / "last.safetensors")
    assert all(torch.equal(wf[k], wc[k]) for k in wf)


def test_refuses_to_overwrite_and_checks_resume(tiny_data, tmp_path):
    train(quick(epochs=1), tiny_data, tmp_path / "run", progress=False)
    with pytest.raises(CifarkitError, match="--resume"):
        train(quick(epochs=1), tiny_data, tmp_path / "run", progress=False)
    with pytest.raises(CifarkitError, match="different settings.*lr"):
        train(quick(epochs=1, lr=0.1), tiny_data, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CifarkitError, match="no checkpoint"):
        train(quick(epochs=1), tiny_data, tmp_path / "new", resume=True, progress=False)


def test_early_stopping(tiny_data, tmp_path):
    # lr 0 never improves on the first epoch's validation accuracy
    run = train(quick(epochs=10, lr=0.0, patience=2), tiny_data, tmp_path / "run", progress=False)
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 3


def test_schedule_and_label_smoothing_run(tiny_data, tmp_path):
    run = train(quick(epochs=2, optimizer="sgd", lr=0.05, nesterov=True, schedule="linear", warmup_epochs=0.5,
                      label_smoothing=0.2, cutout=8), tiny_data, tmp_path / "run", progress=False)
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["lr"] < 0.05 * 0.2  # decayed towards 0 at the end


def test_recipe_overrides_are_type_checked():
    r = get_recipe("seed_cnn3")
    assert r.replace(lr="0.01", epochs="3", flip="true").lr == 0.01
    with pytest.raises(CifarkitError, match="unknown recipe field"):
        r.replace(lr_typo=1)
    with pytest.raises(CifarkitError, match="expects int"):
        r.replace(epochs="many")


def test_notebook_recipes():
    for name, lr, epochs in [("seed_cnn1", 0.005, 10), ("seed_cnn2", 0.005, 10), ("seed_cnn3", 0.001, 15)]:
        r = get_recipe(name)
        assert (r.optimizer, r.lr, r.epochs, r.batch_size, r.val_fraction, r.seed) == ("adamax", lr, epochs, 32, 0.1, 42)
