"""Slide readers (real OpenSlide and tiffslide on generated pyramids and a real SVS), resolution,
level choice, tissue detection against a known mask, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SyntheticSlide, write_pyramid
from PIL import Image

from histosic.embed.pipeline import read_patches, slide_grid
from histosic.errors import (
    CorruptFileError,
    SlideNotFoundError,
    UnknownResolutionError,
)
from histosic.slides import TissueConfig, detect_tissue, open_slide, white_fraction
from histosic.tiling import TilingConfig, patch_size_level0, patch_tissue_fractions

READERS = ["openslide", "tiffslide"]


@pytest.mark.parametrize("backend", READERS)
def test_pyramid_metadata(synthetic_slide: SyntheticSlide, backend: str) -> None:
    with open_slide(synthetic_slide.path, backend=backend) as s:
        assert s.backend == backend
        assert s.dimensions == (3072, 2048)
        assert s.mpp == pytest.approx(0.25)
        assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert s.level_count == 3


@pytest.mark.parametrize("backend", READERS)
def test_read_region_returns_level0_pixels(synthetic_slide: SyntheticSlide, backend: str) -> None:
    with open_slide(synthetic_slide.path, backend=backend) as s:
        arr = s.read_region_array((1000, 700), 0, (300, 200))
        assert arr.shape == (200, 300, 3) and arr.dtype == np.uint8
        assert np.array_equal(arr, synthetic_slide.image[700:900, 1000:1300])
        img = s.read_region((1000, 700), 0, (300, 200))
        assert img.mode == "RGB" and img.size == (300, 200)


def test_level_choice_for_40x_patched_at_20x(tmp_path: Path) -> None:
    # Level 0 is a 1-pixel checkerboard of pink and white; level 1 is its decimation, all pink.
    # A patch read from level 1 is pink; one read from level 0 and shrunk would be pale pink.
    h = w = 1024
    yy, xx = np.mgrid[0:h, 0:w]
    pink, white = np.array([200, 90, 160], np.uint8), np.array([255, 255, 255], np.uint8)
    level0 = np.where(((yy + xx) % 2 == 0)[..., None], pink, white).astype(np.uint8)
    levels = [level0, level0[::2, ::2].copy(), level0[::4, ::4].copy()]
    path = write_pyramid(tmp_path / "checker.tiff", levels, 0.25)
    for backend in READERS:
        with open_slide(path, backend=backend) as s:
            size0 = patch_size_level0(TilingConfig(), s.mpp)
            assert size0 == 512
            assert s.best_level_for_downsample(size0 / 256) == 1
            patches = read_patches(s, np.array([[0, 0], [256, 0], [512, 512]]), size0, 256)
            assert patches.shape == (3, 256, 256, 3)
            assert np.abs(patches.astype(int) - pink).max() <= 1
            # And at 40x (no downsample) the checkerboard is intact.
            full = read_patches(s, np.array([[0, 0]]), 256, 256)[0]
            assert np.array_equal(full, level0[:256, :256])


def test_read_patches_matches_resized_level0(synthetic_slide: SyntheticSlide) -> None:
    # Runs of neighbouring patches are read as one region; each patch must still be exactly
    # its own pixels: compare with reading every patch alone.
    with open_slide(synthetic_slide.path) as s:
        coords = np.array(
            [[256 * i, 512] for i in range(6)] + [[0, 768], [1024, 768]], dtype=np.int64
        )
        batch = read_patches(s, coords, 512, 224)
        for k, (x, y) in enumerate(coords):
            alone = s.read_patch(int(x), int(y), 512, 224)
            assert np.array_equal(batch[k], alone)


@pytest.mark.parametrize("backend", READERS)
def test_tissue_filter_against_known_mask(synthetic_slide: SyntheticSlide, backend: str) -> None:
    with open_slide(synthetic_slide.path, backend=backend) as s:
        grid, mask = slide_grid(s, TilingConfig())
    assert grid.n_candidates == 77
    # The thumbnail mask agrees with the truth on almost every pixel.
    truth_small = np.asarray(
        Image.fromarray(synthetic_slide.mask).resize(mask.shape[::-1], Image.Resampling.NEAREST)
    )
    assert (mask == truth_small).mean() > 0.98
    # Each kept patch truly is on tissue; each patch clearly on tissue is kept.
    from histosic.tiling import grid_coords

    all_coords = grid_coords(3072, 2048, 512, 256)
    true_frac = patch_tissue_fractions(synthetic_slide.mask, all_coords, 512, (1.0, 1.0))
    kept = {tuple(c) for c in grid.coords.tolist()}
    for c, f in zip(all_coords.tolist(), true_frac, strict=True):
        if f >= 0.6:
            assert tuple(c) in kept, (c, f)
        if f <= 0.4:
            assert tuple(c) not in kept, (c, f)
    assert 20 <= len(grid) <= 60
    idx = [all_coords.tolist().index(c) for c in grid.coords.tolist()]
    assert np.abs(grid.tissue_fraction - true_frac[idx]).max() < 0.1


def test_blank_slide_has_no_tissue() -> None:
    glass = np.full((256, 256, 3), 240, np.uint8)
    glass += np.random.default_rng(0).integers(0, 10, glass.shape, dtype=np.uint8)
    assert not detect_tissue(glass).any()
    assert detect_tissue(glass, TissueConfig(method="all")).all()


def test_white_fraction() -> None:
    p = np.zeros((2, 10, 10, 3), np.uint8)
    p[0] = 255
    p[1, :5] = 230
    assert white_fraction(p).tolist() == [1.0, 0.5]


def test_real_svs_with_both_readers(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as a, open_slide(cmu_svs, backend="tiffslide") as b:
        assert a.backend == "openslide"
        assert a.dimensions == b.dimensions == (2220, 2967)
        assert a.mpp == pytest.approx(0.499) and b.mpp == pytest.approx(0.499)
        ra = a.read_region_array((800, 1200), 0, (256, 256)).astype(int)
        rb = b.read_region_array((800, 1200), 0, (256, 256)).astype(int)
        # Two JPEG decoders: the same picture up to rounding.
        assert np.abs(ra - rb).mean() < 3
        thumb = a.get_thumbnail(512)
        assert thumb.mode == "RGB" and max(thumb.size) == 512
        mask = detect_tissue(thumb)
        assert 0.1 < mask.mean() < 0.9


def test_plain_jpeg_needs_mpp(digestpath_jpg: Path) -> None:
    with pytest.raises(UnknownResolutionError, match="--slide-mpp"):
        open_slide(digestpath_jpg)
    with open_slide(digestpath_jpg, mpp=0.5) as s:
        assert s.backend == "pil" and s.dimensions == (4099, 4249) and s.mpp_source == "user"
        grid, _ = slide_grid(s, TilingConfig(target_mpp=1.0))
        assert 50 < len(grid) < grid.n_candidates
        # Off-image reads are white, not an error.
        edge = s.read_region_array((4000, 4200), 0, (200, 100))
        assert (edge[60:, 150:] == 255).all()


def test_given_mpp_overrides_metadata(synthetic_slide: SyntheticSlide) -> None:
    with open_slide(synthetic_slide.path, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_source == "user"


def test_tiff_without_resolution(tmp_path: Path) -> None:
    img = np.full((300, 400, 3), 200, np.uint8)
    path = write_pyramid(tmp_path / "nores.tif", [img], None)
    with pytest.raises(UnknownResolutionError, match="--slide-mpp"):
        open_slide(path)
    with open_slide(path, mpp=1.0) as s:
        assert s.dimensions == (400, 300)


def test_plain_striped_tiff_with_mpp(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    path = tmp_path / "plain.tif"
    Image.fromarray(img).save(path)  # strips, not tiles: OpenSlide refuses it
    with open_slide(path, mpp=0.5) as s:
        assert s.backend in ("tiffslide", "pil")
        assert np.array_equal(s.read_region_array((10, 20), 0, (50, 40)), img[20:60, 10:60])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError, match=r"nope\.svs") as info:
        open_slide(tmp_path / "nope.svs")
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("name", ["notes.svs", "notes.jpg", "notes.tiff"])
def test_not_an_image(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("this is not a slide\n" * 100)
    with pytest.raises(CorruptFileError, match=r"not a slide or image|damaged"):
        open_slide(path, mpp=0.5)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.svs"
    path.touch()
    with pytest.raises(CorruptFileError, match="empty"):
        open_slide(path)


def test_truncated_jpeg(tmp_path: Path, digestpath_jpg: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(digestpath_jpg.read_bytes()[:20000])
    with pytest.raises(CorruptFileError, match="damaged or truncated"):
        open_slide(path, mpp=0.5)


def test_thumbnail_in_strips_matches_whole(
    synthetic_slide: SyntheticSlide, monkeypatch: pytest.MonkeyPatch
) -> None:
    import histosic.slides as slides_mod

    with open_slide(synthetic_slide.path) as s:
        whole = np.asarray(s.get_thumbnail(700)).astype(int)
        monkeypatch.setattr(slides_mod, "_STRIP_PIXELS", 20_000)  # many thin strips
        strips = np.asarray(s.get_thumbnail(700)).astype(int)
    assert whole.shape == strips.shape == (467, 700, 3)
    assert np.abs(whole - strips).mean() < 2


@pytest.mark.parametrize("backend", READERS)
def test_corrupt_tile_is_a_clear_error(tmp_path: Path, backend: str) -> None:
    import tifffile

    img = np.full((512, 512, 3), (200, 100, 150), np.uint8)
    good = write_pyramid(tmp_path / "good.tiff", [img], 0.5, compression="jpeg")
    data = bytearray(good.read_bytes())
    with tifffile.TiffFile(good) as tf:
        off, n = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
    data[off : off + n] = bytes(n)
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(bytes(data))
    with open_slide(bad, backend=backend) as s:
        with pytest.raises(CorruptFileError, match=r"corrupt tiles") as info:
            s.read_region_array((0, 0), 0, (256, 256))
        assert "bad.tiff" in str(info.value)
        if backend == "tiffslide":
            # Intact tiles still read (an OpenSlide handle is unusable after any error).
            assert s.read_region_array((256, 256), 0, (256, 256)).shape == (256, 256, 3)
