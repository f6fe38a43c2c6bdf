"""Reading patches from a slide: the tissue grid, row runs read as one region, the resize.

Torch-free, so that the processes that only read (DataLoader workers, Ray's reading tasks) do not
load torch; :mod:`histosic.embed.pipeline` re-exports :func:`read_patches` and :func:`slide_grid`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from PIL import Image

from histosic.slides import Slide, TissueConfig, detect_tissue
from histosic.tiling import PatchGrid, TilingConfig, make_grid

__all__ = ["read_patches", "read_size", "slide_grid"]

# A row run read as one region is capped so one read stays a few MB.
_MAX_RUN_PATCHES = 32


def _thumbnail_size(slide: Slide, size_level0: int, tissue: TissueConfig) -> int:
    # Enough thumbnail pixels that a patch spans about 8 mask pixels, within sane bounds.
    longest = max(slide.dimensions)
    want = int(math.ceil(8 * longest / max(size_level0, 1)))
    return int(min(max(tissue.thumbnail_size, min(want, 4096)), longest))


def slide_grid(
    slide: Slide,
    tiling: TilingConfig = TilingConfig(),  # noqa: B008 - frozen dataclass
    tissue: TissueConfig = TissueConfig(),  # noqa: B008 - frozen dataclass
) -> tuple[PatchGrid, npt.NDArray[np.bool_]]:
    """The tissue-filtered patch grid of an open slide and the thumbnail tissue mask it used."""
    tiling.validate()
    from histosic.tiling import patch_size_level0

    size0 = patch_size_level0(tiling, slide.mpp)
    thumb = slide.get_thumbnail(_thumbnail_size(slide, size0, tissue))
    mask = detect_tissue(thumb, tissue)
    w, h = slide.dimensions
    return make_grid(w, h, slide.mpp, tiling, tissue_mask=mask), mask


def _resize(arr: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.uint8]:
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))


def read_patches(
    slide: Slide, coords: npt.NDArray[np.int64], size_level0: int, out_size: int
) -> npt.NDArray[np.uint8]:
    """Read square patches, at the best pyramid level, resized to ``out_size``.

    Patches on the same row that touch or overlap are read as one region, so the overlapping
    pixels are decoded once.

    Parameters
    ----------
    slide : Slide
    coords : ndarray of shape (n, 2)
        Level-0 top-left ``(x, y)``.
    size_level0 : int
        Patch side in level-0 pixels.
    out_size : int
        Patch side in output pixels.

    Returns
    -------
    ndarray of shape (n, out_size, out_size, 3), uint8
    """
    n = int(coords.shape[0])
    out = np.empty((n, out_size, out_size, 3), dtype=np.uint8)
    level = slide.best_level_for_downsample(size_level0 / out_size)
    ds = slide.level_downsamples[level]
    side = max(1, int(math.ceil(size_level0 / ds - 1e-6)))
    i = 0
    while i < n:
        j = i + 1
        while (
            j < n
            and j - i < _MAX_RUN_PATCHES
            and coords[j, 1] == coords[i, 1]
            and 0 < coords[j, 0] - coords[j - 1, 0] <= size_level0
        ):
            j += 1
        x0, y0 = int(coords[i, 0]), int(coords[i, 1])
        span = int(coords[j - 1, 0]) + size_level0 - x0
        width = max(side, int(math.ceil(span / ds - 1e-6)))
        region = slide.read_region_array((x0, y0), level, (width, side))
        for k in range(i, j):
            ox = int(round((int(coords[k, 0]) - x0) / ds))
            ox = min(ox, width - side)
            out[k] = _resize(region[:, ox : ox + side], out_size)
        i = j
    return out


def read_size(patch_size: int, input_size: int, *, gpu: bool) -> int:
    """Side of the patches the readers return.

    On the CPU, patches are resized straight to the network's input size in the reader processes
    (one resample from the pyramid level, off the process that runs the model). With a GPU the
    readers are the limit and the GPU has time to spare: a PIL resize costs the reader about a
    third of its time (``benchmarks/bench_loader.py``), so patches come at the tiling size and
    the device resizes them, unless that would more than double the bytes to move.
    """
    if gpu and patch_size <= 2 * input_size:
        return patch_size
    return input_size
