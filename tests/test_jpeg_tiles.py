"""JPEG tiles read raw and decoded by torchvision (the GPU path's code, run here on the CPU).

The decoded patches must be exactly the CPU reader's (OpenSlide's libjpeg decoding), on generated
YCbCr JPEG pyramids and on a real Aperio SVS (RGB JPEG tiles with shared tables). On a GPU nvJPEG
decodes instead; its equality within rounding is for a GPU session (docs/RAY.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SyntheticSlide

from histosic.embed.jpeg_tiles import (
    decode_batch,
    jpeg_level,
    read_jpeg_batch,
    white_fraction_device,
)
from histosic.embed.pipeline import read_patches, slide_grid
from histosic.slides import open_slide, white_fraction
from histosic.tiling import TilingConfig, patch_size_level0

CPU = torch.device("cpu")


def _compare(path: Path, tiling: TilingConfig, out_size: int) -> int:
    s = open_slide(path)
    try:
        grid, _ = slide_grid(s, tiling)
        size0 = patch_size_level0(tiling, s.mpp)
        level = s.best_level_for_downsample(size0 / out_size)
        layout = jpeg_level(s, level)
        assert layout is not None, "a JPEG level was not recognised"
        n = 0
        for lo in range(0, len(grid), 16):
            coords = grid.coords[lo : lo + 16]
            want = read_patches(s, coords, size0, out_size)
            got = decode_batch(read_jpeg_batch(s, coords, size0, out_size, layout), CPU)
            np.testing.assert_array_equal(got.numpy(), want)
            np.testing.assert_array_equal(white_fraction_device(got).numpy(), white_fraction(want))
            n += len(coords)
        return n
    finally:
        s.close()


@pytest.mark.parametrize(("out_size", "overlap"), [(256, 0.5), (224, 0.5), (256, 0.0)])
def test_generated_jpeg_pyramid(
    slide_factory: Callable[..., SyntheticSlide], out_size: int, overlap: float
) -> None:
    slide = slide_factory(
        "jpeg-40x.tiff", 1800, 2600, [(100, 100, 2500, 1700)], compression="jpeg", seed=5
    )
    tiling = TilingConfig(overlap=overlap, tissue_threshold=0.0)
    assert _compare(slide.path, tiling, out_size) >= 15


def test_real_svs(cmu_svs: Path) -> None:
    # 20x, one level, 240-px RGB JPEG tiles with JPEGTables; 257-px patches resized to 256.
    assert _compare(cmu_svs, TilingConfig(tissue_threshold=0.0), 256) > 100


def test_not_jpeg_is_refused(slide_factory: Callable[..., SyntheticSlide]) -> None:
    zlib = slide_factory("zlib-40x.tiff", 512, 512, [(0, 0, 512, 512)], compression="zlib")
    s = open_slide(zlib.path)
    try:
        assert jpeg_level(s, 0) is None and jpeg_level(s, 9) is None
    finally:
        s.close()
