"""The one patch painter (histosic.outputs.raster): known pixels, no gaps, no overlaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histosic.errors import InvalidInputError
from histosic.outputs.raster import composite, paint_patches, slide_thumbnail, write_png
from histosic.store import EmbeddingMeta, Embeddings


def _grid(nx: int, ny: int, *, stride: int = 10, patch: int = 20, skip: int = -1) -> Embeddings:
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    coords = np.stack([gx.ravel() * stride, gy.ravel() * stride], axis=1).astype(np.int64)
    if skip >= 0:
        coords = np.delete(coords, skip, axis=0)
    meta = EmbeddingMeta(
        slide_path="",
        slide_fingerprint="",
        level0_width=(nx - 1) * stride + patch,
        level0_height=(ny - 1) * stride + patch,
        mpp=0.5,
        target_mpp=0.5,
        patch_size=patch,
        patch_size_level0=patch,
        stride_level0=stride,
        overlap=0.5,
        model="test",
    )
    return Embeddings(np.zeros((len(coords), 2), np.float32), coords, meta)


def _colours(n: int) -> np.ndarray:
    rgba = np.zeros((n, 4), np.uint8)
    rgba[:, 0] = np.arange(1, n + 1)
    rgba[:, 3] = 255
    return rgba


def test_known_pixels_at_full_scale() -> None:
    # 2 x 2 patches of 20 px at stride 10: central cells [5, 15) and [15, 25) on each axis.
    emb = _grid(2, 2)
    layer = paint_patches(emb, _colours(4), (30, 30), (1.0, 1.0))
    assert layer.shape == (30, 30, 4) and layer.dtype == np.uint8
    assert (layer[5:15, 5:15, 0] == 1).all() and (layer[5:15, 15:25, 0] == 2).all()
    assert (layer[15:25, 5:15, 0] == 3).all() and (layer[15:25, 15:25, 0] == 4).all()
    assert (layer[5:25, 5:25, 3] == 255).all()
    outside = np.ones((30, 30), bool)
    outside[5:25, 5:25] = False
    assert (layer[outside] == 0).all()


def test_known_pixels_at_half_scale() -> None:
    # Pixel p covers level-0 [2p, 2p + 2); its centre 2p + 1 falls in [5, 15) for p = 2..6.
    emb = _grid(2, 2)
    layer = paint_patches(emb, _colours(4), (15, 15), (0.5, 0.5))
    assert (layer[2:7, 2:7, 0] == 1).all() and (layer[2:7, 7:12, 0] == 2).all()
    assert (layer[7:12, 7:12, 0] == 4).all()
    assert (layer[:2] == 0).all() and (layer[12:] == 0).all() and (layer[:, :2] == 0).all()


def test_missing_patch_stays_transparent() -> None:
    emb = _grid(3, 3, skip=4)  # no centre patch
    layer = paint_patches(emb, _colours(8), (40, 40), (1.0, 1.0))
    assert (layer[15:25, 15:25] == 0).all()
    assert (layer[5:15, 5:15, 3] == 255).all()


@pytest.mark.parametrize("scale", [(0.37, 0.37), (0.731, 0.52), (1.7, 2.3), (0.05, 0.05)])
def test_every_pixel_shows_the_cell_under_its_centre(scale: tuple[float, float]) -> None:
    # No gaps and no overlaps between neighbouring cells, at any scale (the three old painters
    # disagreed by a pixel at cell edges: floor vs round, inclusive PIL rectangles).
    emb = _grid(17, 11, stride=13, patch=26)
    n = emb.n_patches
    rgba = np.zeros((n, 4), np.uint8)
    rgba[:, 0], rgba[:, 1], rgba[:, 3] = np.arange(n) % 256, np.arange(n) // 256, 255
    w, h = round(emb.meta.level0_width * scale[0]), round(emb.meta.level0_height * scale[1])
    layer = paint_patches(emb, rgba, (w, h), scale)
    origin = 13 - 13 / 2  # first centre less half a stride
    for py in range(h):
        for px in range(w):
            cx = int(np.floor(((px + 0.5) / scale[0] - origin) / 13))
            cy = int(np.floor(((py + 0.5) / scale[1] - origin) / 13))
            if 0 <= cx < 17 and 0 <= cy < 11:
                k = cy * 17 + cx
                assert tuple(layer[py, px]) == (k % 256, k // 256, 0, 255), (px, py)
            else:
                assert layer[py, px, 3] == 0, (px, py)


def test_composite_over_background() -> None:
    emb = _grid(2, 2)
    rgba = np.array([[255, 0, 0, 255], [0, 0, 255, 0], [0, 255, 0, 128], [0, 0, 0, 255]], np.uint8)
    bg = np.full((30, 30, 3), 200, np.uint8)
    out = composite(bg, paint_patches(emb, rgba, (30, 30), (1.0, 1.0)))
    assert out.shape == (30, 30, 3)
    assert tuple(out[10, 10]) == (255, 0, 0)  # opaque
    assert tuple(out[10, 20]) == (200, 200, 200)  # transparent
    assert tuple(out[20, 10]) == (100, 228, 100)  # half: PIL's alpha compositing
    assert tuple(out[0, 0]) == (200, 200, 200)  # no cell
    with pytest.raises(InvalidInputError, match="does not match"):
        composite(bg[:10], paint_patches(emb, rgba, (30, 30), (1.0, 1.0)))


def test_bad_arguments() -> None:
    emb = _grid(2, 2)
    with pytest.raises(InvalidInputError, match=r"rgba must have shape \(4, 4\)"):
        paint_patches(emb, np.zeros((3, 4)), (10, 10), (1.0, 1.0))
    with pytest.raises(InvalidInputError, match="must be positive"):
        paint_patches(emb, _colours(4), (10, 10), (0.0, 1.0))


def test_thumbnail_of_a_missing_slide_is_none(tmp_path: Path) -> None:
    assert slide_thumbnail(tmp_path / "nope.svs", (10, 10)) is None
    assert slide_thumbnail(None, (10, 10)) is None
    (tmp_path / "junk.svs").write_bytes(b"not a slide")
    assert slide_thumbnail(tmp_path / "junk.svs", (10, 10)) is None


def test_write_png_round_trip(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 256, (7, 9, 3)).astype(np.uint8)
    out = write_png(tmp_path / "x.png", img)
    with Image.open(out) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im), img)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
