"""Hand-crafted colour and texture features: an embedding without a network or weights.

NumPy on whole batches, in float32 (the numbers of the earlier torch implementation, to float32
rounding). The ``handcrafted`` backbone of :mod:`histosic.embed` is a thin ``nn.Module`` around
:func:`handcrafted_features`.

Per patch (``DIM`` = 43 numbers):

- RGB mean and std (6); HSV saturation and value mean and std (4);
- haematoxylin, eosin and DAB optical-density mean and std (6), and 8-bin histograms of
  haematoxylin and eosin density (16);
- texture on grey levels at full and half resolution: gradient magnitude mean and std (4),
  absolute Laplacian mean (2), mean absolute difference to the neighbour 1 and 4 pixels right and
  down (4); white-pixel fraction (1).

Standard deviations are the unbiased ones (divided by n - 1).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from histosic.errors import InvalidInputError

__all__ = ["DIM", "VERSION", "handcrafted_features"]

F32 = npt.NDArray[np.float32]

DIM = 43
#: Bumped when the features change; part of the backbone's weights id (``handcrafted:v1``).
VERSION = 1

# Ruifrok & Johnston stain vectors (haematoxylin, eosin, DAB) as rows, in optical density;
# the same matrix as skimage.color.rgb_from_hed.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)
_N_BINS = 8
_SOBEL = (np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0).astype(np.float32)
_LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], np.float32)
_WHITE = np.float32(220.0 / 255.0)


def _mean_std(x: F32) -> F32:
    """(n, h, w, c) -> (n, 2c): the channels' means, then their unbiased standard deviations."""
    flat = np.moveaxis(x, -1, 1).reshape(x.shape[0], x.shape[-1], -1)
    mean, sd = flat.mean(axis=2, dtype=np.float64), flat.std(axis=2, ddof=1, dtype=np.float64)
    out: F32 = np.concatenate([mean, sd], axis=1).astype(np.float32)
    return out


def _correlate(grey: F32, kernel: F32) -> F32:
    """Valid 3x3 cross-correlation (as ``torch.nn.functional.conv2d``) of (n, h, w) images."""
    h, w = grey.shape[1] - 2, grey.shape[2] - 2
    out = np.zeros((grey.shape[0], h, w), np.float32)
    for a in range(3):
        for b in range(3):
            if kernel[a, b] != 0.0:
                out += kernel[a, b] * grey[:, a : a + h, b : b + w]
    return out


def _texture(grey: F32) -> tuple[F32, F32, F32]:
    """Gradient magnitude mean and std, and mean absolute Laplacian, each (n,)."""
    n = grey.shape[0]
    gx = _correlate(grey, _SOBEL)
    gy = _correlate(grey, np.ascontiguousarray(_SOBEL.T))
    mag = np.sqrt(gx * gx + gy * gy).reshape(n, -1)
    lap = np.abs(_correlate(grey, _LAPLACIAN)).reshape(n, -1)
    return (
        mag.mean(axis=1, dtype=np.float64).astype(np.float32),
        mag.std(axis=1, ddof=1, dtype=np.float64).astype(np.float32),
        lap.mean(axis=1, dtype=np.float64).astype(np.float32),
    )


def handcrafted_features(patches: npt.ArrayLike) -> F32:
    """Colour and texture statistics (n, :data:`DIM`) of RGB patches (n, h, w, 3).

    Values in [0, 1] (float) or ``uint8`` (divided by 255); h and w at least 8.

    Raises
    ------
    InvalidInputError
        Not an (n, h, w, 3) array of RGB values.
    """
    try:
        arr = np.asarray(patches)
    except ValueError as err:  # ragged nested sequences
        raise InvalidInputError(f"expected (n, h, w, 3) RGB patches, got {err}") from err
    if arr.ndim != 4 or arr.shape[3] != 3 or min(arr.shape[1:3], default=0) < 8:
        raise InvalidInputError(
            f"expected (n, h, w, 3) RGB patches of at least 8 px, got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"expected numeric RGB patches, got dtype {arr.dtype}")
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / np.float32(255.0)
    else:
        x = np.clip(arr.astype(np.float32), 0.0, 1.0)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, DIM), np.float32)
    feats = [_mean_std(x)]
    vmax = x.max(axis=3)
    vmin = x.min(axis=3)
    sat = np.where(vmax > 0, (vmax - vmin) / np.maximum(vmax, np.float32(1e-6)), np.float32(0.0))
    feats.append(_mean_std(np.stack([sat, vmax], axis=3)))
    od = -np.log((x * np.float32(255.0) + np.float32(1.0)) / np.float32(256.0))
    hed = np.maximum(od @ _HED_FROM_RGB, np.float32(0.0))
    feats.append(_mean_std(hed))
    n_px = hed.shape[1] * hed.shape[2]
    offsets = (np.arange(n) * _N_BINS)[:, None]
    for c in range(2):
        # Densities above ~1.5 are saturated stain; bin [0, 1.5) evenly.
        scaled = hed[..., c].reshape(n, -1) / np.float32(1.5) * np.float32(_N_BINS)
        idx = np.clip(scaled.astype(np.int64), 0, _N_BINS - 1)
        hist = np.bincount((idx + offsets).ravel(), minlength=n * _N_BINS).reshape(n, _N_BINS)
        feats.append((hist / n_px).astype(np.float32))
    grey = (
        np.float32(0.299) * x[..., 0]
        + np.float32(0.587) * x[..., 1]
        + np.float32(0.114) * x[..., 2]
    )
    h2, w2 = grey.shape[1] // 2 * 2, grey.shape[2] // 2 * 2
    g = grey[:, :h2, :w2]
    half = (g[:, 0::2, 0::2] + g[:, 0::2, 1::2] + g[:, 1::2, 0::2] + g[:, 1::2, 1::2]) / np.float32(
        4.0
    )
    mag_mean, mag_sd, lap = _texture(grey)
    mag_mean_h, mag_sd_h, lap_h = _texture(half)
    feats.append(np.stack([mag_mean, mag_sd, mag_mean_h, mag_sd_h, lap, lap_h], axis=1))
    for d in (1, 4):
        dx = np.abs(grey[:, :, d:] - grey[:, :, :-d]).reshape(n, -1).mean(axis=1, dtype=np.float64)
        dy = np.abs(grey[:, d:, :] - grey[:, :-d, :]).reshape(n, -1).mean(axis=1, dtype=np.float64)
        feats.append(np.stack([dx, dy], axis=1).astype(np.float32))
    white = (x.min(axis=3) >= _WHITE).reshape(n, -1).mean(axis=1, dtype=np.float32)
    feats.append(white[:, None])
    out: F32 = np.concatenate(feats, axis=1).astype(np.float32)
    return out
