"""Unpickling that can only build plain containers and numpy arrays.

The official CIFAR python batches are pickles (written by Python 2's cPickle). A pickle can name any
importable callable and call it, so an untrusted file could run code on load. This unpickler resolves
only the three numpy globals an ndarray pickle needs and refuses every other global.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from ..errors import DataError

# Found by reduction instead of by import: the function lives in numpy.core.multiarray (numpy 1.x,
# and the name the official batches use) or numpy._core.multiarray (numpy 2.x).
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` whose ``find_class`` knows only numpy's ndarray pieces."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name}: only numpy arrays and plain containers are allowed"
            ) from None


def safe_loads(payload: bytes, source: str) -> Any:
    """Unpickle ``payload`` with :class:`RestrictedUnpickler` (Python 2 strings become bytes).

    Args:
        payload: the pickle.
        source: name of the file it came from, for error messages.

    Raises:
        DataError: it is not a pickle, or it names a global outside the allowed few.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    except Exception as e:  # pickle raises many types on garbage input
        raise DataError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None
