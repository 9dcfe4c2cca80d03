"""Knowledge distillation and progressive resizing: the loss, the teacher cache, the schedule, resume."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import cifarkit.distill as distill_module
import cifarkit.train as train_module
from cifarkit.data.augment import augment, flipped, progressive_size, resize
from cifarkit.distill import teacher_logits, training_loss
from cifarkit.errors import CifarkitError
from cifarkit.inference import predict_logits
from cifarkit.recipes import get_recipe
from cifarkit.runs import load_model
from cifarkit.runtime import native_bf16
from cifarkit.train import _teacher_view, train
from conftest import THREADS
from interrupt import train_killed_in_epoch

CPU = torch.device("cpu")


def quick_teacher(data, out, seed=0):
    """A seed_cnn3 run of one epoch on the tiny set: a real, finished run to teach with."""
    return train(get_recipe("seed_cnn3").replace(epochs=1, seed=seed), data, out, progress=False)


def fast(**changes):
    """fast90 sized for the tiny set: one step per epoch of 270 images."""
    base = dict(epochs=4, batch_size=300, val_fraction=0.1, bf16=False)
    return get_recipe("fast90").replace(**{**base, **changes})


def test_distillation_loss_matches_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 2])
    t, w = 2.0, 0.25

    def softmax(row, temp=1.0):
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    hard = sum(-math.log(softmax(row)[y]) for row, y in zip(logits.tolist(), labels.tolist()))
    soft = sum(
        sum(p * (math.log(p) - math.log(q)) for p, q in zip(softmax(tr, t), softmax(sr, t)))
        for sr, tr in zip(logits.tolist(), teacher.tolist())
    )
    got = training_loss(logits, labels, teacher, weight=w, temperature=t)
    assert got.item() == pytest.approx((1 - w) * hard + w * t * t * soft, rel=1e-6)
    assert hard == pytest.approx(0.96422, abs=1e-4) and soft == pytest.approx(0.44137, abs=1e-4)  # worked on paper


def test_distillation_loss_without_teacher_weight_is_the_plain_loss():
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    teacher = torch.randn(8, 10)
    plain = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2, reduction="sum")
    assert torch.allclose(
        training_loss(logits, labels, teacher, weight=0.0, temperature=4.0, label_smoothing=0.2), plain
    )
    assert torch.allclose(training_loss(logits, labels, None, weight=0.9, temperature=4.0, label_smoothing=0.2), plain)
    # All weight on a teacher that agrees with the student: nothing to learn.
    assert training_loss(logits, labels, logits, weight=1.0, temperature=4.0).abs().item() < 1e-5


def test_teacher_cache_hits_on_a_second_run_and_keys_by_teacher(tiny_data, tmp_path, monkeypatch):
    one = quick_teacher(tiny_data, tmp_path / "one", seed=1)
    images, cache = tiny_data.x_train[:40], tmp_path / "cache"
    first = teacher_logits(one, images, "tiny-train", tiny_data.classes, cache)
    assert first.shape == (40, 2, 10) and first.dtype == np.float32
    model, bf16 = load_model(one), json.loads((one / "config.json").read_text())["bf16"] and native_bf16(CPU)
    assert np.allclose(first[:, 0], predict_logits(model, images, bf16=bf16), atol=1e-5)
    assert np.allclose(first[:, 1], predict_logits(model, images[:, :, ::-1].copy(), bf16=bf16), atol=1e-5)
    assert len(list(cache.iterdir())) == 1

    def no_teacher_runs(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs are cached")

    monkeypatch.setattr(distill_module, "load_model", no_teacher_runs)
    assert np.array_equal(teacher_logits(one, images, "tiny-train", tiny_data.classes, cache), first)
    monkeypatch.undo()

    two = quick_teacher(tiny_data, tmp_path / "two", seed=2)
    other = teacher_logits(two, images, "tiny-train", tiny_data.classes, cache)
    assert len(list(cache.iterdir())) == 2 and not np.allclose(other, first)


def test_teacher_view_follows_the_flips_of_augmentation():
    n, epoch, seed = 64, 3, 7
    teacher = torch.stack([torch.zeros(n, 10), torch.ones(n, 10)], dim=1)  # column 1: "mirrored"
    recipe = get_recipe("fast90").replace(seed=seed)  # alternating flip
    view = _teacher_view(teacher, recipe, epoch)
    mirrored = flipped(n, epoch=epoch, seed=seed, alternating=True)
    assert torch.equal(view[:, 0].bool(), mirrored)
    images = torch.rand(n, 3, 8, 8)
    out = augment(images, epoch=epoch, seed=seed, flip=True, alternating_flip=True)
    assert torch.equal(out[mirrored], images[mirrored].flip(-1)) and torch.equal(out[~mirrored], images[~mirrored])
    assert torch.equal(_teacher_view(teacher, recipe.replace(flip=False), epoch), teacher[:, 0])


def test_progressive_size_schedule_and_resize():
    sizes = [progressive_size(e, epochs=10, full=32, start=16, until=0.4) for e in range(6)]
    assert sizes == [16, 20, 24, 28, 32, 32]
    assert [progressive_size(e, epochs=10, full=32, start=20, until=0.25) for e in range(4)] == [20, 24, 28, 32]
    assert [progressive_size(e, epochs=2, full=32, start=0, until=0) for e in range(2)] == [32, 32]
    # The last epoch is at full size, however late the schedule would reach it.
    assert [progressive_size(e, epochs=3, full=32, start=16, until=0.99) for e in range(3)] == [16, 20, 32]
    images = torch.rand(5, 3, 32, 32)
    small = resize(images, 24)
    assert small.shape == (5, 3, 24, 24) and small.min() >= 0 and small.max() <= 1
    assert small.is_contiguous(memory_format=torch.channels_last)
    assert resize(images, 32) is images
    # Antialiased downscaling of a constant image keeps the constant.
    assert torch.allclose(resize(torch.full((1, 3, 32, 32), 0.3), 16), torch.tensor(0.3))


def test_progressive_resizing_trains_at_the_scheduled_sizes(tiny_data, tmp_path, monkeypatch):
    seen = []
    real_resize = train_module.resize

    def spy(images, size):
        out = real_resize(images, size)
        seen.append(tuple(out.shape[1:]))
        return out

    monkeypatch.setattr(train_module, "resize", spy)
    run = train(fast(resize_start=16, resize_until=0.75), tiny_data, tmp_path / "run", progress=False)
    sizes = [row["image_size"] for row in json.loads((run / "history.json").read_text())]
    assert sizes == [16, 20, 24, 32]  # 16 + 16 e / 3, down to a multiple of 4, full size from epoch 3
    assert seen == [(3, s, s) for s in sizes]


def test_student_with_teacher_and_progressive_resizing_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "cache"))
    teacher = quick_teacher(tiny_data, tmp_path / "teacher")
    recipe = fast(resize_start=16, resize_until=0.5, teacher=str(teacher), distill_weight=0.5)
    full = train(recipe, tiny_data, tmp_path / "full", progress=False, threads=THREADS)
    assert json.loads((full / "config.json").read_text())["teacher"] == str(teacher)
    assert len(list((tmp_path / "cache" / "teachers").iterdir())) == 1

    train_killed_in_epoch(recipe, tiny_data, tmp_path / "cut")
    cut = train(recipe, tiny_data, tmp_path / "cut", resume=True, progress=False)
    wf, wc = load_file(full / "last.safetensors"), load_file(cut / "last.safetensors")
    assert all(torch.equal(wf[k], wc[k]) for k in wf)
    keys = ("train_loss", "val_acc", "image_size")
    rows = [[tuple(r[k] for k in keys) for r in json.loads((run / "history.json").read_text())] for run in (full, cut)]
    assert rows[0] == rows[1]
    # The teacher changes what is learned: the same recipe without it ends elsewhere.
    plain = train(recipe.replace(teacher="", distill_weight=0.0), tiny_data, tmp_path / "plain", progress=False)
    wp = load_file(plain / "last.safetensors")
    assert not all(torch.equal(wf[k], wp[k]) for k in wf)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(distill_weight=0.5), "names none: add --set teacher=RUN_DIR"),
        (dict(teacher="somewhere", distill_weight=0.0), "distill_weight is 0"),
        (dict(teacher="nowhere", distill_weight=0.5), "not a run directory"),
        (dict(distill_weight=1.5, teacher="x"), "distill_weight.*in \\[0, 1\\]"),
        (dict(distill_temperature=0.0), "distill_temperature"),
        (dict(resize_start=16, resize_until=0), "needs resize_until in \\(0, 1\\)"),
        (dict(resize_start=16, resize_until=1.5), "resize_until.*in \\[0, 1\\)"),
        (dict(resize_start=32, resize_until=0.5), "below the image side 32"),
    ],
)
def test_bad_distillation_and_resizing_settings_are_refused_before_writing(tiny_data, tmp_path, changes, message):
    with pytest.raises(CifarkitError, match=message):
        train(fast(**changes), tiny_data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_teacher_without_weights_or_with_other_classes_is_refused(tiny_data, tmp_path):
    teacher = quick_teacher(tiny_data, tmp_path / "teacher")
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "classes": [f"c{i}" for i in range(10)]}))
    with pytest.raises(CifarkitError, match="trained on classes"):
        train(fast(teacher=str(teacher), distill_weight=0.5), tiny_data, tmp_path / "run", progress=False)
    (teacher / "best.safetensors").unlink()
    with pytest.raises(CifarkitError, match="no trained weights"):
        train(fast(teacher=str(teacher), distill_weight=0.5), tiny_data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
