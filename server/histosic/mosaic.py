"""Virtual slides: real WSSS4LUAD tiles packed on a white background, with exact ground truth.

A mosaic is a grid of real H&E tiles (each keeping its own pixel mask) written as a pyramidal tiled
TIFF with resolution metadata, so that the whole slide path (OpenSlide or tiffslide, tiling, tissue
detection, embedding, clustering) runs on real tissue and every patch has a known label.

Outputs of :func:`build_mosaic` for a slide ``NAME.tiff``:

- ``NAME.tiff``: RGB pyramid, 256 px tiles, deflate, level-0 resolution ``mpp`` um/px.
- ``NAME_mask.png``: binary tumour mask (255 tumour, 0 elsewhere), same size as level 0.
- ``NAME_labels.png``: tissue classes, 0 background, 1 tumour epithelium, 2 tumour-associated
  stroma, 3 normal tissue (WSSS4LUAD palette index + 1; its background index 3 becomes 0).
- ``NAME.json``: where each tile sits and where it came from.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from histosic.atomic import atomic_output, write_text_atomic
from histosic.errors import InvalidInputError, OutputExistsError, SlideNotFoundError
from histosic.outputs.raster import write_png

__all__ = [
    "LABEL_NAMES",
    "MosaicResult",
    "PlacedTile",
    "TileSource",
    "build_mosaic",
    "load_tile",
    "read_tile_index",
    "select_tiles",
    "write_pyramid_tiff",
]

log = logging.getLogger(__name__)

# Label values in ``*_labels.png`` (WSSS4LUAD palette index + 1, background 0).
LABEL_NAMES = {0: "background", 1: "tumour", 2: "stroma", 3: "normal"}
_WSSS_BACKGROUND = 3
_TILE = 256


@dataclass(frozen=True)
class TileSource:
    """One WSSS4LUAD image with its masks and class fractions (a row of ``index.csv``)."""

    image: Path
    mask: Path  # palette PNG: 0 tumour, 1 stroma, 2 normal, 3 background
    background_mask: Path  # 1 = background
    width: int
    height: int
    frac_tumour: float
    frac_stroma: float
    frac_normal: float
    frac_background: float


@dataclass(frozen=True)
class PlacedTile:
    """Where a tile landed in the mosaic (level-0 pixels, top-left) and where it came from."""

    source: str
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class MosaicResult:
    """Paths written by :func:`build_mosaic` and the layout."""

    slide: Path
    mask: Path
    labels: Path
    layout: Path
    width: int
    height: int
    mpp: float
    tiles: tuple[PlacedTile, ...]


def read_tile_index(
    data_dir: str | os.PathLike[str], *, splits: Sequence[str] | None = None
) -> list[TileSource]:
    """Read ``index.csv`` of a WSSS4LUAD folder (as in ``shared/data/wsss4luad``).

    Parameters
    ----------
    data_dir : path
    splits : sequence of str, optional
        Keep only tiles of these splits (``validation``, ``testing``), e.g. to build mosaics
        from tiles that a self-supervised backbone was not trained on.

    Raises
    ------
    SlideNotFoundError
        When the folder or its ``index.csv`` is missing.
    InvalidInputError
        When a split names none of the index's splits.
    """
    root = Path(data_dir)
    index = root / "index.csv"
    if not index.is_file():
        raise SlideNotFoundError(
            f"no index.csv in {root}; pass the wsss4luad folder (e.g. ../shared/data/wsss4luad)"
        )
    out: list[TileSource] = []
    found: set[str] = set()
    with index.open(newline="") as fh:
        for row in csv.DictReader(fh):
            split, name = row["split"], row["file"]
            out.append(
                TileSource(
                    image=root / split / "img" / name,
                    mask=root / split / "mask" / name,
                    background_mask=root / split / "background-mask" / name,
                    width=int(row["width"]),
                    height=int(row["height"]),
                    frac_tumour=float(row["frac_tumour"]),
                    frac_stroma=float(row["frac_stroma"]),
                    frac_normal=float(row["frac_normal"]),
                    frac_background=float(row["frac_background"]),
                )
            )
            found.add(split)
    if splits is not None:
        unknown = sorted(set(splits) - found)
        if unknown:
            raise InvalidInputError(
                f"unknown split {', '.join(unknown)} in {index}; it has {', '.join(sorted(found))}"
            )
        keep = {str(root / sp / "img") for sp in splits}
        out = [t for t in out if str(t.image.parent) in keep]
    return out


def select_tiles(
    sources: Sequence[TileSource],
    n: int,
    *,
    random_state: int = 0,
    max_side: int = 600,
    min_tumour_share: float = 0.2,
    max_tumour_share: float = 0.6,
    normal_tiles: int = 0,
) -> list[TileSource]:
    """Draw ``n`` tiles at random, with the mosaic's tumour share of tissue in a set range.

    Tiles larger than ``max_side`` are skipped (one WSSS4LUAD image is 816 x 1710). The draw is
    repeated (up to 200 times, deterministically) until the tumour share of the tissue lies in
    ``[min_tumour_share, max_tumour_share]``, so every mosaic holds both tumour and non-tumour.
    ``normal_tiles`` of the tiles are drawn among those with normal tissue (at least 5%; only 7 of
    the 98 WSSS4LUAD tiles have it), so that the mosaic has all three tissue classes.
    """
    pool = [s for s in sources if max(s.width, s.height) <= max_side]
    normal = [i for i, s in enumerate(pool) if s.frac_normal > 0.05]
    if n < 1 or n > len(pool):
        raise InvalidInputError(
            f"cannot draw {n} tiles from {len(pool)} usable tiles; pick 1..{len(pool)}"
        )
    if normal_tiles < 0 or normal_tiles > min(n, len(normal)):
        raise InvalidInputError(
            f"cannot draw {normal_tiles} tiles with normal tissue: {len(normal)} usable tiles have "
            f"it and the mosaic has {n} tiles"
        )
    rng = np.random.default_rng(random_state)
    best: list[TileSource] = []
    best_gap = np.inf
    for _ in range(200):
        forced = list(rng.choice(normal, size=normal_tiles, replace=False)) if normal_tiles else []
        rest = [i for i in range(len(pool)) if i not in set(forced)]
        chosen = forced + list(rng.choice(rest, size=n - len(forced), replace=False))
        pick = [pool[int(i)] for i in rng.permutation(chosen)]
        area = np.array([s.width * s.height for s in pick], dtype=np.float64)
        tumour = float(np.sum(area * [s.frac_tumour for s in pick]))
        tissue = float(np.sum(area * [1.0 - s.frac_background for s in pick]))
        share = tumour / tissue if tissue > 0 else 0.0
        gap = max(min_tumour_share - share, share - max_tumour_share, 0.0)
        if gap < best_gap:
            best, best_gap = pick, gap
        if gap == 0.0:
            break
    return best


def load_tile(source: TileSource) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """The tile's RGB pixels (h, w, 3) and its labels (h, w) as in ``*_labels.png``."""
    from PIL import Image

    try:
        with Image.open(source.image) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        with Image.open(source.mask) as im:
            palette = np.asarray(im, dtype=np.uint8)
        with Image.open(source.background_mask) as im:
            background = np.asarray(im, dtype=np.uint8) > 0
    except FileNotFoundError as err:
        raise SlideNotFoundError(f"tile file missing: {err.filename}") from err
    if palette.shape != rgb.shape[:2] or background.shape != rgb.shape[:2]:
        raise InvalidInputError(
            f"masks of {source.image} have shapes {palette.shape}, {background.shape}; "
            f"image is {rgb.shape[:2]}"
        )
    labels = (palette.astype(np.int16) + 1).astype(np.uint8)
    labels[(palette == _WSSS_BACKGROUND) | background] = 0
    return rgb, labels


