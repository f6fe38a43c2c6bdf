"""Stain-robust H&E features: nuclear, intensity and texture statistics without a network.

Each patch (128 px at about 1 um/px, the backbone's input size) is turned into 54 numbers:

- Colour deconvolution (Ruifrok & Johnston, the matrix of ``skimage.color.hed_from_rgb``) of the
  optical density ``OD = -log((rgb + 1) / 256)`` into haematoxylin (H) and eosin (E) density,
  clipped to [0, 2]. The densities are read against a *fixed* reference (1.0 OD), not one estimated
  per slide, so a patch's features do not depend on the other patches (single pass).
- Tissue = not white (min RGB < 220) and OD sum > 0.15. White fraction, lumen (non-tissue)
  fraction, mean OD; mean, SD, median and 90th percentile of H and E on tissue; H share of H + E
  and the H-E correlation (13).
- Nuclei = H smoothed (Gaussian, sigma 1 px) above 0.3, opened with a 3x3 square, 4-connected
  components of at least 10 px. Their area fraction and density on tissue, area mean / SD / 90th
  percentile, eccentricity, solidity mean / SD, nearest-neighbour distance mean / SD, H density
  mean / SD, fraction larger than 60 px, major-axis length and log(1 + count) (15).
- Texture of H quantised to 16 levels: grey-level co-occurrence contrast, homogeneity, energy and
  correlation at distances 1, 2 and 4 px, averaged over four angles (12); uniform local binary
  patterns (8 neighbours, radius 1) histogram (10); and at half resolution (radius 2) the fractions
  of flat, dark-spot, edge and non-uniform patterns (4).

Every feature is divided by a constant (:data:`FEATURE_SCALE`, its spread over real H&E patches),
so the features come out on comparable scales: the downstream classifiers rescale embeddings by
one global factor and need nothing special for this backbone.

The work is NumPy/SciPy on the CPU over whole batches (labelling, component moments and
co-occurrence counts are vectorised across the batch); only the LBP codes go patch by patch. No
torch here: the ``he-features`` backbone of :mod:`histosic.embed` is a thin ``nn.Module`` around
:func:`he_features`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from histosic.errors import InvalidInputError

__all__ = ["DIM", "FEATURE_SCALE", "NAMES", "VERSION", "extract_raw", "he_features"]

FloatArray = npt.NDArray[np.float64]

NAMES: tuple[str, ...] = (
    "white_frac",
    "lumen_frac",
    "od_mean",
    *(f"H_{s}" for s in ("mean", "sd", "p50", "p90")),
    *(f"E_{s}" for s in ("mean", "sd", "p50", "p90")),
    "H_share",
    "HE_corr",
    "nuc_area_frac",
    "nuc_count_dens",
    "nuc_area_mean",
    "nuc_area_sd",
    "nuc_area_p90",
    "nuc_ecc_mean",
    "nuc_sol_mean",
    "nuc_sol_sd",
    "nuc_nn_mean",
    "nuc_nn_sd",
    "nuc_H_mean",
    "nuc_H_sd",
    "nuc_big_frac",
    "nuc_major_mean",
    "nuc_log_count",
    *(f"glcm_{p}_d{d}" for d in (1, 2, 4) for p in ("contrast", "homog", "energy", "corr")),
    *(f"lbp_{i}" for i in range(10)),
    "lbp2_flat",
    "lbp2_spot",
    "lbp2_edge",
    "lbp2_nonuniform",
)
DIM = len(NAMES)
#: Bumped when the features change; part of the backbone's weights id (``he-features:v1``).
VERSION = 1

# The spread of each raw feature, by which it is divided: the pooled within-source standard
# deviation (root mean of the two sources' variances) over label-free tissue patches (at least half
# tissue) of all 98 WSSS4LUAD images (128 px windows at their native ~1 um/px, stride 64; 1536
# patches) and of the DigestPath image 0.jpg (256 px windows at 0.5 um/px, stride 128, resized to
# 128 px; 549 patches). Computed by scripts/he_feature_scales.py; no ground truth used.
FEATURE_SCALE: tuple[float, ...] = (
    0.1254,  # white_frac
    0.1254,  # lumen_frac
    0.2323,  # od_mean
    0.1922,  # H_mean
    0.07961,  # H_sd
    0.215,  # H_p50
    0.2994,  # H_p90
    0.08363,  # E_mean
    0.02845,  # E_sd
    0.0913,  # E_p50
    0.1028,  # E_p90
    0.08079,  # H_share
    0.2002,  # HE_corr
    0.1593,  # nuc_area_frac
    0.8885,  # nuc_count_dens
    3772.0,  # nuc_area_mean
    2070.0,  # nuc_area_sd
    2892.0,  # nuc_area_p90
    0.2046,  # nuc_ecc_mean
    0.05237,  # nuc_sol_mean
    0.03127,  # nuc_sol_sd
    11.11,  # nuc_nn_mean
    5.303,  # nuc_nn_sd
    0.1717,  # nuc_H_mean
    0.06448,  # nuc_H_sd
    0.1819,  # nuc_big_frac
    28.36,  # nuc_major_mean
    0.531,  # nuc_log_count
    3.12,  # glcm_contrast_d1
    0.09792,  # glcm_homog_d1
    0.1311,  # glcm_energy_d1
    0.06866,  # glcm_corr_d1
    4.594,  # glcm_contrast_d2
    0.1069,  # glcm_homog_d2
    0.131,  # glcm_energy_d2
    0.09656,  # glcm_corr_d2
    8.672,  # glcm_contrast_d4
    0.1268,  # glcm_homog_d4
    0.1322,  # glcm_energy_d4
    0.1613,  # glcm_corr_d4
    0.01434,  # lbp_0
    0.01245,  # lbp_1
    0.01048,  # lbp_2
    0.027,  # lbp_3
    0.02727,  # lbp_4
    0.01901,  # lbp_5
    0.01158,  # lbp_6
    0.01659,  # lbp_7
    0.09681,  # lbp_8
    0.02168,  # lbp_9
    0.0584,  # lbp2_flat
    0.02313,  # lbp2_spot
    0.04129,  # lbp2_edge
    0.04697,  # lbp2_nonuniform
)

# Ruifrok & Johnston H&E-DAB deconvolution: the inverse of skimage.color.rgb_from_hed (equal to
# skimage.color.hed_from_rgb); only the H and E columns are used.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_WHITE = 220
_TISSUE_OD = 0.15
_NUCLEUS_H = 0.3
_MIN_NUCLEUS_PX = 10
_BIG_NUCLEUS_PX = 60
_NO_NEIGHBOUR = 64.0
_GLCM_LEVELS = 16
_HULL_DIRECTIONS = 16
# (row, column) offsets of skimage.feature.graycomatrix at angles 0, 45, 90, 135 degrees
# (rounded from distance * (sin, cos)), for distances 1, 2 and 4.
_GLCM_OFFSETS: tuple[tuple[tuple[int, int], ...], ...] = tuple(
    tuple(
        (round(np.sin(a) * d), round(np.cos(a) * d))
        for a in (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
    )
    for d in (1, 2, 4)
)


def _percentile_rows(values: FloatArray, counts: npt.NDArray[np.int64], q: float) -> FloatArray:
    """Per-row percentile (linear interpolation) of the first ``counts[i]`` sorted entries."""
    n = values.shape[0]
    values = np.where(np.isfinite(values), values, 0.0)  # padding beyond counts[i] is unused
    pos = q / 100.0 * np.maximum(counts - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(counts - 1, 0))
    rows = np.arange(n)
    a, b = values[rows, lo], values[rows, hi]
    out = a + (b - a) * (pos - lo)
    return np.where(counts > 0, out, 0.0)


def _masked_stats(v: FloatArray, mask: npt.NDArray[np.bool_]) -> FloatArray:
    """(n, 4): mean, SD, median and 90th percentile of each row's masked values (0 if none)."""
    counts = mask.sum(axis=1)
    c = np.maximum(counts, 1)
    mean = np.where(mask, v, 0.0).sum(axis=1) / c
    var = np.where(mask, (v - mean[:, None]) ** 2, 0.0).sum(axis=1) / c
    ordered = np.sort(np.where(mask, v, np.inf), axis=1)
    p50 = _percentile_rows(ordered, counts, 50.0)
    p90 = _percentile_rows(ordered, counts, 90.0)
    out = np.stack([mean, np.sqrt(var), p50, p90], axis=1)
    return np.where(counts[:, None] > 0, out, 0.0)


