"""What the reading processes need besides :mod:`histosic.patches`: the tissue grid, the read size.

Torch-free, so that the processes that only read (DataLoader workers, Ray's planning and reading
tasks) do not load torch; :mod:`histosic.embed.pipeline` re-exports :func:`slide_grid`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from histosic.embed.registry import ModelInfo
from histosic.patches import thumbnail_size
from histosic.slides import Slide, TissueConfig, detect_tissue
from histosic.tiling import PatchGrid, TilingConfig, make_grid

__all__ = ["batch_bounds", "read_size", "slide_grid"]


def slide_grid(
    slide: Slide,
    tiling: TilingConfig = TilingConfig(),  # noqa: B008 - frozen dataclass
    tissue: TissueConfig = TissueConfig(),  # noqa: B008 - frozen dataclass
) -> tuple[PatchGrid, npt.NDArray[np.bool_]]:
    """The tissue-filtered patch grid of an open slide and the thumbnail tissue mask it used."""
    tiling.validate()
    from histosic.tiling import patch_size_level0

    size0 = patch_size_level0(tiling, slide.mpp)
    thumb = slide.get_thumbnail(thumbnail_size(slide, size0, tissue))
    mask = detect_tissue(thumb, tissue)
    w, h = slide.dimensions
    return make_grid(w, h, slide.mpp, tiling, tissue_mask=mask), mask


def read_size(patch_size: int, info: ModelInfo, *, gpu: bool) -> int:
    """Side of the patches the readers return.

    On the CPU, patches are resized straight to the network's input size in the reader processes
    (one resample from the pyramid level, off the process that runs the model). With a GPU the
    readers are the limit and the GPU has time to spare: a PIL resize costs the reader about a
    third of its time (``benchmarks/bench_loader.py``), so patches come at the tiling size and
    the device resizes them, unless that would more than double the bytes to move.
    """
    input_size = info.crop_from or info.input_size
    if gpu and patch_size <= 2 * input_size:
        return patch_size
    return input_size


def batch_bounds(start: int, n: int, batch_size: int) -> list[tuple[int, int]]:
    """The ``[lo, hi)`` row ranges of a slide's batches from row ``start`` on.

    The batches grow from an eighth of ``batch_size``, doubling, to ``batch_size`` (64: 8, 16,
    32, then 64s): the model starts on the first few patches instead of waiting for a whole
    batch to be read, and each read is shorter than the forward pass it hides behind. The
    schedule is fixed from row 0, so that a run resumed at a batch boundary cuts its batches as
    an uninterrupted one does; every path (DataLoader readers, Ray) uses it, so their features
    are computed on the same batches.
    """
    batch = max(1, int(batch_size))
    size = max(1, batch // 8)
    bounds: list[tuple[int, int]] = []
    pos = 0
    while pos < n:
        hi = min(pos + size, n)
        if hi > start:
            bounds.append((max(pos, start), hi))
        pos = hi
        size = min(batch, size * 2)
    return bounds