def _pack(sizes: Sequence[tuple[int, int]], row_width: int, gap: int) -> list[tuple[int, int]]:
    """Shelf packing: left to right, a new row when the next tile would pass ``row_width``."""
    out: list[tuple[int, int]] = []
    x = y = gap
    row_h = 0
    for w, h in sizes:
        if x > gap and x + w + gap > row_width:
            x, y = gap, y + row_h + gap
            row_h = 0
        out.append((x, y))
        x += w + gap
        row_h = max(row_h, h)
    return out


def write_pyramid_tiff(
    path: str | os.PathLike[str], rgb: npt.NDArray[np.uint8], *, mpp: float, tile: int = _TILE
) -> Path:
    """Write an RGB image as a pyramidal tiled TIFF that OpenSlide and tiffslide both open.

    Levels halve until the longer side is under ``tile``; each level is a top-level page (level
    0 full size, the others marked reduced-resolution), deflate-compressed, with X/Y resolution in
    pixels per centimetre so readers report ``mpp`` microns per pixel. Written to a temporary name
    and renamed.
    """
    import tifffile
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidInputError(f"expected an (h, w, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    if not mpp > 0:
        raise InvalidInputError(f"mpp must be positive, got {mpp}")
    out = Path(path)
    levels = [rgb]
    while max(levels[-1].shape[:2]) > tile:
        h, w = levels[-1].shape[:2]
        im = Image.fromarray(levels[-1]).resize(
            (max(w // 2, 1), max(h // 2, 1)), Image.Resampling.BILINEAR
        )
        levels.append(np.asarray(im, dtype=np.uint8))
    with (
        atomic_output(out, overwrite=True, suffix=".tiff") as tmp,
        tifffile.TiffWriter(tmp, bigtiff=False) as tw,
    ):
        for i, level in enumerate(levels):
            scale = 2**i
            px_per_cm = 1e4 / (mpp * scale)
            tw.write(
                level,
                photometric="rgb",
                tile=(tile, tile),
                compression="zlib",
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if i else 0,
                description=f"histosic mosaic level {i}" if i else "histosic mosaic",
                metadata=None,
            )
    return out


def build_mosaic(
    tiles: Sequence[TileSource],
    out: str | os.PathLike[str],
    *,
    mpp: float = 1.0,
    row_width: int = 1600,
    gap: int = 64,
    overwrite: bool = False,
) -> MosaicResult:
    """Pack real tiles on a white background into a pyramidal TIFF plus ground-truth masks.

    Parameters
    ----------
    tiles : sequence of TileSource
        The tiles, placed in this order (shelf packing, rows up to ``row_width`` pixels).
    out : path-like
        The slide file to write (``.tiff``); masks and layout go beside it (see module doc).
    mpp : float, default 1.0
        Level-0 resolution recorded in the TIFF (WSSS4LUAD is about 1 um/px).
    row_width : int, default 1600
        Target width of the mosaic in pixels.
    gap : int, default 64
        White margin between tiles and around the mosaic, in pixels.
    overwrite : bool, default False
        Replace existing outputs; otherwise :class:`OutputExistsError`.

    Returns
    -------
    MosaicResult
    """
    if not tiles:
        raise InvalidInputError("no tiles given; a mosaic needs at least one tile")
    if gap < 0 or row_width < 1:
        raise InvalidInputError(f"gap must be >= 0 and row_width >= 1, got {gap}, {row_width}")
    slide = Path(out)
    if slide.suffix.lower() not in (".tif", ".tiff"):
        raise InvalidInputError(f"mosaic output must end in .tif or .tiff, got {slide.name}")
    stem = slide.with_suffix("")
    mask_path = stem.with_name(stem.name + "_mask.png")
    labels_path = stem.with_name(stem.name + "_labels.png")
    layout_path = stem.with_suffix(".json")
    for p in (slide, mask_path, labels_path, layout_path):
        if p.exists() and not overwrite:
            raise OutputExistsError(
                f"{p} exists; pass overwrite=True (CLI: --overwrite) to replace it"
            )
    slide.parent.mkdir(parents=True, exist_ok=True)

    loaded = [load_tile(s) for s in tiles]
    sizes = [(rgb.shape[1], rgb.shape[0]) for rgb, _ in loaded]
    positions = _pack(sizes, max(row_width, max(w for w, _ in sizes) + 2 * gap), gap)
    width = max(x + w for (x, _), (w, _) in zip(positions, sizes, strict=True)) + gap
    height = max(y + h for (_, y), (_, h) in zip(positions, sizes, strict=True)) + gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    labels = np.zeros((height, width), dtype=np.uint8)
    placed: list[PlacedTile] = []
    for (rgb, lab), (x, y), src in zip(loaded, positions, tiles, strict=True):
        h, w = lab.shape
        canvas[y : y + h, x : x + w] = rgb
        labels[y : y + h, x : x + w] = lab
        placed.append(PlacedTile(source=str(src.image), x=x, y=y, width=w, height=h))

    write_pyramid_tiff(slide, canvas, mpp=mpp)
    write_png(mask_path, np.where(labels == 1, 255, 0).astype(np.uint8), overwrite=True)
    write_png(labels_path, labels, overwrite=True)
    layout: dict[str, Any] = {
        "slide": slide.name,
        "width": width,
        "height": height,
        "mpp": mpp,
        "labels": LABEL_NAMES,
        "tiles": [asdict(p) for p in placed],
    }
    write_text_atomic(layout_path, json.dumps(layout, indent=1), overwrite=True)
    tissue = int(np.count_nonzero(labels))
    log.info(
        "mosaic %s: %d tiles, %dx%d px, tumour %.2f of tissue",
        slide,
        len(placed),
        width,
        height,
        float(np.count_nonzero(labels == 1)) / max(tissue, 1),
    )
    return MosaicResult(
        slide=slide,
        mask=mask_path,
        labels=labels_path,
        layout=layout_path,
        width=width,
        height=height,
        mpp=mpp,
        tiles=tuple(placed),
    )
