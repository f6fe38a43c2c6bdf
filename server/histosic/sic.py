"""Seeded iterative clustering (SIC) of patch embeddings: numpy and scikit-learn only.

The reference is Chelebian et al. 2022 (*Seeded iterative clustering for histology region
identification*), built on Seeded-KMeans and Constrained-KMeans of Basu, Banerjee & Mooney (2002).
DESIGN.md section 3 states what the paper means; this module implements that intent with the
choices made explicit:

* :class:`SeededKMeans`: centres start at the mean of each seeded class, then ordinary Lloyd
  iterations over all points (``constrained=False``, Seeded-KMeans: seed points may change
  cluster) or with seed points pinned to their class (``constrained=True``, Constrained-KMeans).
* :func:`seeded_iterative_clustering` with ``method="sic"``: the paper's algorithm. Other methods
  (``"centroid"``, ``"logreg"``, ``"spreading"``, ``"seeded-kmeans"``) and the feature
  preprocessing (:class:`Preprocess`) are what our evaluation (``docs/EVALUATION.md``) found to
  work better on real slides; ``method="sic"`` with ``preprocess=PAPER_PREPROCESS`` reproduces the
  paper exactly.
* :func:`suggest_seeds`: where the clustering is least certain, spread over the slide, so that a
  pathologist knows where to click next.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from histosic.errors import InvalidInputError

if TYPE_CHECKING:
    from histosic._estimator import SeededKMeans

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "PAPER_PREPROCESS",
    "ClusterResult",
    "Preprocess",
    "SeededKMeans",
    "Step",
    "grid_pieces",
    "preprocess_features",
    "seeded_iterative_clustering",
    "suggest_seeds",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.int64]
Metric = Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], float]

METHODS = ("sic", "seeded-kmeans", "centroid", "logreg", "spreading")
DEFAULT_METHOD = "logreg"
UNLABELLED = -1

# Rows per block in the fused Lloyd pass: a block of 512-d float32 rows stays in cache while it is
# used twice (distances, then centre sums), so each iteration streams X from memory once.
_BLOCK_BYTES = 1 << 21


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_X(X: npt.ArrayLike) -> FloatArray:
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


def _check_seeds(seeds: npt.ArrayLike, n: int) -> IntArray:
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


# --------------------------------------------------------------------------------------------
# Lloyd iterations
# --------------------------------------------------------------------------------------------


def _lloyd(
    X: FloatArray,
    centers: FloatArray,
    *,
    pinned_idx: IntArray | None = None,
    pinned_lab: IntArray | None = None,
    max_iter: int = 100,
) -> tuple[IntArray, FloatArray, int]:
    """Lloyd iterations from ``centers``; returns labels, centres and iterations run.

    Each iteration is one fused pass over ``X`` in cache-sized blocks: squared distances via a
    matrix product (``|c|^2 - 2 x.c``, the ``|x|^2`` term is constant per row), assignment, and the
    per-cluster sums for the next centres. Stops when no label changes. An empty cluster keeps its
    previous centre (Basu et al.). Pinned points (Constrained-KMeans) keep their given cluster.
    """
    n, d = X.shape
    k = centers.shape[0]
    C = np.asarray(centers, dtype=X.dtype).copy()
    labels = np.full(n, -1, dtype=np.int64)
    block = max(256, _BLOCK_BYTES // max(d * X.dtype.itemsize, 1))
    eye = np.eye(k, dtype=X.dtype)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is returned
        half_sq = 0.5 * np.einsum("ij,ij->i", C, C)
        sums = np.zeros((k, d), dtype=np.float64)
        new = np.empty(n, dtype=np.int64)
        for start in range(0, n, block):
            Xb = X[start : start + block]
            lab = np.argmax(Xb @ C.T - half_sq, axis=1)
            new[start : start + block] = lab
            if pinned_idx is None:
                sums += eye[lab].T @ Xb
        if pinned_idx is not None and pinned_lab is not None:
            new[pinned_idx] = pinned_lab
            for start in range(0, n, block):
                Xb = X[start : start + block]
                sums += eye[new[start : start + block]].T @ Xb
        counts = np.bincount(new, minlength=k)
        nonempty = counts > 0
        C[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(X.dtype)
        changed = not np.array_equal(new, labels)
        labels = new
        if not changed:
            break
    return labels, C, n_iter


def _lloyd2(
    X: FloatArray,
    centers: FloatArray,
    *,
    norms: FloatArray | None = None,
    pinned_idx: IntArray | None = None,
    pinned_lab: IntArray | None = None,
    max_iter: int = 100,
) -> tuple[IntArray, FloatArray, int]:
    """Exact two-cluster Lloyd iterations with Hamerly-style bounds (same result as `_lloyd`).

    With two centres, the assignment is the sign of the margin ``x.w - b`` with ``w = c1 - c0`` and
    ``b = (|c1|^2 - |c0|^2) / 2``. When the centres move, a margin changes by at most
    ``|x| |dw| + |db|``, so a point whose known margin exceeds that bound cannot change cluster and
    is not looked at again. The first iteration streams all of ``X``; later ones touch only the
    points near the boundary (or stream ``X`` again when most points are), and the centre sums are
    updated from the points that moved.
    """
    n = X.shape[0]
    if norms is None:
        norms = np.sqrt(_sq_norms(X))
    c = np.asarray(centers, dtype=np.float64)
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
    total = (np.ones(n, dtype=X.dtype) @ X).astype(np.float64)
    s1 = (lab.astype(X.dtype) @ X).astype(np.float64)
    bound = np.abs(margin)
    if pinned_mask is not None:
        bound[pinned_mask] = np.inf
    n1 = int(lab.sum())
    # scikit-learn's convergence tolerance: centres that move less than 1e-4 of the mean feature
    # variance (squared) stop the iterations, as they do in KMeans; the mean variance comes for
    # free from the row norms and the total.
    mean = total / max(n, 1)
    tol_abs = 1e-4 * max(float(norms @ norms) / max(n, 1) - float(mean @ mean), 0.0) / X.shape[1]
    n_iter = 1
    for n_iter in range(1, max_iter + 1):
        c_prev = c.copy()
        n0 = n - n1
        if n1 > 0:
            c[1] = s1 / n1
        if n0 > 0:
            c[0] = (total - s1) / n0
        if n_iter > 1 and float(((c - c_prev) ** 2).sum()) <= tol_abs:
            break
        w_new = c[1] - c[0]
        b_new = 0.5 * (c[1] @ c[1] - c[0] @ c[0])
        dw = float(np.linalg.norm(w_new - w))
        db = abs(float(b_new - b))
        w, b = w_new, b_new
        if n_iter == max_iter:
            break
        bound -= norms * dw + db
        cand = np.flatnonzero(bound <= 0)
        if cand.size == 0:
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
        moved = cand[new_lab != lab[cand]]
        if moved.size == 0:
            break  # no label changed: the centres are a fixed point (converged)
        to1 = moved[~lab[moved]]
        to0 = moved[lab[moved]]
        if to1.size:
            s1 += X[to1].sum(axis=0, dtype=np.float64)
        if to0.size:
            s1 -= X[to0].sum(axis=0, dtype=np.float64)
        lab[moved] = ~lab[moved]
        n1 += int(to1.size) - int(to0.size)
    return lab.astype(np.int64), c.astype(X.dtype), n_iter


def _kmeans_pp_init(
    X: FloatArray, k: int, rng: np.random.RandomState, sq_norms: FloatArray | None = None
) -> FloatArray:
    """k-means++ initial centres (for unseeded splits); one matrix-vector pass per centre."""
    n = X.shape[0]
    if sq_norms is None:
        sq_norms = np.einsum("ij,ij->i", X, X, dtype=np.float64)

    def sqdist(i: int) -> FloatArray:
        xi = X[i]
        return np.asarray(np.maximum(sq_norms - 2.0 * (X @ xi) + float(xi @ xi), 0.0))

    first = int(rng.randint(n))
    chosen = [first]
    d2 = sqdist(first)
    for _ in range(1, k):
        total = float(d2.sum())
        idx = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.randint(n))
        chosen.append(idx)
        d2 = np.minimum(d2, sqdist(idx))
    return np.asarray(X[chosen], dtype=X.dtype)


def _seeded_kmeans(
    X: FloatArray,
    s: IntArray,
    n_clusters: int,
    *,
    constrained: bool,
    max_iter: int,
    rng: np.random.RandomState,
    norms: FloatArray | None = None,
) -> tuple[IntArray, FloatArray, IntArray, int]:
    """Seeded/Constrained-KMeans on validated data; returns labels, centres, seed classes, n_iter.

    Cluster ``i`` starts at the mean of the ``i``-th smallest seed class; clusters beyond the seeded
    classes start from k-means++.
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
        centers[classes.size :] = _kmeans_pp_init(X, k - classes.size, rng, sq)
    pinned_idx = pinned_lab = None
    if constrained and classes.size:
        pinned_idx = np.flatnonzero(s >= 0)
        pinned_lab = np.searchsorted(classes, s[pinned_idx]).astype(np.int64)
    lloyd = _lloyd2 if k == 2 else _lloyd
    kwargs: dict[str, Any] = {"norms": norms} if k == 2 else {}
    labels, C, n_iter = lloyd(
        X, centers, pinned_idx=pinned_idx, pinned_lab=pinned_lab, max_iter=max_iter, **kwargs
    )
    return labels, C, classes.astype(np.int64), n_iter


