"""Dropout whose mask is cheap to draw on a CPU.

PyTorch's CPU dropout draws one random float per element with a scalar
Mersenne-Twister generator, then divides and multiplies: in the notebook's
CNN 3 at batch 32 that was the largest cost after the convolutions and the
dense layer (a ``torch.profiler`` trace on a 2-core AMD EPYC, AVX2, float32;
``benchmarks/epoch_time.py`` measures what replacing it gives). Here one 64-bit
draw gives the masks of four elements (16 random bits each), and the mask is
built with float operations that vectorise. On other devices (CUDA's dropout
is a fused kernel) nn.Dropout's own forward runs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_LEVELS = 1 << 16  # the drop probability is a whole number of 1/65,536ths


class Dropout(nn.Dropout):
    """nn.Dropout (zero each element with probability ``p``, scale the rest by 1/(1-p)), cheaper on the CPU.

    On the CPU ``p`` is rounded to the nearest multiple of 1/65,536 (0.2
    becomes 0.199997), and the kept elements are scaled by the reciprocal
    of the probability actually used, so the expected output is the input,
    exactly as with nn.Dropout. The mask comes from torch's default
    generator, so ``torch.manual_seed`` repeats it.
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
