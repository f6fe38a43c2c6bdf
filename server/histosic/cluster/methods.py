"""The clustering methods by name, and the two that have no module of their own.

:data:`METHODS` lists the names :func:`histosic.cluster.seeded_clustering` accepts; :data:`DISPATCH`
maps each to the function that runs it on a :class:`Problem`. ``"sic"`` is the paper's algorithm
(:mod:`histosic.cluster.sic`), ``"seeded-kmeans"`` its first split alone
(:mod:`histosic.cluster.kmeans`), ``"logreg"`` a logistic regression on the seed patches
(:mod:`histosic.cluster.logreg`); ``"centroid"`` and ``"spreading"`` are here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from histosic.cluster.kmeans import col_sums, seeded_kmeans, seeded_split, sq_norms
from histosic.cluster.logreg import logreg
from histosic.cluster.options import METHODS, Metric
from histosic.cluster.result import Step
from histosic.cluster.sic import sic
from histosic.cluster.validation import FloatArray, IntArray

__all__ = [
    "DISPATCH",
    "MethodOutput",
    "MethodSettings",
    "Problem",
    "centroid",
    "spreading",
]


class MethodSettings(Protocol):
    """The options a method reads (:class:`histosic.cluster.ClusterOptions` has them all)."""

    @property
    def stop(self) -> str: ...
    @property
    def constrained(self) -> bool: ...
    @property
    def max_depth(self) -> int: ...
    @property
    def min_cluster_size(self) -> int: ...
    @property
    def max_iter(self) -> int: ...
    @property
    def random_state(self) -> int | None: ...


@dataclass
class Problem:
    """A validated clustering problem, as every method receives it.

    Attributes
    ----------
    X : ndarray of shape (n_patches, dim)
        The preprocessed features.
    seeds : ndarray of int64 of shape (n_patches,)
        Seed class ids, -1 = unlabelled.
    classes : tuple of int
        The seeded class ids, sorted (at least two).
    positive : int or None
        Binary: the positive class id. Multi-class: None.
    score : Metric
        The score on the seed patches.
    settings : MethodSettings
    rng : numpy.random.RandomState
        Seeded from ``settings.random_state``.
    """

    X: FloatArray
    seeds: IntArray
    classes: tuple[int, ...]
    positive: int | None
    score: Metric
    settings: MethodSettings
    rng: np.random.RandomState

    @cached_property
    def sq_norms(self) -> npt.NDArray[np.float64]:
        """Squared row norms of ``X``, computed once (Lloyd bounds and confidence use them)."""
        return sq_norms(self.X)

    @cached_property
    def col_sums(self) -> npt.NDArray[np.float64]:
        """Column sums of ``X`` in float64, computed once (the top split and confidence)."""
        return col_sums(self.X)


class MethodOutput(NamedTuple):
    """Labels (class ids), confidence (None: the engine derives it from the class centroids) and
    the refinement history (empty for one-shot methods)."""

    labels: IntArray
    confidence: FloatArray | None
    history: list[Step]


def centroid(
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
    idx, C, _, _ = seeded_kmeans(
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


def spreading(
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


def _run_sic(p: Problem) -> MethodOutput:
    s = p.settings
    labels, history = sic(
        p.X,
        p.seeds,
        p.classes,
        p.positive,
        p.score,
        stop=s.stop,
        constrained=s.constrained,
        max_depth=s.max_depth,
        min_cluster_size=s.min_cluster_size,
        max_iter=s.max_iter,
        rng=p.rng,
        norms=np.sqrt(p.sq_norms),
        total=p.col_sums,
    )
    return MethodOutput(labels, None, history)


def _run_seeded_kmeans(p: Problem) -> MethodOutput:
    s = p.settings
    labels = seeded_split(
        p.X, p.seeds, p.classes, s.constrained, s.max_iter, np.sqrt(p.sq_norms), p.col_sums
    )
    return MethodOutput(labels, None, [])


def _run_centroid(p: Problem) -> MethodOutput:
    labels, conf = centroid(p.X, p.seeds, p.classes, p.settings.max_iter)
    return MethodOutput(labels, conf, [])


def _run_logreg(p: Problem) -> MethodOutput:
    labels, conf = logreg(p.X, p.seeds, p.classes)
    return MethodOutput(labels, conf, [])


def _run_spreading(p: Problem) -> MethodOutput:
    labels, conf = spreading(p.X, p.seeds, p.classes, p.settings.random_state)
    return MethodOutput(labels, conf, [])


#: Method name -> the function that runs it.
DISPATCH: dict[str, Callable[[Problem], MethodOutput]] = {
    "sic": _run_sic,
    "seeded-kmeans": _run_seeded_kmeans,
    "centroid": _run_centroid,
    "logreg": _run_logreg,
    "spreading": _run_spreading,
}
if tuple(DISPATCH) != METHODS:  # pragma: no cover - a method added in one place only
    raise ImportError(f"cluster.methods.DISPATCH {tuple(DISPATCH)} != options.METHODS {METHODS}")
