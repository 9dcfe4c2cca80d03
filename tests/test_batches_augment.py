import math

import numpy as np
import pytest
import torch

import cifarkit.data.augment as augment_module
from cifarkit.data.augment import augment, cutout, flipped, resize, translate
from cifarkit.data.batches import balanced_subset, batches, pixels, stratified_split, to_tensor, unit_range
from cifarkit.errors import CifarkitError


def test_to_tensor_scales_and_transposes():
    x = np.zeros((2, 32, 32, 3), np.uint8)
    x[1, 5, 7] = (255, 0, 51)
    t = to_tensor(x)
    assert t.shape == (2, 3, 32, 32) and t.dtype == torch.float32
    assert t[1, :, 5, 7].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert t.is_contiguous(memory_format=torch.channels_last)


def test_pixels_are_a_byte_view_that_unit_range_scales_as_to_tensor_does():
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    p = pixels(x)
    assert p.shape == (4, 3, 32, 32) and p.dtype == torch.uint8 and p.is_contiguous(memory_format=torch.channels_last)
    assert np.shares_memory(p.numpy(), x)  # a view: training's images cost their bytes, once
    assert torch.equal(unit_range(p), to_tensor(x))
    features = torch.rand(3, 8)
    assert unit_range(features) is features


def test_augmenting_bytes_then_scaling_equals_scaling_then_augmenting():
    """Training augments uint8 pixels and scales each batch afterwards: mirror, shift and cutout move or zero
    pixels, so the order makes no difference, bit for bit."""
    x = pixels(np.random.default_rng(1).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8))
    kw = dict(epoch=2, seed=7, flip=True, alternating_flip=False, pad=2, cutout_size=5)
    assert torch.equal(unit_range(augment(x, **kw)), augment(unit_range(x), **kw))


def test_resizing_a_batch_equals_resizing_the_set():
    images = torch.rand(20, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert torch.equal(resize(images, 20)[7:12], resize(images[7:12], 20))


def test_stratified_split_holds_out_each_class_equally():
    y = np.repeat(np.arange(10), 100)
    keep, held = stratified_split(y, 0.1, seed=42)
    assert len(held) == 100 and len(keep) == 900
    assert np.bincount(y[held]).tolist() == [10] * 10
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(1000))
    assert np.array_equal(held, stratified_split(y, 0.1, seed=42)[1])
    assert not np.array_equal(held, stratified_split(y, 0.1, seed=1)[1])


@pytest.mark.parametrize("seed", range(6))
def test_stratified_split_draws_what_scikit_learn_drew(seed):
    """Runs split by scikit-learn's train_test_split before keep their split: the same images, every time.

    Uneven classes and fractions whose shares do not divide evenly, so that ties are drawn at random too.
    """
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    labels = rng.choice(10, size=int(rng.integers(60, 400)), p=rng.dirichlet(np.ones(10) * 3))
    labels = np.concatenate([labels, np.arange(10), np.arange(10)])  # every class at least twice
    for fraction in (0.02, 0.1, 0.25, 1 / 3, 0.5, 0.9):
        if math.ceil(fraction * len(labels)) < 10 or len(labels) - math.ceil(fraction * len(labels)) < 10:
            continue
        everything = np.arange(len(labels))
        keep, held = train_test_split(everything, test_size=fraction, stratify=labels, random_state=seed)
        ours = stratified_split(labels, fraction, seed)
        assert np.array_equal(ours[0], np.sort(keep)) and np.array_equal(ours[1], np.sort(held)), fraction


def test_stratified_split_of_nothing_and_of_too_little():
    y = np.arange(30) % 10
    keep, held = stratified_split(y, 0.0, seed=0)
    assert keep.tolist() == list(range(30)) and held.tolist() == []
    with pytest.raises(CifarkitError, match="val_fraction=0"):
        stratified_split(y, 0.1, seed=0)  # 3 held-out images cannot cover 10 classes
    with pytest.raises(CifarkitError, match="validation fraction"):
        stratified_split(y, 1.0, seed=0)


def test_balanced_subset():
    y = np.repeat(np.arange(10), 50)
    idx = balanced_subset(y, 105, seed=0)
    assert len(idx) == 105 and len(set(idx)) == 105
    assert sorted(np.bincount(y[idx]).tolist()) == [10] * 5 + [11] * 5
    with pytest.raises(CifarkitError, match="--subset"):
        balanced_subset(y, 0, seed=0)


