"""Feature cleaning before clustering: nuisance regression, per-piece centring, grid smoothing.

:class:`Preprocess` names the steps; :data:`PAPER_PREPROCESS` is the paper's raw features. The
steps that need the patch grid use scipy (imported when they run); PCA imports scikit-learn when
asked for.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from histosic.cluster.options import Preprocess
from histosic.cluster.validation import FloatArray, IntArray, check_features
from histosic.errors import InvalidInputError

__all__ = [
    "apply_preprocess",
    "grid_pieces",
    "preprocess_features",
]


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
    return apply_preprocess(check_features(X), nuisance=nuisance, grid=grid, config=config)


def apply_preprocess(
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
            # One new (n, dim) array, filled by the product and added to in place: each fresh
            # array of this size costs its page faults again (out - Zx @ beta made two).
            resid = Zx @ (-beta).astype(out.dtype)
            resid += out
            out = resid
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
