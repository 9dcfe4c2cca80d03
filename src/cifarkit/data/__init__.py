"""CIFAR-10 data: sources (archives, batches, folders, download), cache, loader.

``load_cifar10()`` is the entry point; it returns a :class:`CIFAR10` of uint8
RGB images and int64 labels whose label ``i`` is ``CLASSES[i]``.
"""

from cifarkit.data.cache import default_cache_dir
from cifarkit.data.dataset import CIFAR10, CLASSES
from cifarkit.data.loader import load_cifar10

__all__ = ["CIFAR10", "CLASSES", "default_cache_dir", "load_cifar10"]
