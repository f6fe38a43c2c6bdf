"""NumPy arrays to and from the ``histosic.v1.NDArray`` message (raw little-endian bytes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from histosic.api.v1 import common_pb2
from histosic.errors import InvalidInputError

__all__ = ["ALLOWED_DTYPES", "from_ndarray", "to_ndarray"]

ALLOWED_DTYPES = ("float16", "float32", "float64", "int32", "int64", "uint8")


def to_ndarray(arr: npt.ArrayLike, dtype: str | None = None) -> common_pb2.NDArray:
    """Pack an array as C-order little-endian bytes with its shape and dtype name."""
    a = np.asarray(arr)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    name = a.dtype.name
    if name not in ALLOWED_DTYPES:
        raise InvalidInputError(f"dtype {name!r} cannot be sent; use one of {ALLOWED_DTYPES}")
    data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return common_pb2.NDArray(data=data.tobytes(), shape=list(a.shape), dtype=name)


def from_ndarray(msg: common_pb2.NDArray) -> npt.NDArray[Any]:
    """Unpack an ``NDArray`` message (checks that the byte count matches the shape)."""
    if msg.dtype not in ALLOWED_DTYPES:
        raise InvalidInputError(f"NDArray dtype {msg.dtype!r} is not one of {ALLOWED_DTYPES}")
    dt = np.dtype(msg.dtype).newbyteorder("<")
    shape = tuple(int(s) for s in msg.shape)
    if any(s < 0 for s in shape):
        raise InvalidInputError(f"NDArray shape {shape} has a negative size")
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if expected != len(msg.data):
        raise InvalidInputError(
            f"NDArray of shape {shape} and dtype {msg.dtype} needs {expected} bytes, got "
            f"{len(msg.data)}"
        )
    return np.frombuffer(msg.data, dtype=dt).reshape(shape).astype(msg.dtype, copy=False)
