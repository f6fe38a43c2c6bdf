"""The Lloyd kernels and the scikit-learn estimator: contract, toy cases, and a property test
that both kernels and scikit-learn's KMeans give the same answer on many random problems."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from histosic.cluster.estimator import SeededKMeans
from histosic.cluster.kmeans import centroid_confidence, col_sums, lloyd, lloyd2, sq_norms
from histosic.errors import InvalidInputError


@parametrize_with_checks([SeededKMeans(), SeededKMeans(constrained=True, n_clusters=3)])  # type: ignore[untyped-decorator]
def test_sklearn_estimator_contract(estimator: SeededKMeans, check: Callable[[Any], None]) -> None:
    check(estimator)


def test_seeded_kmeans_hand_computed() -> None:
    X = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    seeds = np.array([0, -1, -1, -1, -1, 1])
    km = SeededKMeans().fit(X, seeds=seeds)
    assert km.labels_.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(km.cluster_centers_.ravel(), [1.0, 11.0])
    assert km.inertia_ == pytest.approx(4.0)
    assert km.predict(np.array([[4.0], [7.0]])).tolist() == [0, 1]


def test_seeded_vs_constrained_kmeans() -> None:
    # A seed of class 0 placed (by mistake) among class-1 points: Seeded-KMeans moves it,
    # Constrained-KMeans keeps it pinned.
    X = np.array([[0.0], [0.5], [1.0], [10.0], [10.5], [11.0]])
    seeds = np.array([0, -1, -1, 0, -1, 1])
    free = SeededKMeans().fit(X, seeds=seeds)
    pinned = SeededKMeans(constrained=True).fit(X, seeds=seeds)
    assert free.labels_[3] == 1
    assert pinned.labels_[3] == 0
    assert pinned.labels_[5] == 1


def test_seeded_kmeans_starts_at_seed_means() -> None:
    # With max_iter=1 the labels are the assignment to the initial (seed-mean) centres.
    X = np.array([[0.0], [4.0], [6.0], [10.0]])
    km = SeededKMeans(max_iter=1).fit(X, seeds=np.array([0, 0, -1, 1]))
    # centres 2 and 10: 6 is equidistant-ish -> closer to 2 (distance 4 vs 4 -> argmax picks first)
    assert km.labels_.tolist()[:2] == [0, 0]
    assert km.labels_[3] == 1


def test_fewer_patches_than_clusters() -> None:
    with pytest.raises(InvalidInputError, match="smaller than the number of clusters"):
        SeededKMeans(n_clusters=3).fit(np.zeros((2, 2)))


def test_predict_before_fit() -> None:
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        SeededKMeans().predict(np.zeros((2, 2)))


# --------------------------------------------------------------------------------------------
# One stopping rule for both kernels, checked against scikit-learn
#
# The problems are float64: in float32 the two kernels round the distances differently (a matrix
# product against both centres in `lloyd`, one margin x.(c1 - c0) - b in `lloyd2`), so a point
# within rounding of the boundary can go either way (one problem in about 300 of these sizes),
# and scikit-learn, which centres the data first, rounds differently again. In float64 such
# near-ties do not occur at these sizes, so the answers must agree exactly.

N_PROBLEMS = 200


def _problem(
    rng: np.random.Generator, k: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """n up to 3,000 points in up to 64 dimensions; k overlapping blobs (or none at all), and
    initial centres as seeded k-means makes them (means of a few points) or random rows."""
    n = int(rng.integers(20, 3001))
    d = int(rng.integers(1, 65))
    kind = int(rng.integers(3))
    if kind == 0:  # structureless: many points near the boundary, many iterations
        X = rng.normal(size=(n, d))
        init = X[rng.choice(n, k, replace=False)].copy()
        return X, init
    centres = rng.normal(0, rng.uniform(0.3, 3.0), (k, d))
    y = rng.integers(k, size=n)
    X = centres[y] + rng.normal(size=(n, d))
    init = np.stack(
        [
            X[rng.choice(np.flatnonzero(y == c), 3)].mean(axis=0) if np.any(y == c) else X[c]
            for c in range(k)
        ]
    )
    return X, init


@pytest.mark.parametrize("tol", [0.0, 1e-4])
@pytest.mark.parametrize("constrained", [False, True])
def test_two_cluster_kernel_matches_general_kernel(constrained: bool, tol: float) -> None:
    rng = np.random.default_rng(20)
    for trial in range(N_PROBLEMS):
        X, init = _problem(rng, 2)
        kw: dict[str, Any] = {}
        if constrained:
            idx = rng.choice(X.shape[0], 6, replace=False)
            kw = {"pinned_idx": idx, "pinned_lab": (np.arange(6) % 2).astype(np.int64)}
        a_lab, a_c, a_it = lloyd(X, init, max_iter=300, tol=tol, **kw)
        b_lab, b_c, b_it = lloyd2(X, init, max_iter=300, tol=tol, **kw)
        assert np.array_equal(a_lab, b_lab), f"problem {trial}: labels differ"
        assert a_it == b_it, f"problem {trial}: {a_it} vs {b_it} iterations"
        np.testing.assert_allclose(a_c, b_c, rtol=1e-9, atol=1e-9)
        if constrained:
            assert np.array_equal(a_lab[kw["pinned_idx"]], kw["pinned_lab"]), trial


@pytest.mark.parametrize("tol", [0.0, 1e-4])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_kernels_match_scikit_learn_kmeans(k: int, tol: float) -> None:
    # The same rule as scikit-learn for any tol: the same iterations and centres. With tol > 0
    # scikit-learn then re-assigns the labels from the final centres; histosic returns the labels
    # the final centres are the means of, so only tol=0 (a fixed point) compares labels.
    from sklearn.cluster import KMeans

    kernel = lloyd2 if k == 2 else lloyd
    rng = np.random.default_rng(30 + k)
    for trial in range(N_PROBLEMS // 2):
        X, init = _problem(rng, k)
        labels, centres, n_iter = kernel(X, init, max_iter=300, tol=tol)
        if np.bincount(labels, minlength=k).min() == 0:
            continue  # an emptied cluster: scikit-learn relocates it, histosic keeps its centre
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
            km = KMeans(k, init=init, n_init=1, tol=tol, algorithm="lloyd", max_iter=300).fit(X)
        if tol == 0:
            assert np.array_equal(labels, km.labels_), f"problem {trial}: labels differ"
        assert n_iter == km.n_iter_, f"problem {trial}"
        np.testing.assert_allclose(centres, km.cluster_centers_, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel", [lloyd, lloyd2])
def test_tolerance_stops_on_the_centre_shift(kernel: Callable[..., Any]) -> None:
    # A positive tol stops as soon as the centres move less than it; both kernels count alike.
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2000, 8))
    init = X[:2].copy()
    _, _, n_fixed = kernel(X, init, max_iter=300, tol=0.0)
    _, _, n_tol = kernel(X, init, max_iter=300, tol=1e-2)
    assert 1 <= n_tol < n_fixed
    assert lloyd(X, init, max_iter=300, tol=1e-2)[2] == lloyd2(X, init, max_iter=300, tol=1e-2)[2]


def test_estimator_tol_is_validated() -> None:
    with pytest.raises(InvalidInputError, match="tol must be a number >= 0"):
        SeededKMeans(tol=-1.0).fit(np.zeros((4, 2)))


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("with_totals", [False, True])
def test_centroid_confidence_matches_the_plain_formula(n_classes: int, with_totals: bool) -> None:
    """The gathered class sums (largest class = column sums minus the others) and the blocked
    products give the confidence of the plain formula, for balanced and very unbalanced classes."""
    rng = np.random.default_rng(3)
    n, d = 5000, 24
    X = rng.normal(size=(n, d)).astype(np.float32)
    # One class with most patches, others small (the gather path), and one mid-sized class.
    p = np.r_[0.7, np.full(n_classes - 1, 0.3 / (n_classes - 1))]
    labels = rng.choice(n_classes, size=n, p=p).astype(np.int64)
    classes = list(range(n_classes))
    C = np.stack([X[labels == c].astype(np.float64).mean(0) for c in classes])
    dist = np.sqrt(((X[:, None, :].astype(np.float64) - C[None]) ** 2).sum(-1))
    own = dist[np.arange(n), labels]
    dist[np.arange(n), labels] = np.inf
    other = dist.min(1)
    expected = other / (own + other)
    kw = {}
    if with_totals:
        kw = {"sq_norms_X": sq_norms(X), "total": col_sums(X)}
    got = centroid_confidence(X, labels, classes, **kw)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