def test_augment_keeps_shapes_and_is_seeded():
    x = torch.rand(64, 3, 32, 32)
    a = augment(x, epoch=3, seed=1, flip=True, pad=2, cutout_size=8)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, augment(x, epoch=3, seed=1, flip=True, pad=2, cutout_size=8))
    assert not torch.equal(a, augment(x, epoch=4, seed=1, flip=True, pad=2, cutout_size=8))
    assert not torch.equal(a, augment(x, epoch=3, seed=2, flip=True, pad=2, cutout_size=8))


def test_flip_only_mirrors_some_images_exactly():
    x = torch.rand(200, 3, 32, 32)
    a = augment(x, epoch=0, seed=0, flip=True)
    flipped = torch.tensor([torch.equal(a[i], x[i].flip(-1)) for i in range(200)])
    same = torch.tensor([torch.equal(a[i], x[i]) for i in range(200)])
    assert torch.all(flipped | same) and 60 < flipped.sum() < 140


def test_alternating_flip_complements_previous_epoch():
    x = torch.rand(100, 3, 32, 32)
    e0 = augment(x, epoch=0, seed=5, flip=True, alternating_flip=True)
    e1 = augment(x, epoch=1, seed=5, flip=True, alternating_flip=True)
    f0 = torch.tensor([torch.equal(e0[i], x[i].flip(-1)) for i in range(100)])
    f1 = torch.tensor([torch.equal(e1[i], x[i].flip(-1)) for i in range(100)])
    assert torch.all(f0 ^ f1)


def test_translate_shifts_by_at_most_pad():
    x = torch.zeros(500, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # a single bright pixel in the centre
    out = translate(x, 2, torch.Generator().manual_seed(0))
    pos = out[:, 0].flatten(1).argmax(1)
    ys, xs = pos // 9, pos % 9
    assert ((ys - 4).abs() <= 2).all() and ((xs - 4).abs() <= 2).all()
    assert len(set(zip(ys.tolist(), xs.tolist()))) == 25  # every shift occurs


@pytest.mark.parametrize("size", [8, 5, 1, 32])
def test_cutout_zeros_exactly_a_size_by_size_square(size):
    x = torch.ones(200, 3, 32, 32)
    zeroed = (cutout(x, size, torch.Generator().manual_seed(0)) == 0).all(1)  # (n, h, w), all channels zero
    assert zeroed.flatten(1).sum(1).tolist() == [size * size] * 200
    rows, cols = zeroed.any(2), zeroed.any(1)  # which rows / columns hold zeros
    assert rows.sum(1).tolist() == [size] * 200 and cols.sum(1).tolist() == [size] * 200  # one square, not a ring
    tops = rows.float().argmax(1)
    assert tops.min() == 0 and tops.max() == 32 - size  # it reaches both borders, and stays inside


def test_cutout_larger_than_the_image_is_refused():
    with pytest.raises(CifarkitError, match="cutout 9 is larger than the 8x8 images"):
        cutout(torch.ones(2, 3, 8, 8), 9, torch.Generator().manual_seed(0))


def test_batches_cover_everything_once():
    x, y = torch.arange(70).float().view(70, 1), torch.arange(70)
    got = list(batches(x, y, 32, shuffle_seed=3))
    assert [len(b[1]) for b in got] == [32, 32, 6]
    assert sorted(torch.cat([b[1] for b in got]).tolist()) == list(range(70))
    assert all(torch.equal(bx.view(-1).long(), by) for bx, by in got)  # labels stay with images


@pytest.mark.parametrize("chunk", [3, 4096])
def test_augment_is_each_image_mirrored_then_cropped_from_its_reflect_padding(monkeypatch, chunk):
    """The definition, image by image, whatever the chunk size: mirror if drawn, reflect-pad by 2, crop at the
    drawn shift (dx for all images drawn first, then dy, from the epoch's generator)."""
    monkeypatch.setattr(augment_module, "CHUNK", chunk)
    images = torch.rand(10, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    before = images.clone()
    out = augment(images, epoch=3, seed=5, flip=True, alternating_flip=True, pad=2)
    mirror = flipped(10, epoch=3, seed=5, alternating=True)
    g = torch.Generator().manual_seed(5 * 100_019 + 3)
    dx, dy = torch.randint(0, 5, (10,), generator=g), torch.randint(0, 5, (10,), generator=g)
    for i in range(10):
        x = images[i].flip(-1) if mirror[i] else images[i]
        padded = torch.nn.functional.pad(x[None], (2, 2, 2, 2), mode="reflect")[0]
        assert torch.equal(out[i], padded[:, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8])
    assert torch.equal(images, before)  # the input is left as it was
