"""Colour view: one RGB colour per patch from a 3-D UMAP (or PCA) of its embedding.

After the paper's section 2.2 and histology-umap: similar tissue gets similar colours, so a glance
at the slide shows its structure before any seed is placed. UMAP on every patch costs about 37 s
for 100k patches here plus its compilation, so :func:`patch_colors` fits UMAP on a random subsample
(``max_fit`` patches, after a PCA to ``pca_dims`` dimensions) and places every other patch at the
distance-weighted mean position of its nearest fitted neighbours. ``benchmarks/bench_colors.py``
measures what that trades (trustworthiness against full UMAP).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from histosic.errors import InvalidInputError

if TYPE_CHECKING:
    from histosic.store import Embeddings

__all__ = [
    "COLOR_METHODS",
    "colors_geojson",
    "embed_3d",
    "patch_colors",
    "render_colors",
    "scale_to_rgb",
]

log = logging.getLogger(__name__)

COLOR_METHODS = ("umap", "pca")


def _check_features(features: npt.ArrayLike) -> npt.NDArray[np.float32]:
    X = np.asarray(features, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise InvalidInputError(f"features must be a non-empty 2-D (n, dim) array, got {X.shape}")
    if not np.isfinite(X).all():
        raise InvalidInputError("features contain NaN or infinity; recompute the embeddings")
    return X


def _pca(
    X: npt.NDArray[np.float32], dims: int, random_state: int, max_fit: int
) -> npt.NDArray[np.float32]:
    from sklearn.decomposition import PCA

    n, d = X.shape
    m = min(dims, d, n)
    rng = np.random.default_rng(random_state)
    fit = X if n <= max_fit else X[rng.choice(n, max_fit, replace=False)]
    m = min(m, fit.shape[0])
    pca = PCA(
        n_components=m,
        svd_solver="randomized" if m < min(fit.shape) else "full",
        random_state=random_state,
    )
    pca.fit(fit)
    return np.asarray(pca.transform(X), dtype=np.float32)


def embed_3d(
    features: npt.ArrayLike,
    *,
    method: str = "umap",
    random_state: int = 0,
    max_fit: int = 5000,
    pca_dims: int = 32,
    n_neighbors: int = 15,
    n_epochs: int = 200,
) -> npt.NDArray[np.float32]:
    """Three coordinates per patch (before scaling to colours).

    Parameters
    ----------
    features : array-like of shape (n, dim)
    method : {"umap", "pca"}, default "umap"
    random_state : int, default 0
        Same inputs and random_state give the same coordinates.
    max_fit : int, default 5000
        UMAP is fitted on at most this many random patches; the others are placed by their 5
        nearest fitted neighbours (inverse-distance weights) in the PCA space.
    pca_dims : int, default 32
        PCA dimensions UMAP works in (denoises and speeds up the neighbour search).
    n_neighbors : int, default 15
        UMAP's neighbourhood size.
    n_epochs : int, default 200
        UMAP optimisation epochs.

    Returns
    -------
    ndarray of shape (n, 3), float32
    """
    X = _check_features(features)
    if method not in COLOR_METHODS:
        raise InvalidInputError(f"unknown colour method {method!r}; choose one of {COLOR_METHODS}")
    if max_fit < 10:
        raise InvalidInputError(f"max_fit must be at least 10 patches, got {max_fit}")
    n = X.shape[0]
    if method == "pca" or n < 8:
        Z = _pca(X, 3, random_state, max(max_fit, 20000))
        if Z.shape[1] < 3:
            Z = np.pad(Z, ((0, 0), (0, 3 - Z.shape[1])))
        return Z
    try:
        import umap
    except ImportError as err:
        from histosic.errors import ModelUnavailableError

        raise ModelUnavailableError(
            "the UMAP colour view needs umap-learn: pip install 'histosic[colors]', or use "
            "method='pca'"
        ) from err
    from sklearn.neighbors import NearestNeighbors

    t0 = time.perf_counter()
    Z = _pca(X, pca_dims, random_state, max(max_fit, 20000))
    rng = np.random.default_rng(random_state)
    fit_idx = np.sort(rng.choice(n, max_fit, replace=False)) if n > max_fit else np.arange(n)
    Zf = Z[fit_idx]
    k = min(n_neighbors, Zf.shape[0] - 1)
    # Exact neighbours from scikit-learn instead of pynndescent: on a few thousand points it is
    # faster and skips pynndescent's numba compilation (about 20 s per process here).
    nn = NearestNeighbors(n_neighbors=k).fit(Zf)
    dist, ind = nn.kneighbors(Zf)
    reducer = umap.UMAP(
        n_components=3,
        n_neighbors=k,
        n_epochs=n_epochs,
        random_state=random_state,
        precomputed_knn=(ind, dist, None),
        init="spectral" if Zf.shape[0] > 10 else "random",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs/random_state and disconnected-graph notices
        Ef = np.asarray(reducer.fit_transform(Zf), dtype=np.float32)
    if fit_idx.size == n:
        out = Ef
    else:
        d, i = NearestNeighbors(n_neighbors=5).fit(Zf).kneighbors(Z)
        w = 1.0 / (d + 1e-6)
        out = np.asarray(
            np.einsum("nk,nkc->nc", w, Ef[i]) / w.sum(axis=1, keepdims=True), np.float32
        )
        out[fit_idx] = Ef
    log.debug(
        "UMAP colours of %d patches (fit on %d) in %.1f s",
        n,
        fit_idx.size,
        time.perf_counter() - t0,
    )
    return out


def scale_to_rgb(
    coords: npt.ArrayLike, *, lower: float = 1.0, upper: float = 99.0
) -> npt.NDArray[np.uint8]:
    """Scale each of three coordinates to 0..255 between its ``lower`` and ``upper`` percentiles.

    Percentiles rather than min/max so that a few outlying patches do not wash out the rest.
    """
    C = np.asarray(coords, dtype=np.float64)
    if C.ndim != 2 or C.shape[1] != 3:
        raise InvalidInputError(f"expected (n, 3) coordinates, got shape {C.shape}")
    lo = np.percentile(C, lower, axis=0)
    hi = np.percentile(C, upper, axis=0)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    return np.asarray(np.clip((C - lo) / span, 0.0, 1.0) * 255.0 + 0.5, dtype=np.uint8)


def patch_colors(
    features: npt.ArrayLike,
    *,
    method: str = "umap",
    random_state: int = 0,
    max_fit: int = 5000,
) -> npt.NDArray[np.uint8]:
    """One RGB colour per patch: a 3-D UMAP (or PCA) of the features scaled to 0..255.

    Parameters
    ----------
    features : array-like of shape (n, dim)
    method : {"umap", "pca"}, default "umap"
    random_state : int, default 0
    max_fit : int, default 5000
        UMAP fit subsample size (see :func:`embed_3d`).

    Returns
    -------
    ndarray of shape (n, 3), uint8
    """
    return scale_to_rgb(
        embed_3d(features, method=method, random_state=random_state, max_fit=max_fit)
    )


def colors_geojson(
    emb: Embeddings, colors: npt.ArrayLike, *, method: str = "umap"
) -> dict[str, Any]:
    """QuPath detections, one per patch (its central stride x stride cell), coloured.

    QuPath reads ``properties.color`` as the object's own colour; the three colour channels are
    also stored as measurements (``histosic: <method> 1..3``) so they can be plotted in QuPath.
    """
    from histosic.outputs.geojson import tile_polygons, uuid4_strings

    c = np.asarray(colors)
    if c.shape != (emb.n_patches, 3):
        raise InvalidInputError(f"colors must have shape ({emb.n_patches}, 3), got {c.shape}")
    boxes = np.round(tile_polygons(emb), 2).tolist()
    rgb = c.astype(int).tolist()
    label = method.upper()
    features: list[dict[str, Any]] = []
    ids = uuid4_strings(emb.n_patches)
    for (x0, y0, x1, y1), col, fid in zip(boxes, rgb, ids, strict=True):
        features.append(
            {
                "type": "Feature",
                "id": fid,
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
                },
                "properties": {
                    "objectType": "detection",
                    "color": col,
                    "measurements": {
                        f"histosic: {label} R": col[0],
                        f"histosic: {label} G": col[1],
                        f"histosic: {label} B": col[2],
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def render_colors(
    emb: Embeddings,
    colors: npt.ArrayLike,
    *,
    max_size: int = 1024,
    background: npt.NDArray[np.uint8] | None = None,
    alpha: float = 0.75,
) -> npt.NDArray[np.uint8]:
    """Paint each patch's central cell in its colour on a white (or given) image.

    Painted by :func:`histosic.outputs.raster.paint_patches`; write the result with
    :func:`histosic.outputs.raster.write_png`.

    Parameters
    ----------
    emb : Embeddings
    colors : array-like of shape (n, 3), uint8
    max_size : int, default 1024
        Longer side of the image when ``background`` is None.
    background : ndarray of shape (h, w, 3), optional
        A slide thumbnail to paint over (any size with the slide's aspect ratio).
    alpha : float, default 0.75
        Opacity of the colours over ``background``.

    Returns
    -------
    ndarray of shape (h, w, 3), uint8
    """
    from histosic.outputs.raster import composite, paint_patches

    c = np.asarray(colors)
    if c.shape != (emb.n_patches, 3):
        raise InvalidInputError(f"colors must have shape ({emb.n_patches}, 3), got {c.shape}")
    W, H = emb.meta.level0_width, emb.meta.level0_height
    if background is not None:
        base = np.asarray(background, dtype=np.uint8)[..., :3]
        h, w = base.shape[:2]
    else:
        s = max_size / max(W, H, 1)
        w, h = max(1, round(W * s)), max(1, round(H * s))
        base = np.full((h, w, 3), 255, dtype=np.uint8)
    a = alpha if background is not None else 1.0
    rgba = np.empty((emb.n_patches, 4), dtype=np.uint8)
    rgba[:, :3] = np.clip(c, 0, 255).astype(np.uint8)
    rgba[:, 3] = int(round(255 * a))
    layer = paint_patches(emb, rgba, (w, h), (w / max(W, 1), h / max(H, 1)))
    return composite(base, layer)
