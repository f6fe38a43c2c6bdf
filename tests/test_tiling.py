"""Patch grid geometry and the tissue filter (plain numpy, no slide reader)."""

from __future__ import annotations

import numpy as np
import pytest

from histosic.errors import InvalidInputError
from histosic.tiling import (
    TilingConfig,
    grid_coords,
    make_grid,
    patch_size_level0,
    patch_tissue_fractions,
    stride_level0,
)


def test_default_config_is_the_papers() -> None:
    cfg = TilingConfig()
    assert (cfg.target_mpp, cfg.patch_size, cfg.overlap, cfg.tissue_threshold) == (
        0.5,
        256,
        0.5,
        0.5,
    )


def test_level0_sizes_for_40x_and_20x() -> None:
    cfg = TilingConfig()
    # 40x slide: a 256 px patch at 20x covers 512 level-0 pixels; 50% overlap = stride 256.
    assert patch_size_level0(cfg, 0.25) == 512
    assert stride_level0(cfg, 0.25) == 256
    assert patch_size_level0(cfg, 0.5) == 256
    assert stride_level0(cfg, 0.5) == 128
    assert stride_level0(TilingConfig(overlap=0.0), 0.5) == 256
    assert stride_level0(TilingConfig(overlap=0.75), 0.5) == 64


def test_grid_coords_fit_inside_and_are_row_major() -> None:
    c = grid_coords(1000, 600, 256, 128)
    nx, ny = (1000 - 256) // 128 + 1, (600 - 256) // 128 + 1
    assert c.shape == (nx * ny, 2)
    assert c.dtype == np.int64
    assert (c[:, 0] + 256 <= 1000).all() and (c[:, 1] + 256 <= 600).all()
    assert c[0].tolist() == [0, 0] and c[1].tolist() == [128, 0] and c[nx].tolist() == [0, 128]
    # Row-major: sorted by y then x.
    order = np.lexsort((c[:, 0], c[:, 1]))
    assert (order == np.arange(len(c))).all()


def test_grid_empty_when_image_smaller_than_patch() -> None:
    assert grid_coords(100, 1000, 256, 128).shape == (0, 2)


def test_tissue_fractions_match_exact_box_counts() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((64, 96)) < 0.4
    coords = grid_coords(96 * 8, 64 * 8, 64, 32)
    frac = patch_tissue_fractions(mask, coords, 64, (8.0, 8.0))
    for (x, y), f in zip(coords, frac, strict=True):
        expected = mask[y // 8 : (y + 64) // 8, x // 8 : (x + 64) // 8].mean()
        assert f == pytest.approx(expected, abs=1e-6)


def test_make_grid_filters_by_threshold() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[:, :50] = True  # left half tissue; level 0 is 10x the mask
    grid = make_grid(1000, 1000, 0.5, TilingConfig(patch_size=100, overlap=0.0), tissue_mask=mask)
    assert grid.n_candidates == 100
    assert len(grid) == 50
    assert (grid.coords[:, 0] < 500).all()
    assert np.allclose(grid.tissue_fraction, 1.0)
    everything = make_grid(
        1000,
        1000,
        0.5,
        TilingConfig(patch_size=100, overlap=0.0, tissue_threshold=0.0),
        tissue_mask=mask,
    )
    assert len(everything) == 100


@pytest.mark.parametrize(
    "cfg",
    [
        TilingConfig(target_mpp=0.0),
        TilingConfig(target_mpp=float("nan")),
        TilingConfig(patch_size=4),
        TilingConfig(overlap=1.0),
        TilingConfig(overlap=-0.1),
        TilingConfig(tissue_threshold=1.5),
    ],
)
def test_bad_config_is_rejected_with_the_value(cfg: TilingConfig) -> None:
    with pytest.raises(InvalidInputError):
        cfg.validate()


def test_bad_slide_mpp_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="slide mpp"):
        patch_size_level0(TilingConfig(), 0.0)
