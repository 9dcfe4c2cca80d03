"""Grad-CAM: a toy CNN that only looks at one image quadrant must be explained by that quadrant."""

import numpy as np
import pytest
import torch
from torch import nn

from cifarkit.report.gradcam import find_target_layer, grad_cam

SIZE = 16


class QuadrantNet(nn.Module):
    """Class 1 score = mean response of the top-right quadrant; class 0 score = its negative.

    A first conv (positive weights, no bias) sees the whole image; a fixed mask
    then zeroes everything outside the top-right quadrant, so the decision depends
    on that quadrant only. The stride-2 target conv makes Grad-CAM upsample 8x8 -> 16x16.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.features = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False)
        self.head = nn.Linear(4, 2, bias=False)
        for conv in (self.stem, self.features):
            nn.init.uniform_(conv.weight, 0.05, 0.15)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[..., : SIZE // 2, SIZE // 2 :] = 1.0  # top rows, right columns
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.stem(x)) * self.mask
        h = self.act(self.features(h))
        return self.head(h.mean(dim=(2, 3)))


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def test_default_layer_is_the_last_spatial_conv():
    assert find_target_layer(QuadrantNet().eval(), _images(1)) == "features"


def test_grad_cam_highlights_the_decisive_quadrant():
    torch.manual_seed(0)
    model = QuadrantNet().eval()
    maps = grad_cam(model, _images(), class_idx=1)
    assert maps.shape == (4, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    half = SIZE // 2
    inside = maps[:, :half, half:].mean()
    # two pixels of margin: the 3x3 kernels and the bilinear upsampling blur the quadrant border
    outside = np.concatenate([maps[:, half + 2 :, :].ravel(), maps[:, :, : half - 2].ravel()]).mean()
    assert inside > 0.5 and outside < 0.05
    assert maps[:, :half, half:].mean() > 5 * maps[:, half:, :half].mean()  # not transposed


def test_grad_cam_of_the_opposite_class_is_empty():
    # class 0's score falls with every activation: no positive evidence anywhere
    maps = grad_cam(QuadrantNet().eval(), _images(), class_idx=0)
    assert np.allclose(maps, 0.0)


def test_grad_cam_explains_the_predicted_class_by_default_and_accepts_a_layer_name():
    model = QuadrantNet().eval()
    images = _images()
    assert (model(images).argmax(1) == 1).all()
    by_default = grad_cam(model, images)
    assert np.allclose(by_default, grad_cam(model, images, target_layer="features", class_idx=1))
    assert np.allclose(by_default, grad_cam(model, images, target_layer=model.features, class_idx=torch.ones(4)))


def test_grad_cam_leaves_parameter_gradients_alone():
    model = QuadrantNet().eval()
    grad_cam(model, _images())
    assert all(p.grad is None for p in model.parameters())


class SqueezeNet(nn.Module):
    """A conv, then a squeeze-and-excitation style 1x1-output conv: the latter is not spatial."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Conv2d(4, 4, 1)  # defined first, executed last
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = h * torch.sigmoid(self.gate(h.mean(dim=(2, 3), keepdim=True)))
        return self.fc(h.mean(dim=(2, 3)))


def test_default_layer_skips_convs_with_a_single_pixel_output():
    assert find_target_layer(SqueezeNet().eval(), _images(1)) == "conv"


def test_model_without_convolutions_is_refused():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2)).eval()
    assert find_target_layer(mlp, _images(1)) is None
    with pytest.raises(ValueError, match="Conv2d"):
        grad_cam(mlp, _images())
