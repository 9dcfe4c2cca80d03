"""Dropout whose mask is cheap to draw on a CPU.

PyTorch's CPU dropout draws one float per element from a scalar Mersenne Twister, the notebook CNNs' largest cost
after convolutions and dense layers (``benchmarks/epoch_time.py``). Here one 64-bit draw masks four elements with
vectorised float operations; other devices run nn.Dropout's own forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_LEVELS = 1 << 16  # the drop probability is a whole number of 1/65,536ths


class Dropout(nn.Dropout):
    """nn.Dropout (zero each element with probability ``p``, scale the rest by 1/(1-p)), cheaper on the CPU.

    On the CPU ``p`` is rounded to a multiple of 1/65,536, the kept elements scaled by that probability's
    reciprocal; the mask comes from torch's default generator, so ``torch.manual_seed`` repeats it.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        dropped = round(self.p * _LEVELS)
        if dropped >= _LEVELS:
            return x * 0
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, (-(-n // 4),), dtype=torch.int64)
        bits = torch.empty_like(x, dtype=torch.int16)  # x's layout (channels-last too), so the product is fast
        bits.as_strided((n,), (1,)).copy_(words.view(torch.int16)[:n])
        # bits are uniform over [-32768, 32767]: keep an element when its bits are >= -32768 + dropped,
        # i.e. with probability 1 - dropped / 65536; (bits - (that - 1)) clamped to [0, 1] is the 0/1 mask.
        # In float32 whatever x's dtype: bfloat16 cannot hold every 16-bit integer.
        keep = bits.float().sub_(dropped - _LEVELS // 2 - 1).clamp_(0, 1)
        return x * keep.mul_(_LEVELS / (_LEVELS - dropped)).to(x.dtype)


def dropouts(p: float) -> list[nn.Module]:
    """A :class:`Dropout` of ``p`` to splice into a layer list, or nothing for 0."""
    return [Dropout(p)] if p > 0 else []
