"""Shared pytest fixtures: real data paths and generated pyramidal TIFF slides.

Slides are written once per session with tifffile as tiled, multi-page pyramids (level 0 first,
then each 2x smaller), with the resolution in the TIFF tags, so OpenSlide and tiffslide read them
as they read a scanner's file. Add fixtures here; do not remove other people's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from histosic import config

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """Real data folder: ``$HISTOSIC_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("HISTOSIC_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real data file {path} is absent (set HISTOSIC_DATA to the shared data folder)"
        )
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return data_root()


@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    """OpenSlide's CMU-1 small region: a real Aperio SVS, 2220x2967 px at 0.499 um/px."""
    return _need(data_root() / "slides" / "cmu-1-small-region.svs")


@pytest.fixture(scope="session")
def digestpath_jpg() -> Path:
    """DigestPath 2019 ``0.jpg``: a plain JPEG H&E image at about 0.5 um/px."""
    return _need(data_root() / "digestpath" / "0.jpg")


@dataclass(frozen=True)
class SyntheticSlide:
    """A generated slide and what is known about it.

    Attributes
    ----------
    path : Path
    mpp : float
        Level-0 microns per pixel recorded in the file.
    image : ndarray of shape (h, w, 3), uint8
        Level-0 pixels.
    mask : ndarray of shape (h, w), bool
        Level-0 tissue ground truth.
    """

    path: Path
    mpp: float
    image: npt.NDArray[np.uint8]
    mask: npt.NDArray[np.bool_]


def _downsample2(img: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    x = img[:h, :w].astype(np.float32)
    mean = (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4
    out: npt.NDArray[np.uint8] = np.rint(mean).astype(np.uint8)
    return out


def write_pyramid(
    path: Path,
    levels: list[npt.NDArray[np.uint8]],
    mpp: float | None,
    *,
    compression: str | None = "zlib",
    tile: int = 256,
) -> Path:
    """Write ``levels`` (level 0 first) as a tiled multi-page pyramidal TIFF.

    ``mpp`` is stored as the TIFF resolution in pixels per centimetre (None: no resolution).
    """
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        for i, lvl in enumerate(levels):
            kwargs: dict[str, object] = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * 2**i)
                kwargs = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            tw.write(
                lvl,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=0 if i == 0 else 1,
                **kwargs,  # type: ignore[arg-type]
            )
    return path


def tissue_image(
    height: int, width: int, blobs: list[tuple[int, int, int, int]], seed: int = 0
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """White glass with H&E-coloured textured rectangles ``(x, y, w, h)``: (image, mask)."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 243, dtype=np.uint8)
    img += rng.integers(0, 8, size=img.shape, dtype=np.uint8)  # glass is not perfectly flat
    mask = np.zeros((height, width), dtype=bool)
    for x, y, w, h in blobs:
        mask[y : y + h, x : x + w] = True
    n = int(mask.sum())
    # Pink stroma with purple nuclei-like speckles.
    pink = np.array([215, 120, 170], dtype=np.int16)
    purple = np.array([120, 60, 150], dtype=np.int16)
    noise = rng.normal(0, 12, size=(n, 3))
    nuclei = rng.random(n) < 0.15
    colours = np.where(nuclei[:, None], purple, pink) + noise
    img[mask] = np.clip(colours, 0, 255).astype(np.uint8)
    return img, mask


def pyramid_levels(img: npt.NDArray[np.uint8], n: int) -> list[npt.NDArray[np.uint8]]:
    levels = [img]
    for _ in range(n - 1):
        levels.append(_downsample2(levels[-1]))
    return levels


@pytest.fixture(scope="session")
def slide_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., SyntheticSlide]:
    """Make a synthetic pyramidal slide: ``factory(name, height, width, blobs, mpp=0.25, ...)``."""
    root = tmp_path_factory.mktemp("slides")

    def make(
        name: str,
        height: int,
        width: int,
        blobs: list[tuple[int, int, int, int]],
        *,
        mpp: float | None = 0.25,
        levels: int = 3,
        compression: str | None = "zlib",
        seed: int = 0,
    ) -> SyntheticSlide:
        img, mask = tissue_image(height, width, blobs, seed=seed)
        path = write_pyramid(root / name, pyramid_levels(img, levels), mpp, compression=compression)
        return SyntheticSlide(path=path, mpp=mpp or 0.0, image=img, mask=mask)

    return make


@pytest.fixture(scope="session")
def synthetic_slide(slide_factory: Callable[..., SyntheticSlide]) -> SyntheticSlide:
    """A "40x" (0.25 um/px) 3-level slide, 3072x2048 px, two tissue regions of known extent.

    At the default tiling (256 px at 0.5 um/px, 50% overlap) it has 77 candidate patches.
    """
    blobs = [(300, 260, 1100, 900), (1800, 1100, 900, 700)]
    return slide_factory("synthetic-40x.tiff", 2048, 3072, blobs)


@pytest.fixture(scope="session")
def small_slide(slide_factory: Callable[..., SyntheticSlide]) -> SyntheticSlide:
    """A small 40x slide (1536x1024 px) with one tissue region: a handful of patches, fast."""
    return slide_factory("small-40x.tiff", 1024, 1536, [(200, 150, 900, 700)], seed=1)


@pytest.fixture
def settings() -> Iterator[Callable[..., config.Settings]]:
    """Change the process's settings for one test: ``settings(offline=True)``; restored after.

    Library code reads :func:`histosic.config.current`, never the environment, so tests that would
    set ``HISTOSIC_*`` variables in-process configure the settings instead.
    """
    saved = config.current()

    def change(**fields: object) -> config.Settings:
        config.configure(dataclasses.replace(config.current(), **fields))  # type: ignore[arg-type]
        return config.current()

    yield change
    config.configure(saved)
