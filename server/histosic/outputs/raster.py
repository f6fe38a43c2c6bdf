"""Pictures of patches: the one patch painter, the one slide thumbnail reader, PNG output.

The painter's rule, shared by the overlay PNG, the colour view and the evaluation pictures: each
patch stands for its central stride x stride cell (the cells of overlapping patches tile the
slide, as the GeoJSON tiles do), and a picture pixel takes the colour of the cell under the
pixel's centre. So neighbouring cells never overlap or leave a gap, whatever the scale, and a
pixel outside every cell stays transparent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from histosic.atomic import atomic_output
from histosic.errors import InvalidInputError
from histosic.store import Embeddings

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["composite", "paint_patches", "read_thumbnail", "slide_thumbnail", "write_png"]

log = logging.getLogger(__name__)


def paint_patches(
    emb: Embeddings,
    rgba: npt.ArrayLike,
    size: tuple[int, int],
    scale: tuple[float, float],
) -> npt.NDArray[np.uint8]:
    """An RGBA layer of ``size`` with each patch's central cell painted in its colour.

    Parameters
    ----------
    emb : Embeddings
        Patch positions (on the stride grid, :meth:`Embeddings.grid_index`).
    rgba : array-like of shape (n_patches, 4), uint8
        Colour and opacity of each patch.
    size : (width, height)
        Picture size in pixels.
    scale : (sx, sy)
        Picture pixels per level-0 pixel along x and y.

    Returns
    -------
    ndarray of shape (height, width, 4), uint8
        Transparent (0, 0, 0, 0) where no cell lies under a pixel's centre.
    """
    colours = np.asarray(rgba, dtype=np.uint8)
    if colours.shape != (emb.n_patches, 4):
        raise InvalidInputError(
            f"rgba must have shape ({emb.n_patches}, 4) (one RGBA colour per patch), got "
            f"{colours.shape}"
        )
    width, height = int(size[0]), int(size[1])
    sx, sy = float(scale[0]), float(scale[1])
    if width < 1 or height < 1 or not (sx > 0 and sy > 0):
        raise InvalidInputError(f"picture size {size} and scale {scale} must be positive")
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    if emb.n_patches == 0:
        return layer
    grid = emb.grid_index()
    stride = float(max(int(emb.meta.stride_level0), 1))
    cols, rows = int(grid[:, 0].max()) + 1, int(grid[:, 1].max()) + 1
    cells = np.zeros((rows, cols, 4), dtype=np.uint8)
    cells[grid[:, 1], grid[:, 0]] = colours
    # Level-0 corner of the cell grid: the first patch's centre less half a stride.
    origin = emb.coords.min(axis=0).astype(np.float64) + emb.meta.patch_size_level0 / 2.0
    origin -= stride / 2.0
    gx = np.floor(((np.arange(width) + 0.5) / sx - origin[0]) / stride).astype(np.int64)
    gy = np.floor(((np.arange(height) + 0.5) / sy - origin[1]) / stride).astype(np.int64)
    px = np.flatnonzero((gx >= 0) & (gx < cols))
    py = np.flatnonzero((gy >= 0) & (gy < rows))
    if px.size and py.size:
        layer[py[0] : py[-1] + 1, px[0] : px[-1] + 1] = cells[np.ix_(gy[py], gx[px])]
    return layer


def composite(
    background: npt.ArrayLike | Image.Image, layer: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """``layer`` (RGBA) over ``background`` (RGB, same size) with PIL's alpha compositing; RGB."""
    from PIL import Image

    base = background if isinstance(background, Image.Image) else None
    if base is None:
        arr = np.asarray(background, dtype=np.uint8)[..., :3]
        base = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if base.size != (layer.shape[1], layer.shape[0]):
        raise InvalidInputError(
            f"background of {base.size[0]}x{base.size[1]} pixels does not match the layer's "
            f"{layer.shape[1]}x{layer.shape[0]}"
        )
    out = Image.alpha_composite(base.convert("RGBA"), Image.fromarray(layer, "RGBA"))
    return np.asarray(out.convert("RGB"), dtype=np.uint8)


def read_thumbnail(
    slide_path: str | os.PathLike[str], max_size: int, *, mpp: float | None = None
) -> Image.Image:
    """The slide's thumbnail, at most ``max_size`` pixels a side, as an RGB image.

    ``mpp`` is the level-0 resolution; plain images (JPEG, PNG) need it to open. Errors of the
    slide reader propagate (:func:`histosic.slides.open_slide`).
    """
    from histosic.slides import open_slide  # needs the optional slide readers (embed extra)

    with open_slide(slide_path, mpp=mpp if mpp and mpp > 0 else None) as slide:
        thumb = slide.get_thumbnail(max_size)
    return thumb.convert("RGB")


def slide_thumbnail(
    slide_path: str | os.PathLike[str] | None, size: tuple[int, int], *, mpp: float | None = None
) -> Image.Image | None:
    """:func:`read_thumbnail` resized to ``size``, or None when the slide cannot be read.

    For pictures whose background is optional: any failure is logged and costs only the
    background.
    """
    if not slide_path or not Path(slide_path).is_file():
        return None
    try:
        thumb = read_thumbnail(slide_path, max(size), mpp=mpp)
    except ImportError as err:
        log.info("no slide reader available (%s); drawing on a white canvas", err)
        return None
    except Exception as err:  # any reader failure only costs the background picture
        log.warning(
            "cannot read a thumbnail of %s (%s); drawing on a white canvas", slide_path, err
        )
        return None
    return thumb.resize(size)


def write_png(
    path: str | os.PathLike[str],
    image: npt.NDArray[np.uint8] | Image.Image,
    *,
    overwrite: bool = False,
) -> Path:
    """Write an image (PIL or an (h, w[, 3 or 4]) uint8 array) as PNG, atomically."""
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    with atomic_output(path, overwrite=overwrite, suffix=".png") as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)
