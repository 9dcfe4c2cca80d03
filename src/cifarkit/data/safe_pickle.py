"""Read the pickled CIFAR-10 python batches without letting a pickle run code.

``pickle.load`` calls whatever global a pickle names, so a tampered batch could run ``os.system``;
:class:`RestrictedUnpickler` resolves only the few numpy globals the official batches need.
"""

from __future__ import annotations

import pickle
from typing import Any, BinaryIO

import numpy as np

from cifarkit.errors import DataError

# The function numpy pickles arrays with (protocol < 5), taken from numpy itself
# so that it is right whether numpy calls its core package ``core`` or ``_core``.
_RECONSTRUCT = np.ndarray((0,), dtype=np.uint8).__reduce__()[0]

# (module, name) -> object. The official batches were written by numpy 1.x
# ("numpy.core"); batches re-pickled by numpy 2.x say "numpy._core".
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global; refuse any other instead of importing it."""
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}") from None


def load_pickle(stream: BinaryIO, name: str) -> Any:
    """Unpickle one CIFAR-10 python batch from ``stream`` (``name`` in errors: a :class:`DataError`).

    ``latin1`` decodes the official batches' Python 2 strings, so their keys load as ``str`` (Python 3's: ``bytes``).
    """
    try:
        return RestrictedUnpickler(stream, encoding="latin1").load()
    except Exception as exc:  # any failure to parse untrusted bytes means a bad file
        raise DataError(
            f"{name} is not a valid CIFAR-10 python batch ({exc}). The file is corrupt "
            "or not from the official data set: replace it with the one from the official "
            "cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html)."
        ) from exc
