"""The clustering engine (histosic.cluster.seeded_clustering): toy cases, blobs, stopping rules,
preprocessing, suggestions, bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from histosic.cluster import (
    METHODS,
    PAPER_PREPROCESS,
    Preprocess,
    grid_pieces,
    preprocess_features,
    seeded_clustering,
    suggest_seeds,
)
from histosic.errors import HistosicError, InvalidInputError


def _blobs(
    sizes: tuple[int, ...], dim: int = 16, sep: float = 6.0, seed: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    parts, ys = [], []
    for c, size in enumerate(sizes):
        centre = np.zeros(dim)
        centre[c % dim] = sep
        parts.append(rng.normal(size=(size, dim)) + centre)
        ys.append(np.full(size, c))
    return np.vstack(parts).astype(np.float32), np.concatenate(ys).astype(np.int64)


def _pick_seeds(y: npt.NDArray[np.int64], per_class: int, seed: int = 0) -> npt.NDArray[np.int64]:
    rng = np.random.default_rng(seed)
    s = np.full(y.shape[0], -1, dtype=np.int64)
    for c in np.unique(y):
        idx = rng.choice(np.flatnonzero(y == c), per_class, replace=False)
        s[idx] = c
    return s


@pytest.mark.parametrize("method", METHODS)
def test_blobs_binary_known_answer(method: str) -> None:
    X, y = _blobs((600, 150))
    s = _pick_seeds(y, 3)
    r = seeded_clustering(X, s, method=method, positive=1, stop="strict", random_state=0)
    assert r.labels.shape == (750,)
    assert r.classes == (0, 1)
    assert r.positive == 1
    assert np.mean(r.labels == y) > 0.97
    assert r.score == pytest.approx(1.0)
    assert r.confidence.shape == (750,)
    assert np.all((r.confidence >= 0) & (r.confidence <= 1))
    assert r.history and r.history[0].accepted


@pytest.mark.parametrize("method", METHODS)
def test_blobs_multiclass(method: str) -> None:
    X, y = _blobs((300, 200, 100))
    s = _pick_seeds(y, 3)
    r = seeded_clustering(X, s, method=method, stop="strict", random_state=0)
    assert r.positive is None
    assert r.classes == (0, 1, 2)
    assert np.mean(r.labels == y) > 0.95


def _stopping_problem() -> tuple[
    npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.bool_]
]:
    """Negative blob A, positive blob B made of two tight halves, and a blob C near B.

    Seeds: negatives in A and in C, positives all in B's first half. Split 0 gives A | B+C;
    split 1 (both seed classes inside) separates C from B and raises F1; split 2 (positive seeds
    only) cuts B into its halves, which leaves the seed F1 unchanged (a tie).
    """
    rng = np.random.default_rng(1)
    A = rng.normal(0, 0.3, (200, 2)) + [0, 0]
    B1 = rng.normal(0, 0.05, (60, 2)) + [8, 0]
    B2 = rng.normal(0, 0.05, (60, 2)) + [8, 1.5]
    C = rng.normal(0, 0.2, (80, 2)) + [5, 0.75]
    X = np.vstack([A, B1, B2, C])
    s = np.full(X.shape[0], -1, dtype=np.int64)
    s[[0, 1, 2]] = 0
    s[[320, 321]] = 0  # in C
    s[[200, 201, 202]] = 1  # in B1
    in_b = np.zeros(X.shape[0], bool)
    in_b[200:320] = True
    return X, s, in_b


def test_stop_strict_keeps_labelling_before_a_tie() -> None:
    X, s, in_b = _stopping_problem()
    r = seeded_clustering(
        X, s, method="sic", stop="strict", preprocess=PAPER_PREPROCESS, random_state=0
    )
    assert np.array_equal(r.labels == 1, in_b)
    branches = [(st.branch, st.accepted) for st in r.history]
    assert branches[0] == ("seeded-kmeans", True)
    assert branches[1] == ("seeded-kmeans", True)  # C split off: F1 up
    assert branches[2] == ("kmeans", False)  # tie rejected by the strict rule
    assert r.history[1].score > r.history[0].score


def test_stop_drop_accepts_ties_as_in_the_paper() -> None:
    X, s, in_b = _stopping_problem()
    r = seeded_clustering(
        X, s, method="sic", stop="drop", preprocess=PAPER_PREPROCESS, random_state=0
    )
    pos = r.labels == 1
    assert pos[[200, 201, 202]].all()
    assert pos.sum() < in_b.sum()  # the positive cluster kept shrinking on ties
    assert np.all(pos <= in_b)
    assert any(st.branch == "kmeans" and st.accepted for st in r.history)


def test_max_depth_zero_is_plain_seeded_kmeans() -> None:
    X, s, _ = _stopping_problem()
    r = seeded_clustering(X, s, method="sic", max_depth=0, preprocess=PAPER_PREPROCESS)
    r2 = seeded_clustering(X, s, method="seeded-kmeans", preprocess=PAPER_PREPROCESS)
    assert np.array_equal(r.labels, r2.labels)
    assert len(r.history) == 1


def test_determinism() -> None:
    X, y = _blobs((400, 200), dim=8, sep=2.0, seed=3)
    s = _pick_seeds(y, 2, seed=1)
    for method in METHODS:
        a = seeded_clustering(X, s, method=method, random_state=7)
        b = seeded_clustering(X, s, method=method, random_state=7)
        assert np.array_equal(a.labels, b.labels), method
        assert np.allclose(a.confidence, b.confidence), method


def test_callable_metric_and_other_class_ids() -> None:
    X, y = _blobs((200, 100))
    ids = np.where(y == 1, 7, 3)
    s = np.where(_pick_seeds(y, 2) >= 0, ids, -1)
    calls: list[int] = []

    def metric(t: npt.NDArray[np.int64], p: npt.NDArray[np.int64]) -> float:
        calls.append(1)
        return float(np.mean(t == p))

    r = seeded_clustering(X, s, method="sic", positive=7, metric=metric, stop="strict")
    assert set(np.unique(r.labels)) == {3, 7}
    assert calls
    assert np.mean(r.labels == ids) > 0.97


def test_nuisance_regression_removes_tissue_direction() -> None:
    rng = np.random.default_rng(0)
    n = 500
    tissue = rng.uniform(0.5, 1.0, n)
    white = 1 - tissue + rng.normal(0, 0.01, n)
    signal = rng.normal(size=(n, 4))
    X = signal.copy()
    X[:, 0] += 10 * tissue
    out = preprocess_features(
        X, nuisance=np.c_[tissue, white], config=Preprocess(regress_nuisance=True, smooth_radius=0)
    )
    assert abs(np.corrcoef(out[:, 0], tissue)[0, 1]) < 0.05
    assert abs(np.corrcoef(X[:, 0], tissue)[0, 1]) > 0.7
    # columns without the nuisance are left (almost) as they were
    for j in range(1, 4):
        assert np.corrcoef(out[:, j], X[:, j])[0, 1] > 0.99


def test_grid_smoothing_is_a_neighbourhood_mean() -> None:
    # 3x3 grid, value = index; centre patch averages all nine, a corner its four.
    grid = np.array([(c, r) for r in range(3) for c in range(3)], dtype=np.int64)
    X = np.arange(9, dtype=np.float64)[:, None]
    out = preprocess_features(
        X, grid=grid, config=Preprocess(regress_nuisance=False, smooth_radius=1)
    )
    assert out[4, 0] == pytest.approx(4.0)
    assert out[0, 0] == pytest.approx((0 + 1 + 3 + 4) / 4)
    # missing neighbours are skipped, not zero-filled
    keep = np.array([0, 1, 3])
    out2 = preprocess_features(
        X[keep], grid=grid[keep], config=Preprocess(regress_nuisance=False, smooth_radius=1)
    )
    assert out2[0, 0] == pytest.approx((0 + 1 + 3) / 3)


def test_l2_and_pca() -> None:
    X, _ = _blobs((50, 50), dim=8)
    out = preprocess_features(X, config=Preprocess(l2_normalize=True, pca_components=3))
    assert out.shape == (100, 3)
    out2 = preprocess_features(X, config=Preprocess(l2_normalize=True))
    np.testing.assert_allclose(np.linalg.norm(out2, axis=1), 1.0, rtol=1e-5)


def test_preprocessing_fixes_a_tissue_fraction_nuisance() -> None:
    # Tumour signal is weak; a strong tissue-fraction direction dominates raw k-means.
    rng = np.random.default_rng(2)
    n_side = 30
    grid = np.array([(c, r) for r in range(n_side) for c in range(n_side)], dtype=np.int64)
    y = (grid[:, 0] >= 15).astype(np.int64)
    tissue = rng.uniform(0.5, 1.0, grid.shape[0])
    white = 1 - tissue
    X = rng.normal(size=(grid.shape[0], 16))
    X[:, 0] += 1.5 * y
    X[:, 1] += 12 * tissue
    s = _pick_seeds(y, 3, seed=4)
    raw = seeded_clustering(X, s, method="sic", preprocess=PAPER_PREPROCESS, stop="strict")
    clean = seeded_clustering(
        X, s, method="sic", nuisance=np.c_[tissue, white], grid=grid, stop="strict"
    )
    acc_raw = np.mean(raw.labels == y)
    acc_clean = np.mean(clean.labels == y)
    assert acc_clean > 0.9
    assert acc_clean > acc_raw + 0.1


def test_suggest_seeds_uncertain_unseeded_and_spread() -> None:
    X, y = _blobs((300, 300), dim=4, sep=2.0)
    grid = np.array([(i % 30, i // 30) for i in range(600)], dtype=np.int64)
    s = _pick_seeds(y, 2)
    r = seeded_clustering(X, s, method="logreg", preprocess=PAPER_PREPROCESS)
    picks = suggest_seeds(r, 5, grid=grid)
    assert picks.shape == (5,)
    assert len(set(picks.tolist())) == 5
    assert np.all(s[picks] == -1)
    # each pick is among the 10% least confident unseeded patches
    unseeded = np.flatnonzero(s < 0)
    cutoff = np.quantile(r.confidence[unseeded], 0.1)
    assert np.all(r.confidence[picks] <= cutoff + 1e-12)
    # spread: not all in one grid neighbourhood
    g = grid[picks]
    assert np.ptp(g[:, 0]) + np.ptp(g[:, 1]) > 3
    plain = suggest_seeds(r, 5)
    assert np.all(r.confidence[plain][:-1] <= r.confidence[plain][1:] + 1e-12)
    assert suggest_seeds(r, 0).size == 0


BAD: list[tuple[str, Any, Any, dict[str, Any], str]] = [
    ("nan", np.array([[0.0, np.nan], [1.0, 1.0]]), np.array([0, 1]), {}, "NaN"),
    ("inf", np.array([[0.0, np.inf], [1.0, 1.0]]), np.array([0, 1]), {}, "infinite"),
    ("1d X", np.zeros(4), np.array([0, 1, -1, -1]), {}, "2-D"),
    ("empty X", np.zeros((0, 3)), np.zeros(0, int), {}, "empty"),
    ("seed length", np.zeros((4, 2)), np.array([0, 1]), {}, "length n_patches=4"),
    ("one class", np.zeros((4, 2)), np.array([1, 1, -1, -1]), {}, "only class 1"),
    ("no seeds", np.zeros((4, 2)), np.array([-1, -1, -1, -1]), {}, "no seeds"),
    ("below -1", np.zeros((4, 2)), np.array([0, 1, -2, -1]), {}, "-2"),
    ("float seeds", np.zeros((4, 2)), np.array([0, 1, 0.5, -1]), {}, "integer"),
    (
        "positive unseeded",
        np.zeros((4, 2)),
        np.array([0, 2, -1, -1]),
        {"positive": 1},
        "positive class 1",
    ),
    (
        "method",
        np.zeros((4, 2)),
        np.array([0, 1, -1, -1]),
        {"method": "magic"},
        "unknown method 'magic'",
    ),
    (
        "metric",
        np.zeros((4, 2)),
        np.array([0, 1, -1, -1]),
        {"metric": "auc"},
        "unknown metric 'auc'",
    ),
    ("stop", np.zeros((4, 2)), np.array([0, 1, -1, -1]), {"stop": "never"}, "stop must be"),
    ("strings", np.array([["a", "b"], ["c", "d"]]), np.array([0, 1]), {}, "numeric"),
]


@pytest.mark.parametrize(("name", "X", "seeds", "kwargs", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_input(name: str, X: Any, seeds: Any, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidInputError, match=None) as info:
        seeded_clustering(X, seeds, **kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, HistosicError)


@pytest.mark.parametrize(("n_classes", "per_class"), [(2, 1), (2, 5), (3, 3)])
def test_logreg_matches_scikit_learn(n_classes: int, per_class: int) -> None:
    # The numpy solver minimises scikit-learn's objective; both optima agree up to its tolerance.
    from sklearn.linear_model import LogisticRegression

    X, y = _blobs(tuple([400] * n_classes), dim=32, sep=1.5, seed=5)
    s = _pick_seeds(y, per_class, seed=2)
    r = seeded_clustering(X, s, method="logreg", preprocess=PAPER_PREPROCESS)
    Z = X - X.mean(axis=0)
    Z = Z / np.sqrt(np.mean(Z.astype(np.float64) ** 2))
    clf = LogisticRegression(C=0.1, class_weight="balanced", max_iter=1000)
    clf.fit(Z[s >= 0], s[s >= 0])
    proba = clf.predict_proba(Z)
    assert np.mean(r.labels == clf.classes_[proba.argmax(axis=1)]) > 0.99
    np.testing.assert_allclose(r.confidence, proba.max(axis=1), atol=5e-3)


def test_center_pieces_removes_per_piece_offsets() -> None:
    # Two tissue pieces (separated on the grid), each half tumour; piece 2 has a strong stain
    # offset that a global split would follow instead of tumour.

    rng = np.random.default_rng(3)
    left = np.array([(c, r) for r in range(10) for c in range(10)])
    right = left + [20, 0]
    grid = np.vstack([left, right]).astype(np.int64)
    pieces = grid_pieces(grid)
    assert set(pieces[:100]) == {0} and set(pieces[100:]) == {1}
    y = np.r_[left[:, 0] >= 5, right[:, 0] >= 25].astype(np.int64)
    X = rng.normal(size=(200, 8))
    X[:, 0] += 3.0 * y
    X[100:, 1] += 8.0  # stain offset of the second piece
    s = np.full(200, -1, dtype=np.int64)
    s[[5, 15]] = 1  # tumour seeds only in piece 1
    s[[0, 10]] = 0
    plain = Preprocess(regress_nuisance=False, smooth_radius=0)
    centred = Preprocess(regress_nuisance=False, smooth_radius=0, center_pieces=True)
    out = preprocess_features(X, grid=grid, config=centred)
    np.testing.assert_allclose(out[:100].mean(axis=0), out[100:].mean(axis=0), atol=1e-9)
    a = seeded_clustering(X, s, method="seeded-kmeans", grid=grid, preprocess=plain)
    b = seeded_clustering(X, s, method="seeded-kmeans", grid=grid, preprocess=centred)
    assert np.mean(b.labels[100:] == y[100:]) > np.mean(a.labels[100:] == y[100:]) + 0.2