def _intensity(
    rgb: npt.NDArray[np.uint8], h: FloatArray, e: FloatArray, od: FloatArray
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """White/lumen/OD/H/E statistics (n, 13) and the tissue mask (n, s, s)."""
    n = rgb.shape[0]
    low = rgb.min(axis=3)
    white = (low >= _WHITE).reshape(n, -1).mean(axis=1)
    tissue = (low < _WHITE) & (od > _TISSUE_OD)
    t = tissue.reshape(n, -1)
    n_t = t.sum(axis=1)
    lumen = 1.0 - n_t / t.shape[1]
    od_mean = np.where(t, od.reshape(n, -1), 0.0).sum(axis=1) / np.maximum(n_t, 1) / 2.0
    hf, ef = h.reshape(n, -1), e.reshape(n, -1)
    h_stats = _masked_stats(hf, t)
    e_stats = _masked_stats(ef, t)
    h_sum = np.where(t, hf, 0.0).sum(axis=1)
    e_sum = np.where(t, ef, 0.0).sum(axis=1)
    h_share = np.where(n_t > 0, h_sum / np.maximum(h_sum + e_sum, 1e-6), 0.0)
    dh = np.where(t, hf - h_stats[:, :1], 0.0)
    de = np.where(t, ef - e_stats[:, :1], 0.0)
    cov = (dh * de).sum(axis=1)
    den = np.sqrt((dh**2).sum(axis=1) * (de**2).sum(axis=1))
    corr = np.where((n_t > 10) & (den > 0), cov / np.where(den > 0, den, 1.0), 0.0)
    cols = [white[:, None], lumen[:, None], od_mean[:, None], h_stats, e_stats]
    cols += [h_share[:, None], corr[:, None]]
    return np.concatenate(cols, axis=1), tissue


def _hull_area(
    y: FloatArray, x: FloatArray, starts: npt.NDArray[np.int64], n_dir: int = _HULL_DIRECTIONS
) -> FloatArray:
    """Area of the convex hull of each group of pixels (sorted by group, groups at ``starts``).

    The hull of the pixels' square footprints is approximated by the polygon circumscribed with
    ``n_dir`` evenly spaced edge normals: from the support values h_k (the furthest extent of a
    group along normal k), area = 1/2 sum_k h_k L_k with edge length
    L_k = (h_{k-1} + h_{k+1} - 2 h_k cos d) / sin d, d = 2 pi / n_dir. For a disc this is 1.3%
    too large at 16 directions; pixel polygons are often exact.
    """
    half = n_dir // 2
    theta = 2.0 * np.pi * np.arange(half) / n_dir
    uy, ux = np.cos(theta), np.sin(theta)
    proj = y[:, None] * uy + x[:, None] * ux
    # Normal k + n_dir/2 is -normal k: its support is minus the minimum. A unit pixel square
    # around each centre adds (|uy| + |ux|) / 2 to every support.
    pad = 0.5 * (np.abs(uy) + np.abs(ux))
    h = np.concatenate(
        [np.maximum.reduceat(proj, starts, axis=0), -np.minimum.reduceat(proj, starts, axis=0)],
        axis=1,
    ) + np.concatenate([pad, pad])
    step = 2.0 * np.pi / n_dir
    edge = (np.roll(h, 1, axis=1) + np.roll(h, -1, axis=1) - 2.0 * h * np.cos(step)) / np.sin(step)
    area: FloatArray = 0.5 * (h * edge).sum(axis=1)
    return area


def _nuclei(h: FloatArray, tissue: npt.NDArray[np.bool_]) -> FloatArray:
    """Nuclear statistics (n, 15) from connected components of thresholded, smoothed H."""
    n, s = h.shape[0], h.shape[1]
    smooth = ndi.gaussian_filter(h, sigma=(0.0, 1.0, 1.0))
    mask = ndi.binary_opening(smooth > _NUCLEUS_H, structure=np.ones((1, 3, 3), bool))
    cross = np.zeros((3, 3, 3), bool)
    cross[1] = ndi.generate_binary_structure(2, 1)
    labels, n_lab = ndi.label(mask, structure=cross)
    out = np.zeros((n, 15))
    out[:, 8] = _NO_NEIGHBOUR
    if n_lab == 0:
        return out
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    lab = flat[idx]
    pz, py, px = np.unravel_index(idx, labels.shape)
    m = n_lab + 1
    area = np.bincount(lab, minlength=m).astype(float)
    keep = np.flatnonzero(area >= _MIN_NUCLEUS_PX)
    keep = keep[keep > 0]
    if keep.size == 0:
        return out
    a = np.maximum(area, 1.0)
    cy = np.bincount(lab, py, m) / a
    cx = np.bincount(lab, px, m) / a
    dy, dx = py - cy[lab], px - cx[lab]
    mu_yy = np.bincount(lab, dy * dy, m) / a
    mu_xx = np.bincount(lab, dx * dx, m) / a
    mu_xy = np.bincount(lab, dy * dx, m) / a
    # Eigenvalues of the inertia tensor, as skimage.measure.regionprops.
    half_tr = (mu_yy + mu_xx) / 2.0
    root = np.sqrt(((mu_yy - mu_xx) / 2.0) ** 2 + mu_xy**2)
    l1, l2 = half_tr + root, np.maximum(half_tr - root, 0.0)
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / np.where(l1 > 0, l1, 1.0), 0, 1)), 0.0)
    major = 4.0 * np.sqrt(l1)
    h_int = np.bincount(lab, h.ravel()[idx], m) / a
    patch = np.zeros(m, np.int64)
    patch[lab] = pz
    # Solidity: pixel area over convex-hull area. The hull needs only the components' edge pixels,
    # grouped by label, relative to the centroid.
    edge = (labels > 0) & ~ndi.binary_erosion(labels > 0, structure=cross)
    e_idx = np.flatnonzero(edge.ravel())
    e_lab = flat[e_idx]
    order = np.argsort(e_lab, kind="stable")
    e_idx, e_lab = e_idx[order], e_lab[order]
    _, ey, ex = np.unravel_index(e_idx, labels.shape)
    starts = np.searchsorted(e_lab, np.arange(1, m))
    hull = _hull_area(ey - cy[e_lab], ex - cx[e_lab], starts)
    solidity = np.ones(m)
    solidity[1:] = np.minimum(area[1:] / np.maximum(hull, 1.0), 1.0)

    kp = patch[keep]
    count = np.bincount(kp, minlength=n)
    kmax = int(count.max())
    # Nuclei of each patch in a padded (n, kmax) table; missing entries are NaN.
    rank = np.arange(keep.size) - np.searchsorted(kp, kp)
    table = np.full((6, n, kmax), np.nan)
    for j, v in enumerate((area, ecc, solidity, h_int, major, (area > _BIG_NUCLEUS_PX) * 1.0)):
        table[j, kp, rank] = v[keep]
    cen = np.full((n, kmax, 2), np.nan)
    cen[kp, rank] = np.stack([cy[keep], cx[keep]], axis=1)
    has = count > 0
    tissue_area = np.maximum(tissue.reshape(n, -1).sum(axis=1), 0.05 * s * s)
    cnt = np.maximum(count, 1)

    def mean(v: FloatArray) -> FloatArray:
        res: FloatArray = np.where(np.isnan(v), 0.0, v).sum(axis=1) / cnt
        return res

    def sd(v: FloatArray) -> FloatArray:
        mu = mean(v)[:, None]
        res: FloatArray = np.sqrt(np.where(np.isnan(v), 0.0, (v - mu) ** 2).sum(axis=1) / cnt)
        return res

    areas = table[0]
    ordered = np.sort(np.where(np.isnan(areas), np.inf, areas), axis=1)
    d = np.sqrt(((cen[:, :, None, :] - cen[:, None, :, :]) ** 2).sum(axis=3))
    d[:, np.arange(kmax), np.arange(kmax)] = np.inf
    nn_d = np.where(np.isnan(d), np.inf, d).min(axis=2)
    nn_d = np.where(np.isfinite(nn_d), nn_d, np.nan)
    several = count >= 2
    feats = [
        np.nansum(areas, axis=1) / tissue_area,
        count * 1000.0 / tissue_area,
        mean(areas),
        sd(areas),
        _percentile_rows(ordered, count.astype(np.int64), 90.0),
        mean(table[1]),
        mean(table[2]),
        sd(table[2]),
        np.where(several, mean(nn_d), _NO_NEIGHBOUR),
        np.where(several, sd(nn_d), 0.0),
        mean(table[3]),
        sd(table[3]),
        mean(table[5]),
        mean(table[4]),
        np.log1p(count),
    ]
    res = np.stack(feats, axis=1)
    return np.where(has[:, None], res, out)


