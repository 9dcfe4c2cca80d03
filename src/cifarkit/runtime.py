"""Process-wide settings that make PyTorch fast on a CPU.

PyTorch allocates every CPU tensor with ``malloc``. glibc serves blocks above its
mmap threshold (128 KiB, growing adaptively to at most 32 MiB) with fresh ``mmap``
calls and gives them back to the kernel when they are freed, so a training step
that allocates hundreds of megabytes of activations page-faults and zero-fills all
of it again on every step. On the 2-core machine a quarter of the CPU time went to
the kernel, and EfficientNet-Lite0 at 160 px trained at about 70 instead of 105
images/s (``python benchmarks/train_step.py --models efficientnet_lite0
--input-size 160 --batch-sizes 64 --formats channels_last`` with and without
``--default-malloc``). Raising the thresholds keeps freed memory in the process
for the next step; the price is that peak memory is not returned to the system
until the process ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # blocks up to 1 GiB are reused instead of mapped afresh


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed tensor memory instead of unmapping it; True if applied.

    A no-op (returning False) where the C library is not glibc, e.g. macOS or Windows.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
