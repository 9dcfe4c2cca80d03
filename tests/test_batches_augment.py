import numpy as np
import pytest
import torch

from cifarkit.data.augment import augment, cutout, translate
from cifarkit.data.batches import balanced_subset, batches, stratified_split, to_tensor
from cifarkit.errors import CifarkitError


def test_to_tensor_scales_and_transposes():
    x = np.zeros((2, 32, 32, 3), np.uint8)
    x[1, 5, 7] = (255, 0, 51)
    t = to_tensor(x)
    assert t.shape == (2, 3, 32, 32) and t.dtype == torch.float32
    assert t[1, :, 5, 7].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert t.is_contiguous(memory_format=torch.channels_last)


def test_stratified_split_holds_out_each_class_equally():
    y = np.repeat(np.arange(10), 100)
    keep, held = stratified_split(y, 0.1, seed=42)
    assert len(held) == 100 and len(keep) == 900
    assert np.bincount(y[held]).tolist() == [10] * 10
    assert not set(keep) & set(held)
    assert np.array_equal(held, stratified_split(y, 0.1, seed=42)[1])
    assert not np.array_equal(held, stratified_split(y, 0.1, seed=1)[1])


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


def test_cutout_zeros_a_square():
    x = torch.ones(10, 3, 32, 32)
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(1).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 81).all()


def test_batches_cover_everything_once():
    x, y = torch.arange(70).float().view(70, 1), torch.arange(70)
    got = list(batches(x, y, 32, shuffle_seed=3))
    assert [len(b[1]) for b in got] == [32, 32, 6]
    assert sorted(torch.cat([b[1] for b in got]).tolist()) == list(range(70))
    assert all(torch.equal(bx.view(-1).long(), by) for bx, by in got)  # labels stay with images