def _glcm(q: npt.NDArray[np.int64]) -> FloatArray:
    """Co-occurrence contrast, homogeneity, energy, correlation (n, 12) of quantised images."""
    n = q.shape[0]
    lv = _GLCM_LEVELS
    ii, jj = np.meshgrid(np.arange(lv), np.arange(lv), indexing="ij")
    i, j = ii.ravel().astype(float), jj.ravel().astype(float)
    base = (np.arange(n) * lv * lv)[:, None, None]
    out = []
    s = q.shape[1]
    for offsets in _GLCM_OFFSETS:
        props = np.zeros((n, 4))
        for dr, dc in offsets:
            r0, r1 = max(0, -dr), s - max(0, dr)
            c0, c1 = max(0, -dc), s - max(0, dc)
            a = q[:, r0:r1, c0:c1]
            b = q[:, r0 + dr : r1 + dr, c0 + dc : c1 + dc]
            codes = base + a * lv + b
            counts = np.bincount(codes.ravel(), minlength=n * lv * lv).reshape(n, lv, lv)
            sym = (counts + counts.transpose(0, 2, 1)).reshape(n, -1).astype(float)
            p = sym / np.maximum(sym.sum(axis=1, keepdims=True), 1.0)
            diff2 = (i - j) ** 2
            contrast = p @ diff2
            homog = p @ (1.0 / (1.0 + diff2))
            energy = np.sqrt((p**2).sum(axis=1))
            mi, mj = p @ i, p @ j
            si = np.sqrt(np.maximum(p @ (i**2) - mi**2, 0.0))
            sj = np.sqrt(np.maximum(p @ (j**2) - mj**2, 0.0))
            cov = p @ (i * j) - mi * mj
            flat = (si < 1e-7) | (sj < 1e-7)
            corr = np.where(flat, 1.0, cov / np.where(flat, 1.0, si * sj))
            props += np.stack([contrast, homog, energy, corr], axis=1)
        out.append(props / len(offsets))
    return np.concatenate(out, axis=1)


