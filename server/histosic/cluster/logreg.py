"""L2-regularised logistic regression on the seed patches, solved in kernel form with numpy.

The model of ``sklearn.linear_model.LogisticRegression(C=0.1, class_weight="balanced")``; the
solver here (damped Newton steps on the seed patches' Gram matrix) avoids scikit-learn's import,
which alone takes longer than the whole clustering of a typical slide.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from histosic.cluster.validation import FloatArray, IntArray

__all__ = ["fit_logistic", "logreg"]


def fit_logistic(
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


def logreg(
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
    theta = fit_logistic(Zs @ Zs.T, y, k, C=C, weights=weights)
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
