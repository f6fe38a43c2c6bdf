"""The scikit-learn estimator :class:`SeededKMeans` on the package's Lloyd kernels.

Import it from here (``from histosic.cluster.estimator import SeededKMeans``):
:mod:`histosic.cluster` does not load it, because importing scikit-learn's base classes costs most
of a second, which the clustering path (pure numpy) does not need to pay.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from histosic.cluster.kmeans import DEFAULT_TOL, seeded_kmeans
from histosic.cluster.validation import UNLABELLED, FloatArray, IntArray, check_seeds
from histosic.errors import InvalidInputError

__all__ = ["SeededKMeans"]


class SeededKMeans(ClusterMixin, BaseEstimator):  # type: ignore[misc]
    """Seeded-KMeans and Constrained-KMeans (Basu, Banerjee & Mooney 2002).

    Parameters
    ----------
    n_clusters : int, default=2
        Number of clusters when ``fit`` is called without seeds, or when more clusters than seeded
        classes are wanted (the extra centres start from k-means++ on the data).
    constrained : bool, default=False
        Pin seed points to their class's cluster (Constrained-KMeans). With False, seed points may
        change cluster during the Lloyd iterations (Seeded-KMeans).
    max_iter : int, default=100
        Maximum number of Lloyd iterations; they stop earlier when no label changes.
    tol : float, default=1e-4
        Stop also when the summed squared centre shift of an iteration is at most ``tol`` times
        the mean feature variance of ``X`` (scikit-learn's rule and default;
        :func:`histosic.cluster.kmeans.lloyd`). 0 runs to the fixed point.
    random_state : int, RandomState instance or None, default=None
        Used only for the centres that no seed class provides.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters_, n_features)
    labels_ : ndarray of shape (n_samples,)
        Cluster index of each training point. With seeds, cluster ``i`` is the cluster whose centre
        started at the mean of the ``i``-th smallest seed class (see ``seed_classes_``).
    seed_classes_ : ndarray of shape (n_seed_classes,)
        The seed class ids, sorted; empty without seeds.
    n_iter_ : int
    inertia_ : float
        Sum of squared distances of points to their cluster centre.
    n_features_in_ : int
    """

    def __init__(
        self,
        n_clusters: int = 2,
        *,
        constrained: bool = False,
        max_iter: int = 100,
        tol: float = DEFAULT_TOL,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.constrained = constrained
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(
        self, X: npt.ArrayLike, y: object = None, seeds: npt.ArrayLike | None = None
    ) -> SeededKMeans:
        """Cluster ``X`` starting from the seed-class means.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        seeds : array-like of shape (n_samples,), default=None
            Class id per sample, -1 for unlabelled. Without seeds this is k-means with k-means++
            initialisation and ``n_clusters`` clusters.

        Returns
        -------
        self : SeededKMeans
        """
        Xv: FloatArray = validate_data(self, X, dtype=[np.float64, np.float32], reset=True)
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise InvalidInputError(
                f"n_clusters must be a positive integer, got {self.n_clusters!r}"
            )
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise InvalidInputError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not isinstance(self.tol, (int, float, np.floating)) or not self.tol >= 0:
            raise InvalidInputError(f"tol must be a number >= 0, got {self.tol!r}")
        n = Xv.shape[0]
        rng = check_random_state(self.random_state)
        s = np.full(n, UNLABELLED, dtype=np.int64) if seeds is None else check_seeds(seeds, n)
        Xc = np.ascontiguousarray(Xv)
        labels, C, classes, n_iter = seeded_kmeans(
            Xc,
            s,
            int(self.n_clusters),
            constrained=bool(self.constrained),
            max_iter=int(self.max_iter),
            rng=rng,
            tol=float(self.tol),
        )
        self.cluster_centers_ = C
        self.labels_ = labels
        self.seed_classes_ = classes
        self.n_iter_ = n_iter
        # Centres are the means of their final members, so the inertia needs no second pass
        # over differences: sum |x|^2 - sum_k n_k |c_k|^2.
        counts = np.bincount(labels, minlength=C.shape[0]).astype(np.float64)
        sq_total = float(np.einsum("ij,ij->", Xc, Xc, dtype=np.float64))
        c64 = C.astype(np.float64)
        self.inertia_ = max(sq_total - float(counts @ np.einsum("ij,ij->i", c64, c64)), 0.0)
        return self

    def predict(self, X: npt.ArrayLike) -> IntArray:
        """Index of the nearest cluster centre for each sample, shape (n_samples,)."""
        check_is_fitted(self)
        Xv: FloatArray = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        C = self.cluster_centers_.astype(Xv.dtype)
        scores = Xv @ C.T - 0.5 * np.einsum("ij,ij->i", C, C)
        return np.asarray(np.argmax(scores, axis=1), dtype=np.int64)

    def fit_predict(
        self, X: npt.ArrayLike, y: object = None, seeds: npt.ArrayLike | None = None
    ) -> IntArray:
        return self.fit(X, y, seeds=seeds).labels_