def _lbp(h: FloatArray) -> FloatArray:
    """Uniform LBP histograms of H (n, 14): radius 1 (10 bins) and coarse radius 2 at half size."""
    from skimage.feature import local_binary_pattern

    lbp_fn: Callable[..., Any] = local_binary_pattern

    n = h.shape[0]
    q8 = np.clip(h / 1.2 * 255, 0, 255).astype(np.uint8)
    out = np.zeros((n, 14))
    for k in range(n):
        lbp = np.asarray(lbp_fn(q8[k], 8, 1, method="uniform"), np.int64)
        out[k, :10] = np.bincount(lbp.ravel(), minlength=10)[:10] / lbp.size
        lbp2 = np.asarray(lbp_fn(q8[k, ::2, ::2], 8, 2, method="uniform"), np.int64)
        hist = np.bincount(lbp2.ravel(), minlength=10) / lbp2.size
        out[k, 10:] = (hist[8], hist[0], hist[3:6].sum(), hist[9])
    return out


def extract_raw(patches: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Unscaled features (n, :data:`DIM`) of RGB ``uint8`` patches (n, s, s, 3), s about 128.

    Raises
    ------
    InvalidInputError
        Not an (n, h, w, 3) array of RGB values.
    """
    try:
        rgb = np.ascontiguousarray(patches, dtype=np.uint8)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"expected (n, h, w, 3) uint8 patches, got {err}") from err
    if rgb.ndim != 4 or rgb.shape[3] != 3:
        raise InvalidInputError(f"expected (n, h, w, 3) uint8 patches, got shape {rgb.shape}")
    if rgb.shape[0] == 0:
        return np.zeros((0, DIM), np.float32)
    od3 = -np.log((rgb.astype(np.float64) + 1.0) / 256.0)
    he = od3 @ _HED_FROM_RGB[:, :2]
    h = np.clip(he[..., 0], 0.0, 2.0)
    e = np.clip(he[..., 1], 0.0, 2.0)
    od = od3.sum(axis=3)
    intensity, tissue = _intensity(rgb, h, e, od)
    nuclei = _nuclei(h, tissue)
    q = np.clip((h / 1.2 * _GLCM_LEVELS).astype(np.int64), 0, _GLCM_LEVELS - 1)
    feats = np.concatenate([intensity, nuclei, _glcm(q), _lbp(h)], axis=1)
    out: npt.NDArray[np.float32] = np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0).astype(
        np.float32
    )
    return out


_SCALE = np.asarray(FEATURE_SCALE, np.float32)


def he_features(patches: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The ``he-features`` embedding: :func:`extract_raw` divided by :data:`FEATURE_SCALE`.

    Input: RGB ``uint8`` patches (n, s, s, 3), s about 128. Output: float32 (n, :data:`DIM`).
    """
    out: npt.NDArray[np.float32] = extract_raw(patches) / _SCALE
    return out
