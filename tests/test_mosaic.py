"""Mosaic virtual slides: tiles and masks line up, the pyramid opens in OpenSlide and tiffslide."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histosic.cli import main
from histosic.errors import InvalidInputError, OutputExistsError, SlideNotFoundError
from histosic.mosaic import (
    TileSource,
    build_mosaic,
    load_tile,
    read_tile_index,
    select_tiles,
)

REPO = Path(__file__).resolve().parents[1]


def _wsss_dir() -> Path:
    env = os.environ.get("HISTOSIC_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    return root / "wsss4luad"


@pytest.fixture()
def fake_wsss(tmp_path: Path) -> Path:
    """A WSSS4LUAD-shaped folder with generated tiles: palette masks and background masks."""
    root = tmp_path / "wsss"
    rng = np.random.default_rng(0)
    rows = []
    for i, (w, h) in enumerate([(120, 90), (80, 140), (100, 100), (150, 70)]):
        for sub in ("img", "mask", "background-mask"):
            (root / "validation" / sub).mkdir(parents=True, exist_ok=True)
        rgb = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
        palette = np.zeros((h, w), np.uint8)
        palette[:, w // 2 :] = 1 + (i % 2)  # left half tumour, right half stroma or normal
        palette[: h // 5] = 3  # top strip background
        bg = (palette == 3).astype(np.uint8)
        rgb[bg > 0] = 255
        name = f"{i:02d}.png"
        Image.fromarray(rgb).save(root / "validation" / "img" / name)
        pim = Image.fromarray(palette, mode="P")
        pim.putpalette([0, 64, 128, 64, 128, 0, 128, 0, 64, 255, 255, 255])
        pim.save(root / "validation" / "mask" / name)
        Image.fromarray(bg, mode="L").save(root / "validation" / "background-mask" / name)
        frac = [float(np.mean(palette == c)) for c in range(4)]
        rows.append(["validation", name, w, h, *frac])
    with (root / "index.csv").open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(
            [
                "split",
                "file",
                "width",
                "height",
                "frac_tumour",
                "frac_stroma",
                "frac_normal",
                "frac_background",
            ]
        )
        wr.writerows(rows)
    return root


def test_load_tile_maps_palette_to_labels(fake_wsss: Path) -> None:
    src = read_tile_index(fake_wsss)[0]
    rgb, labels = load_tile(src)
    with Image.open(src.mask) as im:
        palette = np.asarray(im)
    assert rgb.shape[:2] == labels.shape == palette.shape
    assert np.all(labels[palette == 0] == 1)  # tumour
    assert np.all(labels[palette == 3] == 0)  # background
    assert np.all(labels[palette == 1] == 2)  # stroma


def test_mosaic_tiles_and_masks_line_up(fake_wsss: Path, tmp_path: Path) -> None:
    sources = read_tile_index(fake_wsss)
    res = build_mosaic(sources, tmp_path / "m.tiff", mpp=1.0, row_width=300, gap=16)
    layout = json.loads(res.layout.read_text())
    assert len(layout["tiles"]) == len(sources) == len(res.tiles)
    with Image.open(res.labels) as im:
        labels = np.asarray(im)
    with Image.open(res.mask) as im:
        mask = np.asarray(im)
    assert labels.shape == mask.shape == (res.height, res.width)
    import tifffile

    level0 = tifffile.imread(res.slide, key=0)
    assert level0.shape == (res.height, res.width, 3)
    covered = np.zeros(labels.shape, bool)
    for placed, src in zip(res.tiles, sources, strict=True):
        rgb, lab = load_tile(src)
        sl = np.s_[placed.y : placed.y + placed.height, placed.x : placed.x + placed.width]
        assert np.array_equal(level0[sl], rgb)  # the tile's pixels, losslessly
        assert np.array_equal(labels[sl], lab)  # and its own mask in the same place
        assert np.array_equal(mask[sl] == 255, lab == 1)
        covered[sl] = True
    assert np.all(level0[~covered] == 255) and np.all(labels[~covered] == 0)


def test_mosaic_pyramid_opens_with_resolution(fake_wsss: Path, tmp_path: Path) -> None:
    res = build_mosaic(read_tile_index(fake_wsss), tmp_path / "m.tiff", mpp=1.0, row_width=300)
    import openslide
    import tiffslide

    with openslide.OpenSlide(str(res.slide)) as s:
        assert s.dimensions == (res.width, res.height)
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(1.0)
        assert s.level_count >= 1
    t = tiffslide.TiffSlide(res.slide)
    try:
        assert t.dimensions == (res.width, res.height)
        assert float(t.properties["tiffslide.mpp-x"]) == pytest.approx(1.0)
    finally:
        t.close()


def test_mosaic_refuses_to_overwrite_and_bad_names(fake_wsss: Path, tmp_path: Path) -> None:
    sources = read_tile_index(fake_wsss)[:2]
    build_mosaic(sources, tmp_path / "m.tiff")
    with pytest.raises(OutputExistsError, match="overwrite"):
        build_mosaic(sources, tmp_path / "m.tiff")
    build_mosaic(sources, tmp_path / "m.tiff", overwrite=True)
    with pytest.raises(InvalidInputError, match=r"\.tif"):
        build_mosaic(sources, tmp_path / "m.png")
    with pytest.raises(InvalidInputError, match="at least one tile"):
        build_mosaic([], tmp_path / "n.tiff")
    with pytest.raises(SlideNotFoundError, match=r"index\.csv"):
        read_tile_index(tmp_path / "nowhere")
    assert not list(tmp_path.glob("*.partial"))


def test_select_tiles_is_deterministic_and_mixed(fake_wsss: Path) -> None:
    sources = read_tile_index(fake_wsss)
    a = select_tiles(sources, 3, random_state=1)
    b = select_tiles(sources, 3, random_state=1)
    assert a == b and len(set(a)) == 3
    assert any(s.frac_tumour > 0 for s in a)
    with pytest.raises(InvalidInputError, match="cannot draw"):
        select_tiles(sources, 10)


def test_mosaic_command_on_real_tiles(tmp_path: Path) -> None:
    data = _wsss_dir()
    if not (data / "index.csv").is_file():
        pytest.skip(f"WSSS4LUAD data absent at {data} (set HISTOSIC_DATA)")
    rc = main(["mosaic", str(tmp_path), "--data", str(data), "--tiles", "4", "--seed", "3"])
    assert rc == 0
    slide = tmp_path / "mosaic-03.tiff"
    with Image.open(tmp_path / "mosaic-03_labels.png") as im:
        labels = np.asarray(im)
    share = int(np.count_nonzero(labels == 1)) / max(int(np.count_nonzero(labels)), 1)
    assert 0.2 <= share <= 0.6  # both tumour and non-tumour tissue
    src: list[TileSource] = read_tile_index(data)
    layout = json.loads((tmp_path / "mosaic-03.json").read_text())
    first = layout["tiles"][0]
    tile = next(s for s in src if str(s.image) == first["source"])
    rgb, lab = load_tile(tile)
    import tiffslide

    t = tiffslide.TiffSlide(slide)
    try:
        region = np.asarray(
            t.read_region((first["x"], first["y"]), 0, (first["width"], first["height"])).convert(
                "RGB"
            )
        )
    finally:
        t.close()
    assert np.array_equal(region, rgb)
    assert np.array_equal(
        labels[first["y"] : first["y"] + lab.shape[0], first["x"] : first["x"] + lab.shape[1]], lab
    )


def test_select_tiles_with_normal_tissue(fake_wsss: Path) -> None:
    sources = read_tile_index(fake_wsss)
    with_normal = {s for s in sources if s.frac_normal > 0.05}
    assert len(with_normal) == 2
    pick = select_tiles(sources, 3, normal_tiles=2, random_state=0)
    assert with_normal <= set(pick)
    with pytest.raises(InvalidInputError, match="normal tissue"):
        select_tiles(sources, 3, normal_tiles=3)


def test_split_filter_keeps_only_that_split(tmp_path: Path) -> None:
    data = _wsss_dir()
    if not (data / "index.csv").is_file():
        pytest.skip(f"WSSS4LUAD data absent at {data} (set HISTOSIC_DATA)")
    everything = read_tile_index(data)
    val = read_tile_index(data, splits=["validation"])
    test = read_tile_index(data, splits=["testing"])
    assert len(val) + len(test) == len(everything) and val and test
    assert all(s.image.parent.parent.name == "validation" for s in val)
    with pytest.raises(InvalidInputError, match="unknown split training"):
        read_tile_index(data, splits=["training"])
    # The command draws every tile of a held-out mosaic from that split.
    rc = main(["mosaic", str(tmp_path), "--data", str(data), "--tiles", "4", "--split", "testing"])
    assert rc == 0
    layout = json.loads((tmp_path / "mosaic-00.json").read_text())
    assert all("/testing/img/" in t["source"] for t in layout["tiles"])