def __getattr__(name: str) -> Any:
    # SeededKMeans subclasses scikit-learn's BaseEstimator, whose import costs most of a second;
    # the clustering itself needs only numpy, so the estimator class loads on first use.
    if name == "SeededKMeans":
        from histosic._estimator import SeededKMeans

        return SeededKMeans
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Feature preprocessing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """Feature cleaning before clustering.

    Parameters
    ----------
    regress_nuisance : bool, default=True
        Regress the per-patch tissue fraction and white-pixel fraction out of the features (ordinary
        least squares, no labels needed). On real slides the k=2 split of raw embeddings follows
        these fractions more than tumour. Brightness is deliberately *not* regressed: it carries
        tumour signal.
    smooth_radius : int, default=1
        Average each patch's features with its grid neighbours within this Chebyshev radius
        (1 = 3x3 neighbourhood); 0 turns smoothing off. Needs the patch grid.
    l2_normalize : bool, default=False
        Scale each feature vector to unit length (after the steps above).
    pca_components : int or None, default=None
        Keep this many principal components (after the steps above).
    center_pieces : bool, default=False
        Subtract each tissue piece's mean feature vector (pieces = groups of patches connected on
        the patch grid, 8-neighbourhood), after the nuisance regression. Separate pieces (biopsy
        fragments, or tiles from different patients) often differ by staining more than by tissue
        type. Needs the patch grid. Harmful when a piece is all one class.
    """

    regress_nuisance: bool = True
    smooth_radius: int = 1
    l2_normalize: bool = False
    pca_components: int | None = None
    center_pieces: bool = False


