"""L2-regularised logistic regression on the seed patches, with numpy, at a bounded cost.

The model of ``sklearn.linear_model.LogisticRegression(C=0.1, class_weight="balanced")``; the
solver here avoids scikit-learn's import, which alone takes longer than the whole clustering of a
typical slide.

The cost is bounded by design. With ``m`` seed patches (each patch once: :func:`histosic.seeds.
map_seeds` merges the points on one patch), ``d`` features and ``k'`` score columns (1 for two
classes, else ``k``), the problem is solved in one of two forms with the same optimum (the
representer theorem), both with an identity penalty, which keeps the Newton systems well
conditioned:

* the kernel form, ``m`` unknowns per column from the seed patches' inner products, when the seed
  patches are fewer than the features and ``(m + 1) k'`` is at most :data:`DIRECT_UNKNOWNS`: a
  handful of clicks, exact Newton steps on a small dense Hessian;
* the primal form otherwise, ``d`` unknowns per column: exact Newton steps while ``(d + 1) k'`` is
  small, else truncated Newton steps whose conjugate gradients need only products with the
  ``m x d`` seed features.

Memory is ``O(m d)`` plus at most ``DIRECT_UNKNOWNS^2`` numbers, never ``O(m^2)``; each product
costs ``O(m d k')``. :func:`check_size` refuses a problem over
:data:`~histosic.cluster.options.MAX_LOGREG_SIZE` before any copy is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from histosic.cluster.options import MAX_LOGREG_SIZE
from histosic.cluster.validation import FloatArray, IntArray
from histosic.errors import ResourceExhaustedError

__all__ = ["DIRECT_UNKNOWNS", "Fit", "Form", "check_size", "fit_logistic", "logreg"]

F64 = npt.NDArray[np.float64]

#: "auto" = the kernel form for few seed patches (see the module's text), else the primal form.
Form = Literal["auto", "kernel", "primal"]

#: Newton systems up to this many unknowns ((r + 1) x k') are solved exactly (a dense Hessian);
#: larger ones by conjugate gradients, which are cheaper from here on (``bench_seeds.py``).
DIRECT_UNKNOWNS = 200
_GTOL = 1e-9  # stop when the gradient's largest entry is below this (relative to the start)
_MAX_NEWTON = 100
_MAX_CG = 250


@dataclass(frozen=True)
class Fit:
    """A fitted model in the (globally scaled, centred) seed features: ``scores = Z @ W + b``.

    ``W`` has shape (d, k'), ``b`` (k',); ``k' = 1`` for two classes (the score of class 1).
    ``newton`` and ``cg`` count the Newton steps and conjugate-gradient products taken; ``form``
    says which form was solved.
    """

    W: F64
    b: F64
    form: str
    newton: int
    cg: int


class _Loss:
    """The objective ``C * sum_i w_i * loss_i + ||A||^2 / 2`` over ``theta = [A; b]`` for the
    design ``G`` (m x r): binary logistic for two classes, multinomial for more (scikit-learn's;
    intercepts not penalised)."""

    def __init__(self, G: F64, y: IntArray, k: int, cw: F64) -> None:
        self.G, self.k, self.cw = G, k, cw
        self.kc = 1 if k == 2 else k
        self._G2: npt.NDArray[np.float32] | None = None
        Y = (y[:, None] == np.arange(k)[None, :]).astype(np.float64)
        self.Y = Y[:, 1:] if k == 2 else Y
        r = G.shape[1]
        self.pen = np.ones((r + 1, 1))
        self.pen[r] = 1e-12  # the intercept: unpenalised (a tiny ridge keeps systems definite)

    def scores(self, T: F64) -> F64:
        return np.asarray(self.G @ T[:-1] + T[-1])

    def probs(self, F: F64) -> F64:
        if self.k == 2:
            return np.asarray(0.5 * (1.0 + np.tanh(0.5 * F)))
        E = np.exp(F - F.max(axis=1, keepdims=True))
        return np.asarray(E / E.sum(axis=1, keepdims=True))

    def value(self, T: F64) -> float:
        F = self.scores(T)
        if self.k == 2:
            loss = np.logaddexp(0.0, F[:, 0]) - self.Y[:, 0] * F[:, 0]
        else:
            mx = F.max(axis=1)
            loss = mx + np.log(np.exp(F - mx[:, None]).sum(axis=1)) - (F * self.Y).sum(axis=1)
        return float(self.cw @ loss + 0.5 * float(np.sum(self.pen * T * T)))

    def back(self, R: F64) -> F64:
        """``Phi^T R`` for ``Phi = [G, 1]``."""
        return np.vstack([self.G.T @ R, R.sum(axis=0, keepdims=True)])

    def grad(self, T: F64, P: F64) -> F64:
        return self.back(self.cw[:, None] * (P - self.Y)) + self.pen * T

    def hess_vec(self, P: F64, V: F64) -> F64:
        U = self.scores(V)
        if self.k == 2:
            R = (self.cw * P[:, 0] * (1.0 - P[:, 0]))[:, None] * U
        else:
            PU = P * U
            R = self.cw[:, None] * (PU - P * PU.sum(axis=1, keepdims=True))
        return self.back(R) + self.pen * V

    def hess_diag(self, P: F64) -> F64:
        if self._G2 is None:  # the preconditioner needs no more than float32
            self._G2 = np.square(self.G, dtype=np.float32)
        D = P * (1.0 - P) * self.cw[:, None]  # (m, k'): the diagonal blocks' weights
        G2D = self._G2.T @ D.astype(np.float32)
        diag = np.vstack([G2D.astype(np.float64), D.sum(axis=0, keepdims=True)])
        return np.asarray(diag + self.pen)

    def hessian(self, P: F64) -> F64:
        """The dense Hessian, ((r + 1) k')^2 numbers (only for small systems)."""
        m, r1 = self.G.shape[0], self.G.shape[1] + 1
        Phi = np.hstack([self.G, np.ones((m, 1))])
        kc = self.kc
        H = np.zeros((r1 * kc, r1 * kc))
        for a in range(kc):
            for c in range(a, kc):
                if self.k == 2:
                    d = P[:, 0] * (1.0 - P[:, 0])
                else:
                    d = P[:, a] * ((a == c) - P[:, c])
                block = Phi.T @ ((self.cw * d)[:, None] * Phi)
                if a == c:
                    block[np.diag_indices(r1)] += self.pen[:, 0]
                H[a * r1 : (a + 1) * r1, c * r1 : (c + 1) * r1] = block
                H[c * r1 : (c + 1) * r1, a * r1 : (a + 1) * r1] = block.T
        return H


def _cg(loss: _Loss, P: F64, g: F64, tol: float) -> tuple[F64, int]:
    """Preconditioned conjugate gradients for ``H s = g`` (Jacobi preconditioner)."""
    M = loss.hess_diag(P)
    s = np.zeros_like(g)
    r = g.copy()
    z = r / M
    p = z.copy()
    rz = float(np.sum(r * z))
    n = 0
    while n < _MAX_CG:
        n += 1
        Hp = loss.hess_vec(P, p)
        alpha = rz / float(np.sum(p * Hp))
        s += alpha * p
        r -= alpha * Hp
        if float(np.sqrt(np.sum(r * r))) <= tol:
            break
        z = r / M
        rz_new = float(np.sum(r * z))
        p = z + (rz_new / rz) * p
        rz = rz_new
    return s, n


def _newton_step(loss: _Loss, P: F64, g: F64, gnorm: float) -> tuple[F64, int]:
    r1, kc = g.shape
    if r1 * kc <= DIRECT_UNKNOWNS:
        H = loss.hessian(P)
        flat = g.T.reshape(-1)
        try:
            step = np.linalg.solve(H, flat)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(H, flat, rcond=None)[0]
        return np.asarray(step.reshape(kc, r1).T), 0
    # Truncated Newton: solve to a relative accuracy that tightens as the gradient shrinks.
    return _cg(loss, P, g, tol=min(0.1, np.sqrt(gnorm)) * gnorm)


def _minimise(loss: _Loss) -> tuple[F64, int, int]:
    """Damped Newton steps from zero; returns theta ((r + 1) x k'), Newton steps, CG products."""
    theta = np.zeros((loss.G.shape[1] + 1, loss.kc))
    value = loss.value(theta)
    g0 = 0.0
    steps = products = 0
    while steps < _MAX_NEWTON:
        steps += 1
        P = loss.probs(loss.scores(theta))
        g = loss.grad(theta, P)
        gmax = float(np.abs(g).max())
        g0 = g0 or gmax
        if gmax <= _GTOL * max(g0, 1.0):
            break
        step, n_cg = _newton_step(loss, P, g, float(np.sqrt(np.sum(g * g))))
        products += n_cg
        t = 1.0
        slope = float(np.sum(g * step))
        while t > 1e-10:
            cand = theta - t * step
            cand_value = loss.value(cand)
            if cand_value <= value - 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break
        decrease = value - cand_value
        theta, value = cand, cand_value
        if decrease <= 1e-15 * max(1.0, abs(value)):
            break
    return theta, steps, products


def check_size(m: int, d: int, k: int) -> None:
    """Refuse a problem over :data:`~histosic.cluster.options.MAX_LOGREG_SIZE`.

    The size ``m * min(m, d) * k'`` (``k' = 1`` for two classes) bounds the solver's memory
    (``O(m min(m, d))``) and the time of each of its steps.
    """
    size = m * min(m, d) * (1 if k == 2 else k)
    if size > MAX_LOGREG_SIZE:
        classes = "" if k == 2 else f" x {k} classes"
        raise ResourceExhaustedError(
            f"logreg on {m} seeded patches x {min(m, d)} features{classes} = {size:.3g} exceeds "
            f"the limit of {MAX_LOGREG_SIZE:.3g}: seed fewer patches or classes, or reduce the "
            "features (preprocess pca_components)"
        )


def fit_logistic(
    Zs: F64,
    y: IntArray,
    k: int,
    *,
    C: float,
    weights: F64,
    form: Form = "auto",
) -> Fit:
    """L2-regularised logistic regression of ``y`` (class index 0..k-1) on the rows of ``Zs``.

    Minimises ``C * sum_i w_i * loss_i + ||W||^2 / 2`` (scikit-learn's objective). ``form``:
    "kernel" solves in the span of the ``m`` seed patches (``m`` unknowns per class), "primal" in
    the ``d`` features; "auto" takes the kernel form where it has fewer unknowns and those few
    enough for exact Newton steps. Both reach the same optimum.
    """
    m, d = Zs.shape
    check_size(m, d, k)
    kc = 1 if k == 2 else k
    # The kernel form pays only where it makes the Newton systems small enough to solve exactly.
    small = m < d and (m + 1) * kc <= DIRECT_UNKNOWNS
    use_kernel = form == "kernel" or (form == "auto" and small)
    if use_kernel:
        # K = Zs Zs^T = V diag(lam) V^T: G = V sqrt(lam) has the seed patches' inner products
        # (K = G G^T) with an identity penalty, and W = basis A, basis = Zs^T V / sqrt(lam)
        # (orthonormal columns), maps back with ||W|| = ||A||. Directions with lam ~ 0 carry
        # nothing and are dropped. (An eigendecomposition of the small Gram matrix: numpy's QR of
        # Zs^T is as exact but many times slower on a busy machine.)
        lam, V = np.linalg.eigh(Zs @ Zs.T)
        keep = lam > max(float(lam.max(initial=0.0)), 1e-300) * 1e-12
        root = np.sqrt(lam[keep])
        G = np.asarray(V[:, keep] * root)
        basis = np.asarray((Zs.T @ V[:, keep]) / root)
    else:
        G = Zs
    loss = _Loss(np.ascontiguousarray(G), y, k, C * weights)
    theta, steps, products = _minimise(loss)
    W = basis @ theta[:-1] if use_kernel else theta[:-1]
    form_used = "kernel" if use_kernel else "primal"
    return Fit(np.asarray(W), theta[-1].copy(), form_used, steps, products)


def logreg(
    X: FloatArray,
    s: IntArray,
    classes: tuple[int, ...],
    C: float = 0.1,
    *,
    form: Form = "auto",
) -> tuple[IntArray, FloatArray]:
    """L2-regularised logistic regression trained on the seed patches, balanced class weights.

    The same model as ``sklearn.linear_model.LogisticRegression(C=0.1, class_weight="balanced")``
    on globally scaled features, solved with numpy at a cost bounded by ``min(m, d)`` (see the
    module's text).
    """
    seeded = np.flatnonzero(s >= 0)
    check_size(seeded.size, X.shape[1], len(classes))  # before any copy is made
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
    fit = fit_logistic(Zs, y, k, C=C, weights=weights, form=form)
    W = fit.W / scale  # back to X's units: scores = (X - mu) @ W + b
    b = fit.b - mu.astype(np.float64) @ W
    F = X @ W.astype(X.dtype) + b.astype(X.dtype)
    if k == 2:
        p1 = 0.5 * (1.0 + np.tanh(0.5 * F[:, 0].astype(np.float64)))
        idx = (p1 > 0.5).astype(np.int64)
        conf = np.where(idx == 1, p1, 1.0 - p1)
    else:
        Fd = F.astype(np.float64)
        E = np.exp(Fd - Fd.max(axis=1, keepdims=True))
        P = E / E.sum(axis=1, keepdims=True)
        idx = np.argmax(P, axis=1)
        conf = P[np.arange(P.shape[0]), idx]
    return cls[idx], np.asarray(conf, dtype=np.float64)
