"""Patches of a slide and their tissue and white fractions, without torch.

The embedding pipeline reads its patches here (:func:`read_patches`) and computes the per-patch
fractions the default preprocessing regresses out; :func:`complete_fractions` computes the same
fractions for a feature file that lacks them (Trident and CLAM write none), from the slide, with
the same code, so clustering such a file gives what it gives on histosic's own file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from histosic.errors import HistosicError
from histosic.slides import Slide, TissueConfig, detect_tissue, open_slide, white_fraction
from histosic.store import Embeddings
from histosic.tiling import patch_tissue_fractions

__all__ = [
    "complete_fractions",
    "patch_fractions",
    "patch_runs",
    "read_patches",
    "thumbnail_size",
]

# A row run read as one region is capped so one read stays a few MB.
_MAX_RUN_PATCHES = 32
# Patches read at once for the white fractions (memory: 256 x 224 x 224 x 3 bytes = 38 MB).
_CHUNK = 256


def thumbnail_size(slide: Slide, size_level0: int, tissue: TissueConfig) -> int:
    """Side of the thumbnail the tissue mask is computed on."""
    # Enough thumbnail pixels that a patch spans about 8 mask pixels, within sane bounds.
    longest = max(slide.dimensions)
    want = int(math.ceil(8 * longest / max(size_level0, 1)))
    return int(min(max(tissue.thumbnail_size, min(want, 4096)), longest))


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
    for i, x0, y0, width, offsets in patch_runs(coords, size_level0, ds, side):
        region = slide.read_region_array((x0, y0), level, (width, side))
        for k, ox in enumerate(offsets, start=i):
            out[k] = _resize(region[:, ox : ox + side], out_size)
    return out


def patch_runs(
    coords: npt.NDArray[np.int64], size_level0: int, ds: float, side: int
) -> Iterator[tuple[int, int, int, int, list[int]]]:
    """The runs of patches that :func:`read_patches` reads as one region each.

    Patches on the same row that touch or overlap (at most ``_MAX_RUN_PATCHES``) form a run.
    Yields ``(first index, x0, y0, width, offsets)``: the run's level-0 top-left, its width in
    pixels of the level with downsample ``ds`` (patch side ``side`` there), and each patch's
    horizontal offset in the region. The GPU JPEG path places its patches with the same runs.
    """
    n = int(coords.shape[0])
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
        offsets = [
            min(int(round((int(coords[k, 0]) - x0) / ds)), width - side) for k in range(i, j)
        ]
        yield i, x0, y0, width, offsets
        i = j


def patch_fractions(
    slide: Slide,
    coords: npt.NDArray[np.int64],
    size_level0: int,
    read_size: int,
    tissue: TissueConfig = TissueConfig(),  # noqa: B008 - frozen dataclass
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Tissue and white fraction of each patch, as the embedding pipeline computes them.

    Tissue: the patch's share of the thumbnail tissue mask (the mask the grid was filtered with);
    white: the share of near-white pixels of the patch read at ``read_size`` pixels.
    """
    thumb = slide.get_thumbnail(thumbnail_size(slide, size_level0, tissue))
    mask = detect_tissue(thumb, tissue)
    w, h = slide.dimensions
    coords = np.asarray(coords, dtype=np.int64)
    tissue_frac = patch_tissue_fractions(
        mask, coords, size_level0, (w / mask.shape[1], h / mask.shape[0])
    )
    white = np.empty(len(coords), dtype=np.float32)
    for lo in range(0, len(coords), _CHUNK):
        batch = read_patches(slide, coords[lo : lo + _CHUNK], size_level0, read_size)
        white[lo : lo + len(batch)] = white_fraction(batch)
    return tissue_frac.astype(np.float32), white


def complete_fractions(
    emb: Embeddings,
    slide_path: str | Path | None = None,
    *,
    slide_mpp: float | None = None,
    read_size: int | None = None,
) -> tuple[Embeddings, str]:
    """``emb`` with its tissue and white fractions, computed from the slide when the file lacks
    them, and a note saying what was done (empty when nothing was missing).

    Parameters
    ----------
    emb : Embeddings
    slide_path : path-like, optional
        The slide (default: the path the file records; Trident records only the slide's name).
    slide_mpp : float, optional
        Level-0 microns per pixel, for plain images (default: the file's, else the slide's).
    read_size : int, optional
        Side at which white fractions are counted: the side histosic's pipeline reads at on the
        CPU, the model's input size (default: the file's patch size).
    """
    if emb.tissue_fraction is not None and emb.white_fraction is not None:
        return emb, ""
    path = Path(slide_path) if slide_path else Path(emb.meta.slide_path)
    skipped = (
        f"the feature file has no tissue and white fractions and the slide {str(path)!r} cannot "
        "be opened{why}: the nuisance-regression step is skipped (pass --slide to compute them)"
    )
    if not path.is_file():
        return emb, skipped.format(why="")
    meta = emb.meta
    mpp = slide_mpp or (meta.mpp if meta.mpp > 0 else None)
    try:
        slide = open_slide(path, mpp=mpp)
    except HistosicError as err:
        return emb, skipped.format(why=f" ({err})")
    try:
        if meta.level0_width and (meta.level0_width, meta.level0_height) != slide.dimensions:
            return emb, skipped.format(
                why=f" (it is {slide.dimensions[0]}x{slide.dimensions[1]} px, the file's "
                f"coordinates are for {meta.level0_width}x{meta.level0_height})"
            )
        tissue, white = patch_fractions(
            slide, emb.coords, meta.patch_size_level0, int(read_size or meta.patch_size)
        )
    finally:
        slide.close()
    done = dataclasses.replace(emb, tissue_fraction=tissue, white_fraction=white)
    note = (
        f"the feature file has no tissue and white fractions: computed them for {emb.n_patches} "
        f"patches from {path} (as `histosic embed` does)"
    )
    return done, note