#: The paper's setting: raw embeddings.
PAPER_PREPROCESS = Preprocess(regress_nuisance=False, smooth_radius=0)


def grid_pieces(grid: npt.ArrayLike) -> IntArray:
    """Connected pieces of the patch grid (8-neighbourhood): a piece id per patch, (n_patches,)."""
    from scipy import ndimage

    G = np.asarray(grid, dtype=np.int64)
    g = G - G.min(axis=0)
    occupied = np.zeros((int(g[:, 1].max()) + 1, int(g[:, 0].max()) + 1), dtype=bool)
    occupied[g[:, 1], g[:, 0]] = True
    labelled, _ = ndimage.label(occupied, structure=np.ones((3, 3), dtype=bool))
    return np.asarray(labelled[g[:, 1], g[:, 0]] - 1, dtype=np.int64)


def _grid_adjacency_mean(X: FloatArray, grid: IntArray, radius: int) -> FloatArray:
    """Mean of each row with the rows at grid offsets within ``radius`` (those that exist)."""
    from scipy import sparse

    n = grid.shape[0]
    g = grid - grid.min(axis=0)
    width = int(g[:, 0].max()) + 1
    height = int(g[:, 1].max()) + 1
    lookup = np.full((height + 2 * radius, width + 2 * radius), -1, dtype=np.int64)
    lookup[g[:, 1] + radius, g[:, 0] + radius] = np.arange(n)
    rows, cols = [], []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            nb = lookup[g[:, 1] + radius + dy, g[:, 0] + radius + dx]
            ok = nb >= 0
            rows.append(np.flatnonzero(ok))
            cols.append(nb[ok])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    A = sparse.csr_matrix((np.ones(r.size, dtype=X.dtype), (r, c)), shape=(n, n))
    deg = np.asarray(A.sum(axis=1)).ravel()
    out = A @ X
    out /= deg[:, None].astype(X.dtype)
    return np.asarray(out, dtype=X.dtype)


def preprocess_features(
    X: npt.ArrayLike,
    *,
    nuisance: npt.ArrayLike | None = None,
    grid: npt.ArrayLike | None = None,
    config: Preprocess = Preprocess(),
) -> FloatArray:
    """Clean features before clustering (see :class:`Preprocess`).

    Parameters
    ----------
    X : array-like of shape (n_patches, dim)
    nuisance : array-like of shape (n_patches, n_nuisance), optional
        Per-patch variables to regress out (histosic stores tissue and white fractions). Steps
        that need it are skipped when it is None.
    grid : array-like of int of shape (n_patches, 2), optional
        Integer (column, row) of each patch on the patch grid. Smoothing is skipped without it.
    config : Preprocess

    Returns
    -------
    ndarray of shape (n_patches, dim) or (n_patches, pca_components), same float dtype as X.
    """
    return _preprocess(_check_X(X), nuisance=nuisance, grid=grid, config=config)


