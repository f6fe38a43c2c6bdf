"""Checks of the clustering inputs (features and seeds), and the array types the package uses."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from histosic.errors import InvalidInputError

__all__ = ["UNLABELLED", "FloatArray", "IntArray", "check_features", "check_seeds"]

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.int64]

#: The seed value of a patch without a seed.
UNLABELLED = -1


def check_features(X: npt.ArrayLike) -> FloatArray:
    """``X`` as a C-contiguous float32 or float64 matrix of finite values.

    Parameters
    ----------
    X : array-like of shape (n_patches, dim)
        Numeric features. float32 and float64 are kept; other floats become float32, integers
        float64.

    Returns
    -------
    ndarray of shape (n_patches, dim)

    Raises
    ------
    InvalidInputError
        Not 2-D, empty, not numeric, or with NaN/inf values (the message names the first bad row).
    """
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise InvalidInputError(
            f"X must be a 2-D array (n_patches, dim), got shape {arr.shape}; "
            "reshape single-feature data with X.reshape(-1, 1)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(f"X is empty (shape {arr.shape}); embed at least one patch")
    if not np.issubdtype(arr.dtype, np.floating):
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise InvalidInputError(f"X must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    elif arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    # One summed pass instead of a full boolean mask: the sum of finite values is finite unless
    # it overflows, and only then (or with a real NaN/inf) do we pay for the exact search.
    row_sums = arr @ np.ones(arr.shape[1], dtype=arr.dtype)  # NaN/inf propagate; one fast pass
    if not np.isfinite(row_sums.sum()) and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise InvalidInputError(
            f"X has NaN or infinite values in {bad.size} row(s) (first: row {int(bad[0])}); "
            "remove or re-embed those patches"
        )
    return np.ascontiguousarray(arr)


def check_seeds(seeds: npt.ArrayLike, n: int) -> IntArray:
    """``seeds`` as an int64 vector of length ``n``: class ids >= 0, or -1 for unlabelled.

    Parameters
    ----------
    seeds : array-like of shape (n,)
        Integer class ids (integral floats are accepted).
    n : int
        The number of patches.

    Returns
    -------
    ndarray of int64 of shape (n,)

    Raises
    ------
    InvalidInputError
        Wrong shape, non-integer values, or ids below -1.
    """
    s = np.asarray(seeds)
    if s.ndim != 1 or s.shape[0] != n:
        raise InvalidInputError(
            f"seeds must be a 1-D array of length n_patches={n} (-1 = unlabelled), "
            f"got shape {s.shape}"
        )
    if s.size and not np.issubdtype(s.dtype, np.integer):
        if (
            np.issubdtype(s.dtype, np.floating)
            and np.all(np.isfinite(s))
            and np.all(s == np.round(s))
        ):
            s = s.astype(np.int64)
        else:
            raise InvalidInputError(
                f"seeds must be integer class ids (-1 = unlabelled), got dtype {s.dtype}"
            )
    s = s.astype(np.int64, copy=False)
    if s.size and s.min() < UNLABELLED:
        bad = int(s[s < UNLABELLED][0])
        raise InvalidInputError(f"seed class ids must be >= 0 (or -1 for unlabelled), got {bad}")
    return s
