"""The default ``logreg`` at a bounded cost (issue 15, item 1): the kernel and primal forms agree,
memory does not grow with the square of the seed patches, and the limits are enforced."""

from __future__ import annotations

import tracemalloc

import numpy as np
import numpy.typing as npt
import pytest

from histosic.cluster import PAPER_PREPROCESS, seeded_clustering
from histosic.cluster.logreg import fit_logistic, logreg
from histosic.cluster.options import MAX_CLASSES, MAX_LOGREG_SIZE
from histosic.errors import InvalidInputError, ResourceExhaustedError

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


def _problem(
    n: int, dim: int, k: int, m: int, *, sep: float = 0.6, seed: int = 0
) -> tuple[Floats, Ints, Ints]:
    """Gaussian classes around random centres; ``m`` seeded patches; (X, seeds, truth)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * sep
    y = rng.permutation(np.arange(n) % k).astype(np.int64)
    X = (centres[y] + rng.normal(size=(n, dim))).astype(np.float32)
    s = np.full(n, -1, dtype=np.int64)
    idx = rng.choice(n, m, replace=False)
    s[idx] = y[idx]
    return X, s, y


def _scores(X: Floats, s: Ints, k: int, form: str) -> npt.NDArray[np.float64]:
    """The fitted decision scores of every patch in one form (the test's view of the model)."""
    seeded = np.flatnonzero(s >= 0)
    Z = (X[seeded] - X.mean(axis=0)).astype(np.float64)
    y = s[seeded]
    counts = np.bincount(y, minlength=k).astype(np.float64)
    fit = fit_logistic(Z, y, k, C=0.1, weights=seeded.size / (k * counts[y]), form=form)  # type: ignore[arg-type]
    assert fit.form == form
    F = (X - X.mean(axis=0)).astype(np.float64) @ fit.W + fit.b
    # Multinomial scores are defined up to one constant per patch (the softmax ignores it).
    return np.asarray(F - F.mean(axis=1, keepdims=True) if k > 2 else F)


@pytest.mark.parametrize(
    ("dim", "k", "m"),
    [(64, 2, 30), (16, 2, 400), (64, 3, 40), (12, 4, 300), (300, 3, 100), (100, 3, 2000)],
    ids=["few-binary", "many-binary", "few-3", "many-4", "kernel-cg", "primal-cg"],
)
def test_kernel_and_primal_forms_agree(dim: int, k: int, m: int) -> None:
    # The same strictly convex objective in m or in dim unknowns: one optimum, the same labels
    # (exact Newton steps below DIRECT_UNKNOWNS unknowns, conjugate gradients above: "-cg").
    X, s, _ = _problem(3000, dim, k, m, seed=dim + k)
    kernel = _scores(X, s, k, "kernel")
    primal = _scores(X, s, k, "primal")
    np.testing.assert_allclose(primal, kernel, atol=1e-5 * (1.0 + np.abs(kernel).max()))
    a = logreg(X, s, tuple(range(k)), form="kernel")
    b = logreg(X, s, tuple(range(k)), form="primal")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)


def test_many_seed_patches_match_scikit_learn() -> None:
    # 2,000 seed patches in 3 classes and 24 features: the primal form with conjugate gradients,
    # against scikit-learn's own solver of the same model.
    from sklearn.linear_model import LogisticRegression

    X, s, _ = _problem(4000, 24, 3, 2000, seed=4)
    r = seeded_clustering(X, s, method="logreg", preprocess=PAPER_PREPROCESS)
    Z = X - X.mean(axis=0)
    Z = Z / np.sqrt(np.mean(Z.astype(np.float64) ** 2))
    clf = LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000, tol=1e-10)
    clf.fit(Z[s >= 0], s[s >= 0])
    proba = clf.predict_proba(Z)
    assert np.mean(r.labels == clf.classes_[proba.argmax(axis=1)]) > 0.999
    np.testing.assert_allclose(r.confidence, proba.max(axis=1), atol=2e-3)


def test_memory_does_not_grow_with_the_square_of_the_seeds() -> None:
    # 8,000 seed patches of 32 features: the kernel form held 8,000^2 float64 twice (the Gram
    # matrix and the Newton Hessian, 1 GB); the primal form needs about the seed features.
    X, s, _ = _problem(10_000, 32, 2, 8000, seed=7)
    tracemalloc.start()
    try:
        labels, _ = logreg(X, s, (0, 1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    seed_bytes = 8000 * 32 * 8
    assert peak < 12 * seed_bytes + 5 * X.nbytes, f"peak {peak / 1e6:.0f} MB"
    seeded = s >= 0
    assert np.mean(labels[seeded] == s[seeded]) > 0.9


def test_logreg_size_limit_is_refused_before_any_work() -> None:
    # m x min(m, d) over the limit: refused with the numbers, not computed.
    m = int(np.sqrt(MAX_LOGREG_SIZE)) + 2
    X = np.zeros((m, m), dtype=np.float32)  # zeros: only the shape matters
    s = np.zeros(m, dtype=np.int64)
    s[::2] = 1
    with pytest.raises(ResourceExhaustedError, match=r"^logreg on \d+ seeded patches x \d+") as e:
        logreg(X, s, (0, 1))
    assert "exceeds the limit" in str(e.value) and "\n" not in str(e.value)


def test_too_many_classes_is_invalid_input() -> None:
    k = MAX_CLASSES + 1
    X, s, _ = _problem(4 * k, 4, k, 4 * k, seed=1)  # every patch seeded: every class
    assert len(set(s.tolist())) == k
    with pytest.raises(InvalidInputError, match=rf"^{k} seeded classes; at most {MAX_CLASSES}"):
        seeded_clustering(X, s, method="logreg", preprocess=PAPER_PREPROCESS)


def test_the_largest_class_count_runs() -> None:
    k = MAX_CLASSES
    X, s, y = _problem(20 * k, 8, k, 10 * k, sep=3.0, seed=2)
    r = seeded_clustering(X, s, method="logreg", preprocess=PAPER_PREPROCESS)
    assert len(r.classes) == k
    assert np.mean(r.labels == y) > 0.5