def _preprocess(
    Xa: FloatArray,
    *,
    nuisance: npt.ArrayLike | None,
    grid: npt.ArrayLike | None,
    config: Preprocess,
) -> FloatArray:
    """:func:`preprocess_features` on an already validated matrix."""
    n = Xa.shape[0]
    out = Xa
    if config.regress_nuisance and nuisance is not None:
        Z = np.asarray(nuisance, dtype=np.float64)
        if Z.ndim == 1:
            Z = Z[:, None]
        if Z.shape[0] != n or not np.isfinite(Z).all():
            raise InvalidInputError(
                f"nuisance must be a finite ({n}, k) array, got shape {Z.shape}"
            )
        Zc = Z - Z.mean(axis=0)
        keep = Zc.std(axis=0) > 1e-9
        if keep.any():
            Zc = Zc[:, keep]
            # Normal equations with the (n, k) nuisance in X's precision: no float64 copy of X.
            Zx = Zc.astype(out.dtype)
            beta = np.linalg.pinv(Zc.T @ Zc) @ (Zx.T @ out).astype(np.float64)
            out = out - Zx @ beta.astype(out.dtype)
    if config.center_pieces and grid is not None:
        pieces = grid_pieces(grid)
        n_pieces = int(pieces.max()) + 1
        if n_pieces > 1:
            sums = np.zeros((n_pieces, out.shape[1]), dtype=np.float64)
            np.add.at(sums, pieces, out)
            means = sums / np.bincount(pieces, minlength=n_pieces)[:, None]
            out = (out - means[pieces].astype(out.dtype) + out.mean(axis=0)).astype(Xa.dtype)
    if config.smooth_radius > 0 and grid is not None:
        G = np.asarray(grid)
        if G.shape != (n, 2) or not np.issubdtype(G.dtype, np.integer):
            raise InvalidInputError(
                f"grid must be an integer ({n}, 2) array, got {G.shape} {G.dtype}"
            )
        out = _grid_adjacency_mean(
            np.ascontiguousarray(out), G.astype(np.int64), int(config.smooth_radius)
        )
    if config.l2_normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    if config.pca_components is not None:
        from sklearn.decomposition import PCA

        m = int(config.pca_components)
        if m < 1:
            raise InvalidInputError(f"pca_components must be >= 1, got {m}")
        m = min(m, out.shape[1], n)
        out = (
            PCA(n_components=m, random_state=0, svd_solver="auto")
            .fit_transform(out)
            .astype(Xa.dtype)
        )
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One step of the iterative refinement (or the single step of a one-shot method)."""

    depth: int
    branch: str  # "seeded-kmeans", "constrained-kmeans", "kmeans", "logreg", ...
    score: float  # metric on the seed patches after this step
    sizes: tuple[int, ...]  # patches per class after this step, in ``classes`` order
    accepted: bool


@dataclass
class ClusterResult:
    """What :func:`seeded_iterative_clustering` returns.

    Attributes
    ----------
    labels : ndarray of shape (n_patches,)
        Class id per patch (one of ``classes``).
    confidence : ndarray of shape (n_patches,)
        In [0, 1]; 1 = certain. For k-means methods ``d_other / (d_own + d_other)`` with distances
        to the final class centroids; for classifiers the predicted probability of the label.
    classes : tuple of int
        The seeded class ids, sorted.
    positive : int or None
        Binary: the positive class id. Multi-class: None.
    history : list of Step
    seeds : ndarray of shape (n_patches,)
        The seeds used (-1 = unlabelled).
    method : str
    score : float
        The metric on the seed patches for the final labelling.
    preprocess : Preprocess or None
        The preprocessing applied (None = raw features).
    """

    labels: IntArray
    confidence: FloatArray
    classes: tuple[int, ...]
    positive: int | None
    history: list[Step]
    seeds: IntArray
    method: str
    score: float
    preprocess: Preprocess | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_patches(self) -> int:
        return int(self.labels.shape[0])

    def counts(self) -> dict[int, int]:
        """Patches per class."""
        return {c: int(np.count_nonzero(self.labels == c)) for c in self.classes}


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def _f1(t: IntArray, p: IntArray, label: int) -> float:
    tp = float(np.count_nonzero((t == label) & (p == label)))
    fp = float(np.count_nonzero((t != label) & (p == label)))
    fn = float(np.count_nonzero((t == label) & (p != label)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _mcc(t: IntArray, p: IntArray) -> float:
    labels = np.union1d(t, p)
    conf = np.zeros((labels.size, labels.size))
    np.add.at(conf, (np.searchsorted(labels, t), np.searchsorted(labels, p)), 1)
    n = conf.sum()
    tk, pk = conf.sum(axis=1), conf.sum(axis=0)
    cov_tp = np.trace(conf) * n - tk @ pk
    denom = np.sqrt((n * n - tk @ tk) * (n * n - pk @ pk))
    return float(cov_tp / denom) if denom > 0 else 0.0


def _make_metric(metric: str | Metric, positive: int | None, classes: Sequence[int]) -> Metric:
    """Score functions on the seed patches (numpy only: the metric runs after every split)."""
    if callable(metric):
        return metric
    labels = list(classes)
    if metric == "f1":
        if positive is not None:
            pos = int(positive)
            return lambda t, p: _f1(t, p, pos)
        return lambda t, p: float(np.mean([_f1(t, p, c) for c in labels]))
    if metric == "accuracy":
        return lambda t, p: float(np.mean(t == p))
    if metric == "balanced_accuracy":
        return lambda t, p: float(
            np.mean([np.mean(p[t == c] == c) for c in labels if np.any(t == c)])
        )
    if metric == "mcc":
        return _mcc
    raise InvalidInputError(
        f"unknown metric {metric!r}; use 'f1', 'accuracy', 'balanced_accuracy', 'mcc' or a callable"
    )


def _products(X: FloatArray, C: FloatArray) -> npt.NDArray[np.float64]:
    """``X @ C.T`` as float64; column by column for a few centres (matrix-vector products stream
    X faster than a thin matrix-matrix product)."""
    if C.shape[0] <= 4:
        return np.stack([X @ c for c in C.astype(X.dtype)], axis=1).astype(np.float64)
    return (X @ C.astype(X.dtype).T).astype(np.float64)


def _sq_norms(X: FloatArray) -> npt.NDArray[np.float64]:
    """Squared row norms (in X's precision: a float64 pass over X costs twice as much)."""
    return np.asarray(np.einsum("ij,ij->i", X, X), dtype=np.float64)


def _centroid_confidence(
    X: FloatArray,
    labels: IntArray,
    classes: Sequence[int],
    sq_norms: npt.NDArray[np.float64] | None = None,
) -> FloatArray:
    """``d_other / (d_own + d_other)`` from distances to the class centroids of ``labels``.

    Two passes over X: the class sums (one matrix product with the one-hot labels) and the
    distances to the centroids.
    """
    cls = np.asarray(classes)
    counts = np.array([np.count_nonzero(labels == c) for c in cls])
    present = cls[counts > 0]
    if present.size < 2:
        return np.ones(labels.shape[0], dtype=np.float64)
    own_col = np.clip(np.searchsorted(present, labels), 0, present.size - 1)
    C = np.stack([(own_col == j).astype(X.dtype) @ X for j in range(present.size)])
    C /= counts[counts > 0][:, None].astype(X.dtype)
    if sq_norms is None:
        sq_norms = _sq_norms(X)
    sq = sq_norms[:, None] - 2 * _products(X, C)
    sq += np.einsum("ij,ij->i", C, C).astype(np.float64)[None, :]
    dist = np.sqrt(np.maximum(sq, 0.0))
    rows = np.arange(labels.shape[0])
    d_own = dist[rows, own_col]
    dist[rows, own_col] = np.inf
    d_other = dist.min(axis=1)
    denom = d_own + d_other
    conf = np.where(denom > 0, d_other / np.where(denom > 0, denom, 1.0), 0.5)
    return np.clip(conf, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


def _seeded_split(
    X: FloatArray,
    s: IntArray,
    classes: Sequence[int],
    constrained: bool,
    max_iter: int,
    norms: FloatArray | None = None,
) -> IntArray:
    """Seeded (or constrained) k-means with one cluster per class; returns class ids."""
    s_local = np.where(np.isin(s, classes), s, UNLABELLED)
    labels, _, _, _ = _seeded_kmeans(
        X,
        s_local,
        len(classes),
        constrained=constrained,
        max_iter=max_iter,
        rng=np.random.RandomState(0),
        norms=norms,
    )
    return np.asarray(classes, dtype=np.int64)[labels]


def _sic(
    X: FloatArray,
    s: IntArray,
    classes: tuple[int, ...],
    positive: int | None,
    score_fn: Metric,
    *,
    stop: str,
    constrained: bool,
    max_depth: int,
    min_cluster_size: int,
    max_iter: int,
    rng: np.random.RandomState,
    norms: FloatArray,
) -> tuple[IntArray, list[Step]]:
    """The paper's SIC: a seeded split, then repeated re-splits of each target cluster.

    Binary: the target is the positive cluster. Multi-class: every class in turn is treated as the
    positive of a one-vs-rest refinement; patches removed from its cluster go to the nearest other
    class centroid.
    """
    seeded = np.flatnonzero(s >= 0)
    branch0 = "constrained-kmeans" if constrained else "seeded-kmeans"
    labels = _seeded_split(X, s, classes, constrained, max_iter, norms)
    score = score_fn(s[seeded], labels[seeded])
    history = [Step(0, branch0, score, tuple(int(np.sum(labels == c)) for c in classes), True)]
    targets = [positive] if positive is not None else list(classes)
    depth = 0
    for target in targets:
        for _ in range(max_depth):
            member = np.flatnonzero(labels == target)
            if member.size < 2 * min_cluster_size:
                break
            s_sub = s[member]
            has_pos = np.any(s_sub == target)
            has_neg = np.any((s_sub >= 0) & (s_sub != target))
            if not has_pos:
                break
            Xs = X[member]
            if has_neg:
                binary = np.where(s_sub == target, 1, np.where(s_sub >= 0, 0, UNLABELLED))
                sub_labels, _, _, _ = _seeded_kmeans(
                    Xs,
                    binary,
                    2,
                    constrained=constrained,
                    max_iter=max_iter,
                    rng=rng,
                    norms=norms[member],
                )
                keep = sub_labels == 1
                branch = branch0
            else:
                unseeded = np.full(member.size, UNLABELLED, dtype=np.int64)
                sub_labels, _, _, _ = _seeded_kmeans(
                    Xs,
                    unseeded,
                    2,
                    constrained=False,
                    max_iter=max_iter,
                    rng=rng,
                    norms=norms[member],
                )
                pos_votes = np.bincount(sub_labels[s_sub == target], minlength=2)
                keep = sub_labels == int(np.argmax(pos_votes))
                branch = "kmeans"
            n_keep = int(keep.sum())
            depth += 1
            if n_keep < min_cluster_size or member.size - n_keep < min_cluster_size:
                history.append(
                    Step(depth, branch, float("nan"), (n_keep, member.size - n_keep), False)
                )
                break
            new = labels.copy()
            removed = member[~keep]
            if positive is not None:
                (other,) = [c for c in classes if c != positive]
                new[removed] = other
            else:
                others = [c for c in classes if c != target and np.any(labels == c)]
                if not others:
                    break
                C = np.stack([X[labels == c].mean(axis=0) for c in others]).astype(X.dtype)
                Xr = X[removed]
                near = np.argmax(Xr @ C.T - 0.5 * np.einsum("ij,ij->i", C, C), axis=1)
                new[removed] = np.asarray(others, dtype=np.int64)[near]
            new_score = score_fn(s[seeded], new[seeded])
            worse = new_score < score if stop == "drop" else new_score <= score
            sizes = tuple(int(np.sum(new == c)) for c in classes)
            history.append(Step(depth, branch, new_score, sizes, not worse))
            if worse:
                break
            labels, score = new, new_score
    return labels, history


def _centroid(
    X: FloatArray, s: IntArray, classes: tuple[int, ...], max_iter: int
) -> tuple[IntArray, FloatArray]:
    """Seeded k-means in the subspace spanned by the seed-class means.

    Binary: project every patch on the axis from the negative to the positive seed mean and split
    that 1-D projection into two groups with seeded 2-means. Multi-class: the same in the
    (k-1)-dimensional span of the class means. Noise orthogonal to the seed axes, which dominates
    k-means in the full space, cannot move the split.
    """
    means = np.stack([X[s == c].mean(axis=0) for c in classes]).astype(np.float64)
    basis = means[1:] - means[0]
    q, _ = np.linalg.qr(basis.T)
    # Project in X's own precision: a float64 copy of X would double the memory traffic.
    P = np.ascontiguousarray((X @ q.astype(X.dtype)).astype(np.float64) - means[0] @ q)
    idx, C, _, _ = _seeded_kmeans(
        P, s, len(classes), constrained=False, max_iter=max_iter, rng=np.random.RandomState(0)
    )
    labels = np.asarray(classes, dtype=np.int64)[idx]
    d = np.sqrt(np.maximum(((P[:, None, :] - C[None, :, :]) ** 2).sum(axis=2), 0.0))
    rows = np.arange(P.shape[0])
    d_own = d[rows, idx]
    d[rows, idx] = np.inf
    d_other = d.min(axis=1)
    denom = d_own + d_other
    conf = np.where(denom > 0, d_other / np.where(denom > 0, denom, 1.0), 0.5)
    return labels, np.clip(conf, 0.0, 1.0)


def _fit_logistic(
    K: npt.NDArray[np.float64],
    y: IntArray,
    k: int,
    *,
    C: float,
    weights: npt.NDArray[np.float64],
    max_iter: int = 100,
) -> npt.NDArray[np.float64]:
    """L2-regularised logistic regression in kernel form, by damped Newton steps.

    Minimises ``C * sum_i w_i * loss_i + ||W||^2 / 2`` (scikit-learn's objective: binary logistic
    for two classes, multinomial for more; intercepts not penalised) with ``W = Zs^T A`` (the
    representer theorem), so the unknowns are ``(m + 1) x k'`` numbers for ``m`` seed patches
    instead of ``dim x k'``. ``K = Zs Zs^T`` is the seed patches' Gram matrix, ``y`` the class index
    (0..k-1) of each. Returns ``theta`` of shape (m + 1, k') whose last row is the intercept;
    ``k' = 1`` for two classes.
    """
    m = K.shape[0]
    Phi = np.hstack([K, np.ones((m, 1))])
    kc = 1 if k == 2 else k
    Y = (y[:, None] == np.arange(k)[None, :]).astype(np.float64)
    if k == 2:
        Y = Y[:, 1:]
    pen = np.zeros((m + 1, m + 1))
    pen[:m, :m] = K
    ridge = 1e-10 * (np.trace(K) / max(m, 1) + 1.0)

    def probs(F: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if k == 2:
            return np.asarray(0.5 * (1.0 + np.tanh(0.5 * F)))
        E = np.exp(F - F.max(axis=1, keepdims=True))
        return np.asarray(E / E.sum(axis=1, keepdims=True))

    def objective(T: npt.NDArray[np.float64]) -> float:
        F = Phi @ T
        if k == 2:
            loss = np.logaddexp(0.0, F[:, 0]) - Y[:, 0] * F[:, 0]
        else:
            mx = F.max(axis=1)
            loss = mx + np.log(np.exp(F - mx[:, None]).sum(axis=1)) - (F * Y).sum(axis=1)
        A = T[:m]
        return float(C * (weights @ loss) + 0.5 * np.einsum("ic,ij,jc->", A, K, A))

    theta = np.zeros((m + 1, kc))
    value = objective(theta)
    for _ in range(max_iter):
        P = probs(Phi @ theta)
        G = Phi.T @ (C * weights[:, None] * (P - Y)) + pen @ theta
        H = np.zeros(((m + 1) * kc, (m + 1) * kc))
        for a in range(kc):
            for b in range(kc):
                if k == 2:
                    d = P[:, 0] * (1.0 - P[:, 0])
                else:
                    d = P[:, a] * ((a == b) - P[:, b])
                block = Phi.T @ ((C * weights * d)[:, None] * Phi)
                if a == b:
                    block = block + pen
                H[a * (m + 1) : (a + 1) * (m + 1), b * (m + 1) : (b + 1) * (m + 1)] = block
        H[np.diag_indices_from(H)] += ridge
        g = G.T.reshape(-1)
        try:
            flat = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            flat = np.linalg.lstsq(H, g, rcond=None)[0]
        step = flat.reshape(kc, m + 1).T
        t_step = 1.0
        while t_step > 1e-8:
            cand = theta - t_step * step
            cand_value = objective(cand)
            if cand_value <= value:
                break
            t_step *= 0.5
        else:
            break
        decrease = value - cand_value
        theta, value = cand, cand_value
        if decrease <= 1e-10 * max(1.0, abs(value)):
            break
    return theta


def _logreg(
    X: FloatArray, s: IntArray, classes: tuple[int, ...], C: float = 0.1
) -> tuple[IntArray, FloatArray]:
    """L2-regularised logistic regression trained on the seed patches, balanced class weights.

    The same model as ``sklearn.linear_model.LogisticRegression(C=0.1, class_weight="balanced")``
    on globally scaled features, solved in kernel form with numpy (scikit-learn's import alone
    takes longer than the whole clustering of a typical slide).
    """
    seeded = np.flatnonzero(s >= 0)
    # One global scale, not per-feature standardisation: per-feature scaling would inflate the
    # many noise dimensions of an embedding to the size of the few informative ones.
    mu = X.mean(axis=0)
    scale = (
        float(
            np.sqrt(
                max(
                    float(np.einsum("ij,ij->", X, X, dtype=np.float64)) / X.size
                    - float(mu @ mu) / X.shape[1],
                    0.0,
                )
            )
        )
        or 1.0
    )
    Zs = (X[seeded] - mu).astype(np.float64) / scale
    cls = np.asarray(classes, dtype=np.int64)
    y = np.searchsorted(cls, s[seeded])
    k = cls.size
    counts = np.bincount(y, minlength=k).astype(np.float64)
    weights = seeded.size / (k * counts[y])
    theta = _fit_logistic(Zs @ Zs.T, y, k, C=C, weights=weights)
    W = (Zs.T @ theta[:-1]) / scale  # back to X's units: scores = (X - mu) @ W + b
    b = theta[-1] - mu.astype(np.float64) @ W
    F = X @ W.astype(X.dtype) + b.astype(X.dtype)
    if k == 2:
        p1 = 0.5 * (1.0 + np.tanh(0.5 * F[:, 0].astype(np.float64)))
        idx = (p1 > 0.5).astype(np.int64)
        conf = np.where(idx == 1, p1, 1.0 - p1)
    else:
        F64 = F.astype(np.float64)
        E = np.exp(F64 - F64.max(axis=1, keepdims=True))
        P = E / E.sum(axis=1, keepdims=True)
        idx = np.argmax(P, axis=1)
        conf = P[np.arange(P.shape[0]), idx]
    return cls[idx], np.asarray(conf, dtype=np.float64)


def _spreading(
    X: FloatArray, s: IntArray, classes: tuple[int, ...], random_state: int | None
) -> tuple[IntArray, FloatArray]:
    """Label spreading on a k-nearest-neighbour graph (in at most 32 principal components)."""
    from sklearn.decomposition import PCA
    from sklearn.semi_supervised import LabelSpreading

    Z = X
    if X.shape[1] > 32 and X.shape[0] > 32:
        Z = PCA(n_components=32, random_state=random_state).fit_transform(X)
    n_neighbors = int(min(10, max(1, X.shape[0] - 1)))
    model = LabelSpreading(kernel="knn", n_neighbors=n_neighbors, alpha=0.2, max_iter=100)
    model.fit(Z, s)
    dist = np.nan_to_num(model.label_distributions_, nan=0.0)
    idx = np.argmax(dist, axis=1)
    labels = model.classes_[idx].astype(np.int64)
    conf = dist[np.arange(labels.shape[0]), idx].astype(np.float64)
    # Patches the k-NN graph does not connect to any seed keep a uniform (or NaN) row, whose
    # argmax is the lowest class id: on slides of separate tissue pieces that decided most labels
    # (docs/EVALUATION.md). Give them the nearest seed-class centroid and the lowest confidence.
    unreached = dist.max(axis=1) - dist.min(axis=1) <= 1e-9
    if unreached.any():
        C = np.stack([Z[s == c].mean(axis=0) for c in model.classes_])
        d = ((Z[unreached, None, :] - C[None, :, :]) ** 2).sum(axis=2)
        labels[unreached] = model.classes_[d.argmin(axis=1)].astype(np.int64)
        conf[unreached] = 1.0 / len(model.classes_)
    return labels, conf


def seeded_iterative_clustering(
    X: npt.ArrayLike,
    seeds: npt.ArrayLike,
    *,
    method: str = DEFAULT_METHOD,
    positive: int | None = 1,
    metric: str | Metric = "f1",
    stop: Literal["drop", "strict"] = "drop",
    constrained: bool = False,
    max_depth: int = 8,
    min_cluster_size: int = 2,
    max_iter: int = 100,
    nuisance: npt.ArrayLike | None = None,
    grid: npt.ArrayLike | None = None,
    preprocess: Preprocess | None = None,
    random_state: int | None = None,
) -> ClusterResult:
    """Cluster patch embeddings from a few seed patches.

    Parameters
    ----------
    X : array-like of shape (n_patches, dim)
        Patch embeddings.
    seeds : array-like of int of shape (n_patches,)
        Class id of each seed patch, -1 for unlabelled patches. At least two classes must be
        seeded.
    method : {"sic", "seeded-kmeans", "centroid", "logreg", "spreading"}, default=DEFAULT_METHOD
        ``"sic"`` is the paper's algorithm (a seeded k-means split, then the positive cluster is
        re-split until the score on the seeds drops). ``"seeded-kmeans"`` is its first step alone.
        ``"centroid"`` is seeded k-means on the projection onto the seed-mean axis (or, multi-class,
        the span of the class means). ``"logreg"`` trains a regularised logistic regression on the
        seed patches. ``"spreading"`` spreads seed labels over a k-NN graph (slow for 100k+
        patches).
    positive : int or None, default=1
        Binary: the positive class id; it must be one of the two seeded classes. Ignored (and
        reported as None) when three or more classes are seeded.
    metric : {"f1", "accuracy", "balanced_accuracy", "mcc"} or callable, default="f1"
        Score on the seed patches that drives SIC's stopping rule. Multi-class "f1" is macro F1.
    stop : {"drop", "strict"}, default="drop"
        ``"drop"`` (the paper): keep refining while the score does not go down, and keep the last
        labelling before it drops. ``"strict"``: keep refining only while the score improves.
    constrained : bool, default=False
        Constrained-KMeans (seed patches pinned to their class) instead of Seeded-KMeans, in the
        k-means based methods.
    max_depth : int, default=8
        Maximum number of refinement splits per target cluster (SIC).
    min_cluster_size : int, default=2
        A split that would leave a part smaller than this is not made (SIC).
    max_iter : int, default=100
        Lloyd iterations per split.
    nuisance : array-like of shape (n_patches, k), optional
        Per-patch nuisance variables (tissue and white fractions) for :class:`Preprocess`.
    grid : array-like of int of shape (n_patches, 2), optional
        Patch positions on the patch grid, for smoothing.
    preprocess : Preprocess or None, default=None
        Feature cleaning. None applies the default :class:`Preprocess` (its steps run only where
        ``nuisance``/``grid`` are given). Pass :data:`PAPER_PREPROCESS` for raw features.
    random_state : int or None, default=None
        Seeds the unseeded k-means splits; the same inputs and random_state give the same labels.

    Returns
    -------
    ClusterResult

    Raises
    ------
    InvalidInputError
        NaN/inf in X, wrong shapes, fewer than two seeded classes, a positive class that is not
        seeded, fewer patches than clusters, unknown method/metric/stop.

    Notes
    -----
    Multi-class design (three or more seeded classes). ``sic``: one seeded k-means with one
    centre per class, then each class in turn is refined one-vs-rest as in binary SIC (the score
    is macro F1 on the seeds); patches split off a class go to the nearest other class centroid.
    ``centroid``: seeded k-means in the span of the class means. ``logreg``/``spreading``:
    multinomial by construction. The evaluation compares these with one-vs-rest binary runs
    (``docs/EVALUATION.md``).
    """
    Xa = _check_X(X)
    n = Xa.shape[0]
    s = _check_seeds(seeds, n)
    if method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if stop not in ("drop", "strict"):
        raise InvalidInputError(f"stop must be 'drop' or 'strict', got {stop!r}")
    if max_depth < 0 or min_cluster_size < 1 or max_iter < 1:
        raise InvalidInputError(
            f"max_depth >= 0, min_cluster_size >= 1 and max_iter >= 1 are required, got "
            f"{max_depth}, {min_cluster_size}, {max_iter}"
        )
    classes = tuple(int(c) for c in np.unique(s[s >= 0]))
    if len(classes) < 2:
        found = f"only class {classes[0]}" if classes else "no seeds"
        raise InvalidInputError(
            f"at least two seeded classes are needed, found {found}; "
            "place seeds of the positive class and of at least one other class"
        )
    if n < len(classes):
        raise InvalidInputError(
            f"n_patches={n} is smaller than the number of clusters {len(classes)}"
        )
    if len(classes) == 2:
        if positive is None or positive not in classes:
            raise InvalidInputError(
                f"positive class {positive!r} has no seeds; seeded classes are {list(classes)}"
            )
        pos: int | None = int(positive)
    else:
        pos = None
    config = Preprocess() if preprocess is None else preprocess
    Xp = _preprocess(Xa, nuisance=nuisance, grid=grid, config=config)
    rng = np.random.RandomState(random_state)
    score_fn = _make_metric(metric, pos, classes)
    seeded = np.flatnonzero(s >= 0)

    history: list[Step]
    confidence: FloatArray | None = None
    sq_norms: npt.NDArray[np.float64] | None = None
    if method == "sic":
        # Row norms once: the two-cluster Lloyd bounds use them (on X and on every subset), and so
        # does the confidence.
        sq_norms = _sq_norms(Xp)
        labels, history = _sic(
            Xp,
            s,
            classes,
            pos,
            score_fn,
            stop=stop,
            constrained=constrained,
            max_depth=max_depth,
            min_cluster_size=min_cluster_size,
            max_iter=max_iter,
            rng=rng,
            norms=np.sqrt(sq_norms),
        )
    elif method == "seeded-kmeans":
        sq_norms = _sq_norms(Xp)
        labels = _seeded_split(Xp, s, classes, constrained, max_iter, np.sqrt(sq_norms))
        history = []
    elif method == "centroid":
        labels, confidence = _centroid(Xp, s, classes, max_iter)
        history = []
    elif method == "logreg":
        labels, confidence = _logreg(Xp, s, classes)
        history = []
    else:
        labels, confidence = _spreading(Xp, s, classes, random_state)
        history = []
    score = score_fn(s[seeded], labels[seeded])
    if not history:
        history = [Step(0, method, score, tuple(int(np.sum(labels == c)) for c in classes), True)]
    if confidence is None:
        confidence = _centroid_confidence(Xp, labels, classes, sq_norms)
    return ClusterResult(
        labels=labels.astype(np.int64),
        confidence=np.asarray(confidence, dtype=np.float64),
        classes=classes,
        positive=pos,
        history=history,
        seeds=s,
        method=method,
        score=float(score),
        preprocess=config,
    )


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
