"""Lloyd iterations, k-means++ and Seeded/Constrained-KMeans (Basu, Banerjee & Mooney 2002).

Two exact Lloyd kernels: :func:`lloyd` for any number of centres (one fused pass over the matrix
per iteration) and :func:`lloyd2` for two centres (Hamerly-style bounds: after the first pass only
the points near the boundary are looked at). Both follow the same stopping rule and give the same
labels up to floating-point rounding; :func:`seeded_kmeans` picks the faster one. Everything here
is numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from histosic.cluster.validation import UNLABELLED, FloatArray, IntArray
from histosic.errors import InvalidInputError

__all__ = [
    "DEFAULT_TOL",
    "centroid_confidence",
    "col_sums",
    "kmeans_pp_init",
    "lloyd",
    "lloyd2",
    "seeded_kmeans",
    "seeded_split",
    "sq_norms",
]

# Rows per block in the fused Lloyd pass: a block of 512-d float32 rows stays in cache while it is
# used twice (distances, then centre sums), so each iteration streams X from memory once.
_BLOCK_BYTES = 1 << 21

#: Default centre-shift tolerance of the Lloyd kernels, relative to the data's mean feature
#: variance: scikit-learn's KMeans default (see lloyd).
DEFAULT_TOL = 1e-4


def sq_norms(X: FloatArray) -> npt.NDArray[np.float64]:
    """Squared row norms (in X's precision: a float64 pass over X costs twice as much).

    NumPy 2's ``vecdot`` ufunc is a vectorised dot product per row, faster than ``einsum``.
    """
    vecdot = getattr(np, "vecdot", None)
    if vecdot is not None:
        return np.asarray(vecdot(X, X), dtype=np.float64)
    return np.asarray(np.einsum("ij,ij->i", X, X), dtype=np.float64)


def col_sums(X: FloatArray) -> npt.NDArray[np.float64]:
    """Column sums of ``X`` in float64 (one matrix-vector pass)."""
    return np.asarray(np.ones(X.shape[0], dtype=X.dtype) @ X, dtype=np.float64)


def _rows_sum(
    X: FloatArray, mask: npt.NDArray[np.bool_], total: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Sum of the rows where ``mask`` holds, in float64: a gather of the smaller side when it is
    small (a pass over that side only), else one matrix-vector pass over all of ``X``."""
    count = int(np.count_nonzero(mask))
    n = X.shape[0]
    if count <= n // 8:
        return col_sums(X[mask]) if count else np.zeros(X.shape[1], dtype=np.float64)
    if n - count <= n // 8:
        return total - col_sums(X[~mask])
    return np.asarray(mask.astype(X.dtype) @ X, dtype=np.float64)


def _mean_variance(sq_total: float, mean: npt.NDArray[np.float64], n: int, d: int) -> float:
    """Mean over features of the variance, from the sum of squares and the column means."""
    return max(sq_total / max(n, 1) - float(mean @ mean), 0.0) / max(d, 1)


def _shift(C: FloatArray, C_prev: FloatArray) -> float:
    """Squared centre shift, summed over all centres, in float64."""
    return float(((C.astype(np.float64) - C_prev.astype(np.float64)) ** 2).sum())


def lloyd(
    X: FloatArray,
    centers: FloatArray,
    *,
    pinned_idx: IntArray | None = None,
    pinned_lab: IntArray | None = None,
    max_iter: int = 100,
    tol: float = DEFAULT_TOL,
) -> tuple[IntArray, FloatArray, int]:
    """Lloyd iterations from ``centers``; returns labels, centres and iterations run.

    Each iteration is one fused pass over ``X`` in cache-sized blocks: squared distances via a
    matrix product (``|c|^2 - 2 x.c``, the ``|x|^2`` term is constant per row), assignment, and the
    per-cluster sums for the next centres. An empty cluster keeps its previous centre (Basu et
    al.). Pinned points (Constrained-KMeans) keep their given cluster.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32 or float64, C-contiguous
    centers : ndarray of shape (k, d)
        Initial centres.
    pinned_idx, pinned_lab : ndarray of int, optional
        Rows that keep the given cluster index (Constrained-KMeans).
    max_iter : int, default=100
        Maximum number of iterations (assignment + centre update).
    tol : float, default=DEFAULT_TOL (1e-4)
        Iteration ``i`` assigns labels ``L_i`` from the centres ``C_{i-1}`` and moves the centres to
        the means ``C_i``; the iterations stop when ``L_i == L_{i-1}`` (a fixed point: no label
        changed) or when ``sum |C_i - C_{i-1}|^2 <= tol * v``, ``v`` the mean over features of the
        variance of ``X``: scikit-learn's rule, so ``KMeans(tol=t)`` and ``tol=t`` here stop
        alike, and the rule does not depend on the feature scale. ``tol=0`` runs to the fixed
        point. The default is scikit-learn's: splitting a homogeneous cluster (SIC's unseeded
        re-splits) can creep on for a hundred iterations with hardly a centre moving, each of
        them a pass over the cluster, and the seeded splits stop at the fixed point long before
        the tolerance matters.

    Returns
    -------
    labels : ndarray of int64 of shape (n,)
        ``L_i`` of the last iteration.
    centers : ndarray of shape (k, d)
        ``C_i`` of the last iteration (the means of ``labels``), in X's dtype.
    n_iter : int
    """
    n, d = X.shape
    k = centers.shape[0]
    C = np.asarray(centers, dtype=X.dtype).copy()
    labels = np.full(n, -1, dtype=np.int64)
    block = max(256, _BLOCK_BYTES // max(d * X.dtype.itemsize, 1))
    eye = np.eye(k, dtype=X.dtype)
    n_iter = 0
    tol_abs = 0.0
    for n_iter in range(1, max_iter + 1):
        half_sq = 0.5 * np.einsum("ij,ij->i", C, C)
        sums = np.zeros((k, d), dtype=np.float64)
        new = np.empty(n, dtype=np.int64)
        sq_total = 0.0
        for start in range(0, n, block):
            Xb = X[start : start + block]
            lab = np.argmax(Xb @ C.T - half_sq, axis=1)
            new[start : start + block] = lab
            if n_iter == 1 and tol > 0:  # the block is in cache: its squares cost no pass
                sq_total += float(np.einsum("ij,ij->", Xb, Xb, dtype=np.float64))
            if pinned_idx is None:
                sums += eye[lab].T @ Xb
        if pinned_idx is not None and pinned_lab is not None:
            new[pinned_idx] = pinned_lab
            for start in range(0, n, block):
                Xb = X[start : start + block]
                sums += eye[new[start : start + block]].T @ Xb
        if n_iter == 1 and tol > 0:
            mean = sums.sum(axis=0) / max(n, 1)
            tol_abs = tol * _mean_variance(sq_total, mean, n, d)
        counts = np.bincount(new, minlength=k)
        nonempty = counts > 0
        C_prev = C.copy()
        C[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(X.dtype)
        changed = not np.array_equal(new, labels)
        labels = new
        if not changed or _shift(C, C_prev) <= tol_abs:
            break
    return labels, C, n_iter


def lloyd2(
    X: FloatArray,
    centers: FloatArray,
    *,
    norms: FloatArray | None = None,
    total: npt.NDArray[np.float64] | None = None,
    pinned_idx: IntArray | None = None,
    pinned_lab: IntArray | None = None,
    max_iter: int = 100,
    tol: float = DEFAULT_TOL,
) -> tuple[IntArray, FloatArray, int]:
    """Exact two-cluster Lloyd iterations with Hamerly-style bounds (the same answer as `lloyd`).

    With two centres, the assignment is the sign of the margin ``x.w - b`` with ``w = c1 - c0`` and
    ``b = (|c1|^2 - |c0|^2) / 2``. When the centres move, a margin changes by at most
    ``|x| |dw| + |db|``, so a point whose known margin exceeds that bound cannot change cluster and
    is not looked at again. The first iteration streams all of ``X``; later ones touch only the
    points near the boundary (or stream ``X`` again when most points are), and the centre sums are
    updated from the points that moved.

    Parameters and returns as :func:`lloyd` (the same stopping rule, ``tol`` and iteration count),
    plus ``norms`` (the row norms ``|x|``) and ``total`` (the column sums, :func:`col_sums`) when
    the caller has them.
    """
    n = X.shape[0]
    if norms is None:
        norms = np.sqrt(sq_norms(X))
    c = np.asarray(centers, dtype=np.float64).copy()
    w = c[1] - c[0]
    b = 0.5 * (c[1] @ c[1] - c[0] @ c[0])
    # Whole-matrix vector products: BLAS streams X at full bandwidth for a matrix-vector
    # product, while a 2-row matrix-matrix product runs at about half of it.
    margin = (X @ w.astype(X.dtype)).astype(np.float64) - b
    lab = margin > 0
    pinned_mask = None
    if pinned_idx is not None and pinned_lab is not None:
        lab[pinned_idx] = pinned_lab == 1
        pinned_mask = np.zeros(n, dtype=bool)
        pinned_mask[pinned_idx] = True
    if total is None:
        total = col_sums(X)
    s1 = _rows_sum(X, lab, total)
    bound = np.abs(margin)
    if pinned_mask is not None:
        bound[pinned_mask] = np.inf
    n1 = int(lab.sum())
    tol_abs = tol * _mean_variance(float(norms @ norms), total / max(n, 1), n, X.shape[1])
    n_iter = 1
    for n_iter in range(1, max_iter + 1):
        # lab holds L_n (assigned from C_{n-1}); move the centres to C_n, its means.
        c_prev = c.copy()
        n0 = n - n1
        if n1 > 0:
            c[1] = s1 / n1
        if n0 > 0:
            c[0] = (total - s1) / n0
        if n_iter == max_iter or _shift(c, c_prev) <= tol_abs:
            break
        w_new = c[1] - c[0]
        b_new = 0.5 * (c[1] @ c[1] - c[0] @ c[0])
        dw = float(np.linalg.norm(w_new - w))
        db = abs(float(b_new - b))
        w, b = w_new, b_new
        # L_{n+1}: only points whose bound allows a sign change can move.
        bound -= norms * dw + db
        cand = np.flatnonzero(bound <= 0)
        if cand.size == 0:
            # L_{n+1} == L_n: a fixed point. `lloyd` finds it in iteration n + 1, so count it.
            n_iter += 1
            break
        if cand.size > n // 4:
            # Most points are near the boundary (a homogeneous cluster being split): one
            # contiguous pass is cheaper than gathering them.
            cand = np.arange(n)
            m = X @ w.astype(X.dtype) - b
        else:
            m = X[cand] @ w.astype(X.dtype) - b
        bound[cand] = np.abs(m)
        new_lab = m > 0
        if pinned_mask is not None:
            new_lab[pinned_mask[cand]] = lab[cand][pinned_mask[cand]]
        moved = cand[new_lab != lab[cand]]
        if moved.size == 0:
            n_iter += 1  # a fixed point, as above
            break
        to1 = moved[~lab[moved]]
        to0 = moved[lab[moved]]
        if to1.size:
            s1 += X[to1].sum(axis=0, dtype=np.float64)
        if to0.size:
            s1 -= X[to0].sum(axis=0, dtype=np.float64)
        lab[moved] = ~lab[moved]
        n1 += int(to1.size) - int(to0.size)
    return lab.astype(np.int64), c.astype(X.dtype), n_iter


def kmeans_pp_init(
    X: FloatArray,
    k: int,
    rng: np.random.RandomState,
    row_sq_norms: FloatArray | None = None,
) -> FloatArray:
    """Greedy k-means++ initial centres (for unseeded splits), as scikit-learn's KMeans does.

    Each new centre is the best of ``2 + int(log(k))`` candidates drawn with probability
    proportional to the squared distance to the chosen centres (the one that lowers the total
    most): Arthur & Vassilvitskii's greedy variant, scikit-learn's default. It starts 2-means on
    a homogeneous cluster (SIC's unseeded re-splits) closer to the answer than one draw, so Lloyd
    needs fewer iterations. One matrix-vector pass per candidate.
    """
    n = X.shape[0]
    sq = np.einsum("ij,ij->i", X, X, dtype=np.float64) if row_sq_norms is None else row_sq_norms
    n_trials = 2 + int(np.log(k))

    def sqdist(i: int) -> npt.NDArray[np.float64]:
        xi = X[i]
        return np.asarray(np.maximum(sq - 2.0 * (X @ xi) + float(xi @ xi), 0.0))

    first = int(rng.randint(n))
    chosen = [first]
    d2 = sqdist(first)
    for _ in range(1, k):
        cum = np.cumsum(d2)
        total = float(cum[-1])
        if total <= 0:
            chosen.append(int(rng.randint(n)))
            continue
        draws = np.searchsorted(cum, rng.random_sample(n_trials) * total)
        best_d2 = d2
        best_idx, best_total = -1, np.inf
        for idx in np.minimum(draws, n - 1):
            cand = np.minimum(d2, sqdist(int(idx)))
            cand_total = float(cand.sum())
            if cand_total < best_total:
                best_idx, best_total, best_d2 = int(idx), cand_total, cand
        chosen.append(best_idx)
        d2 = best_d2
    return np.asarray(X[chosen], dtype=X.dtype)


def seeded_kmeans(
    X: FloatArray,
    s: IntArray,
    n_clusters: int,
    *,
    constrained: bool,
    max_iter: int,
    rng: np.random.RandomState,
    norms: FloatArray | None = None,
    total: npt.NDArray[np.float64] | None = None,
    tol: float = DEFAULT_TOL,
) -> tuple[IntArray, FloatArray, IntArray, int]:
    """Seeded/Constrained-KMeans on validated data; returns labels, centres, seed classes, n_iter.

    Cluster ``i`` starts at the mean of the ``i``-th smallest seed class; clusters beyond the seeded
    classes start from k-means++. Two clusters run :func:`lloyd2`, more :func:`lloyd`.
    """
    n = X.shape[0]
    classes = np.unique(s[s >= 0])
    k = max(int(n_clusters), classes.size)
    if n < k:
        raise InvalidInputError(
            f"n_samples={n} is smaller than the number of clusters {k}; "
            "give more patches or fewer clusters"
        )
    centers = np.empty((k, X.shape[1]), dtype=X.dtype)
    for i, c in enumerate(classes):
        centers[i] = X[s == c].mean(axis=0)
    if k > classes.size:
        sq = None if norms is None else norms**2
        centers[classes.size :] = kmeans_pp_init(X, k - classes.size, rng, sq)
    pinned_idx = pinned_lab = None
    if constrained and classes.size:
        pinned_idx = np.flatnonzero(s >= 0)
        pinned_lab = np.searchsorted(classes, s[pinned_idx]).astype(np.int64)
    if k == 2:
        labels, C, n_iter = lloyd2(
            X,
            centers,
            norms=norms,
            total=total,
            pinned_idx=pinned_idx,
            pinned_lab=pinned_lab,
            max_iter=max_iter,
            tol=tol,
        )
    else:
        labels, C, n_iter = lloyd(
            X, centers, pinned_idx=pinned_idx, pinned_lab=pinned_lab, max_iter=max_iter, tol=tol
        )
    return labels, C, classes.astype(np.int64), n_iter


def seeded_split(
    X: FloatArray,
    s: IntArray,
    classes: Sequence[int],
    constrained: bool,
    max_iter: int,
    norms: FloatArray | None = None,
    total: npt.NDArray[np.float64] | None = None,
) -> IntArray:
    """Seeded (or constrained) k-means with one cluster per class; returns class ids.

    ``norms`` and ``total`` (row norms, column sums of ``X``) are used when given."""
    s_local = np.where(np.isin(s, classes), s, UNLABELLED)
    labels, _, _, _ = seeded_kmeans(
        X,
        s_local,
        len(classes),
        constrained=constrained,
        max_iter=max_iter,
        rng=np.random.RandomState(0),
        norms=norms,
        total=total,
    )
    return np.asarray(classes, dtype=np.int64)[labels]


def _products(X: FloatArray, C: FloatArray) -> npt.NDArray[np.float64]:
    """``X @ C.T`` as float64. For a few centres: matrix-vector products (they stream X faster
    than a thin matrix-matrix product) on cache-sized blocks, so X is read from memory once."""
    Cx = np.ascontiguousarray(C.astype(X.dtype))
    if C.shape[0] > 4:
        return (X @ Cx.T).astype(np.float64)
    n = X.shape[0]
    out = np.empty((n, C.shape[0]), dtype=np.float64)
    block = max(256, _BLOCK_BYTES // max(X.shape[1] * X.dtype.itemsize, 1))
    for start in range(0, n, block):
        Xb = X[start : start + block]
        for j in range(C.shape[0]):
            out[start : start + block, j] = Xb @ Cx[j]
    return out


def centroid_confidence(
    X: FloatArray,
    labels: IntArray,
    classes: Sequence[int],
    sq_norms_X: npt.NDArray[np.float64] | None = None,
    total: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """``d_other / (d_own + d_other)`` from distances to the class centroids of ``labels``.

    The class sums: with ``total`` (the column sums of X, :func:`col_sums`), the largest class's
    sum is ``total`` minus the others', which are gathered (a pass over the smaller classes only);
    then one blocked pass over X for the distances to the centroids.
    """
    cls = np.asarray(classes)
    counts = np.array([np.count_nonzero(labels == c) for c in cls])
    present = cls[counts > 0]
    if present.size < 2:
        return np.ones(labels.shape[0], dtype=np.float64)
    own_col = np.clip(np.searchsorted(present, labels), 0, present.size - 1)
    present_counts = counts[counts > 0]
    if total is None:
        total = col_sums(X)
    sums = np.zeros((present.size, X.shape[1]), dtype=np.float64)
    largest = int(np.argmax(present_counts))
    for j in range(present.size):
        if j != largest:
            sums[j] = _rows_sum(X, own_col == j, total)
    sums[largest] = total - sums.sum(axis=0)
    C = sums / present_counts[:, None]
    if sq_norms_X is None:
        sq_norms_X = sq_norms(X)
    sq = sq_norms_X[:, None] - 2 * _products(X, C)
    sq += np.einsum("ij,ij->i", C, C).astype(np.float64)[None, :]
    dist = np.sqrt(np.maximum(sq, 0.0))
    rows = np.arange(labels.shape[0])
    d_own = dist[rows, own_col]
    dist[rows, own_col] = np.inf
    d_other = dist.min(axis=1)
    denom = d_own + d_other
    conf = np.where(denom > 0, d_other / np.where(denom > 0, denom, 1.0), 0.5)
    return np.asarray(np.clip(conf, 0.0, 1.0), dtype=np.float64)
