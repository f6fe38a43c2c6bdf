"""Where to seed next: the least certain unseeded patches, spread over the slide."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from histosic.cluster.result import ClusterResult
from histosic.cluster.validation import IntArray
from histosic.errors import InvalidInputError

__all__ = ["suggest_seeds"]


def suggest_seeds(
    result: ClusterResult,
    n: int,
    *,
    grid: npt.ArrayLike | None = None,
    pool_factor: int = 10,
) -> IntArray:
    """Patches where a new seed would help most: least certain, not yet seeded, spread out.

    Takes the ``pool_factor * n`` least confident unseeded patches, then picks greedily the one
    that maximises uncertainty times distance to the seeds and to the picks so far (on the patch
    grid when ``grid`` is given, so suggestions land in different regions of the slide rather than
    in one uncertain blob).

    Parameters
    ----------
    result : ClusterResult
    n : int
        Number of suggestions (fewer when fewer patches are unseeded).
    grid : array-like of int of shape (n_patches, 2), optional
    pool_factor : int, default=10

    Returns
    -------
    ndarray of int of shape (<= n,)
        Patch indices, most useful first.
    """
    if n < 0:
        raise InvalidInputError(f"n must be >= 0, got {n}")
    conf = result.confidence
    unseeded = np.flatnonzero(result.seeds < 0)
    if n == 0 or unseeded.size == 0:
        return np.empty(0, dtype=np.int64)
    uncertainty = 1.0 - conf[unseeded]
    pool_size = min(unseeded.size, max(n * pool_factor, n))
    order = np.argsort(-uncertainty, kind="stable")[:pool_size]
    pool = unseeded[order]
    u = uncertainty[order]
    if grid is None:
        return pool[:n].astype(np.int64)
    G = np.asarray(grid, dtype=np.float64)
    if G.shape != (result.n_patches, 2):
        raise InvalidInputError(f"grid must have shape ({result.n_patches}, 2), got {G.shape}")
    seeded = np.flatnonzero(result.seeds >= 0)
    P = G[pool]
    if seeded.size:
        diff = P[:, None, :] - G[seeded][None, :, :]
        mind = np.sqrt((diff**2).sum(axis=2)).min(axis=1)
    else:
        mind = np.full(pool.size, np.inf)
    picks: list[int] = []
    scale = float(np.ptp(G, axis=0).max() or 1.0)
    for _ in range(min(n, pool.size)):
        spread = np.minimum(mind, scale) / scale if math.isfinite(scale) else np.ones_like(mind)
        value = (u + 1e-6) * (0.1 + spread)
        if picks:
            value[picks] = -np.inf
        j = int(np.argmax(value))
        picks.append(j)
        mind = np.minimum(mind, np.sqrt(((P - P[j]) ** 2).sum(axis=1)))
    return pool[picks].astype(np.int64)
