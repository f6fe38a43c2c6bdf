"""Patch grid at a target resolution: sizes, overlap, coordinates and the tissue filter.

Coordinates are level-0 pixels of the patch's top-left corner, ``(x, y)``, in row-major order (by
``y``, then ``x``). A patch of ``patch_size`` pixels at ``target_mpp`` covers
``patch_size_level0 = round(patch_size * target_mpp / slide_mpp)`` level-0 pixels, and neighbours
are ``stride_level0 = round(patch_size_level0 * (1 - overlap))`` apart. Only patches that lie wholly
inside the slide are on the grid. This module is plain numpy: no torch, no slide reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from histosic.errors import InvalidInputError

__all__ = [
    "PatchGrid",
    "TilingConfig",
    "grid_coords",
    "make_grid",
    "patch_size_level0",
    "patch_tissue_fractions",
    "stride_level0",
]


@dataclass(frozen=True)
class TilingConfig:
    """How a slide is cut into patches.

    Parameters
    ----------
    target_mpp : float, default 0.5
        Microns per pixel at which patches are cut (0.5 um/px is "20x").
    patch_size : int, default 256
        Patch side in pixels at ``target_mpp``.
    overlap : float, default 0.5
        Fraction of a patch shared with its neighbour, in ``[0, 1)``; 0.5 as in the paper.
    tissue_threshold : float, default 0.5
        A patch is kept when at least this fraction of it lies on tissue; 0 keeps every patch.
    """

    target_mpp: float = 0.5
    patch_size: int = 256
    overlap: float = 0.5
    tissue_threshold: float = 0.5

    def validate(self) -> TilingConfig:
        """Raise :class:`~histosic.errors.InvalidInputError` for an impossible setting."""
        if not (math.isfinite(self.target_mpp) and self.target_mpp > 0):
            raise InvalidInputError(
                "target mpp must be a positive number of microns per pixel, got "
                f"{self.target_mpp!r} (0.5 = 20x, 0.25 = 40x)"
            )
        if int(self.patch_size) != self.patch_size or not 8 <= self.patch_size <= 8192:
            raise InvalidInputError(
                f"patch size must be a whole number of pixels in [8, 8192], got {self.patch_size!r}"
            )
        if not (math.isfinite(self.overlap) and 0 <= self.overlap < 1):
            raise InvalidInputError(
                f"overlap must be a fraction in [0, 1), got {self.overlap!r} (0.5 = 50%)"
            )
        if not (math.isfinite(self.tissue_threshold) and 0 <= self.tissue_threshold <= 1):
            raise InvalidInputError(
                f"tissue threshold must be a fraction in [0, 1], got {self.tissue_threshold!r}"
            )
        return self


def patch_size_level0(config: TilingConfig, slide_mpp: float) -> int:
    """Side of one patch in level-0 pixels: ``round(patch_size * target_mpp / slide_mpp)``."""
    if not (math.isfinite(slide_mpp) and slide_mpp > 0):
        raise InvalidInputError(f"slide mpp must be a positive number, got {slide_mpp!r}")
    return max(1, int(round(config.patch_size * config.target_mpp / slide_mpp)))


def stride_level0(config: TilingConfig, slide_mpp: float) -> int:
    """Distance between neighbouring patches in level-0 pixels."""
    return max(1, int(round(patch_size_level0(config, slide_mpp) * (1.0 - config.overlap))))


def grid_coords(width: int, height: int, size: int, stride: int) -> npt.NDArray[np.int64]:
    """Top-left corners of every ``size`` x ``size`` patch inside a ``width`` x ``height`` image.

    Parameters
    ----------
    width, height : int
        Level-0 image size.
    size, stride : int
        Patch side and step, level-0 pixels.

    Returns
    -------
    ndarray of shape (n, 2), int64
        ``(x, y)`` in row-major order; empty when the image is smaller than one patch.
    """
    if size < 1 or stride < 1:
        raise InvalidInputError(f"patch size and stride must be >= 1, got {size} and {stride}")
    nx = (width - size) // stride + 1 if width >= size else 0
    ny = (height - size) // stride + 1 if height >= size else 0
    xs = np.arange(nx, dtype=np.int64) * stride
    ys = np.arange(ny, dtype=np.int64) * stride
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def patch_tissue_fractions(
    mask: npt.NDArray[np.bool_],
    coords: npt.NDArray[np.int64],
    size: int,
    downsample: tuple[float, float],
) -> npt.NDArray[np.float32]:
    """Fraction of each patch that lies on tissue, from a low-resolution tissue mask.

    Parameters
    ----------
    mask : ndarray of shape (h, w), bool
        Tissue mask of the whole slide (e.g. computed on a thumbnail).
    coords : ndarray of shape (n, 2)
        Level-0 top-left ``(x, y)`` of each patch.
    size : int
        Patch side in level-0 pixels.
    downsample : (float, float)
        Level-0 pixels per mask pixel along x and y.

    Returns
    -------
    ndarray of shape (n,), float32 in [0, 1]
    """
    h, w = mask.shape
    # A summed-area table answers every patch's box sum in O(1), so the grid costs O(n).
    sat = np.zeros((h + 1, w + 1), dtype=np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), axis=0), axis=1)
    dx, dy = downsample
    c = np.asarray(coords, dtype=np.float64)
    x0 = np.clip(np.floor(c[:, 0] / dx + 0.5), 0, w).astype(np.int64)
    y0 = np.clip(np.floor(c[:, 1] / dy + 0.5), 0, h).astype(np.int64)
    x1 = np.clip(np.floor((c[:, 0] + size) / dx + 0.5), 0, w).astype(np.int64)
    y1 = np.clip(np.floor((c[:, 1] + size) / dy + 0.5), 0, h).astype(np.int64)
    # A patch smaller than one mask pixel still covers the pixel it lies in.
    x1 = np.maximum(x1, np.minimum(x0 + 1, w))
    y1 = np.maximum(y1, np.minimum(y0 + 1, h))
    area = (x1 - x0) * (y1 - y0)
    total = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    frac = np.divide(total, area, out=np.zeros(len(c)), where=area > 0)
    out: npt.NDArray[np.float32] = np.clip(frac, 0.0, 1.0).astype(np.float32)
    return out


@dataclass(frozen=True)
class PatchGrid:
    """The patches of one slide that pass the tissue filter.

    Attributes
    ----------
    coords : ndarray of shape (n, 2), int64
        Level-0 top-left ``(x, y)``, row-major.
    tissue_fraction : ndarray of shape (n,), float32
        Fraction of each kept patch on tissue.
    patch_size_level0, stride_level0 : int
        Level-0 patch side and step.
    n_candidates : int
        Patches on the full grid before the tissue filter.
    """

    coords: npt.NDArray[np.int64]
    tissue_fraction: npt.NDArray[np.float32]
    patch_size_level0: int
    stride_level0: int
    n_candidates: int

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def summary(self) -> dict[str, Any]:
        return {
            "n_patches": len(self),
            "n_candidates": self.n_candidates,
            "patch_size_level0": self.patch_size_level0,
            "stride_level0": self.stride_level0,
        }


def make_grid(
    width: int,
    height: int,
    slide_mpp: float,
    config: TilingConfig = TilingConfig(),
    *,
    tissue_mask: npt.NDArray[np.bool_] | None = None,
) -> PatchGrid:
    """The patch grid of a ``width`` x ``height`` level-0 slide, filtered by a tissue mask.

    Parameters
    ----------
    width, height : int
        Level-0 slide size.
    slide_mpp : float
        Level-0 microns per pixel.
    config : TilingConfig
    tissue_mask : ndarray of shape (h, w), bool, optional
        Mask covering the whole slide at any lower resolution; its scale is ``width / w`` and
        ``height / h``. None keeps every patch (tissue fraction 1).

    Returns
    -------
    PatchGrid
        Possibly empty; callers decide whether no patch is an error.
    """
    config.validate()
    size = patch_size_level0(config, slide_mpp)
    stride = stride_level0(config, slide_mpp)
    coords = grid_coords(int(width), int(height), size, stride)
    n_candidates = int(coords.shape[0])
    if tissue_mask is None:
        frac = np.ones(n_candidates, dtype=np.float32)
    else:
        mask = np.asarray(tissue_mask, dtype=bool)
        if mask.ndim != 2 or mask.size == 0:
            raise InvalidInputError(f"tissue mask must be a non-empty 2-D array, got {mask.shape}")
        ds = (width / mask.shape[1], height / mask.shape[0])
        frac = patch_tissue_fractions(mask, coords, size, ds)
    # A tiny tolerance so a patch at exactly the threshold is kept despite float rounding.
    keep = frac >= config.tissue_threshold - 1e-6
    return PatchGrid(
        coords=coords[keep],
        tissue_fraction=frac[keep],
        patch_size_level0=size,
        stride_level0=stride,
        n_candidates=n_candidates,
    )
