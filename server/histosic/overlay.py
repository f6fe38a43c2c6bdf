"""An overlay picture of a clustering: slide thumbnail, classes as translucent colour, seeds marked.

For people who would rather look than read GeoJSON. The slide is read through
:func:`histosic.slides.open_slide` when its file is reachable; otherwise the classes are drawn on a
white canvas of the slide's shape.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histosic.qupath import SUGGESTED_SEED_CLASS, class_color, write_atomic
from histosic.seeds import SeedPoint
from histosic.store import Embeddings

if TYPE_CHECKING:
    from PIL import Image

    from histosic.cluster import SlideClustering

__all__ = ["render_overlay", "slide_thumbnail", "write_overlay"]

log = logging.getLogger(__name__)


def _slide_size(emb: Embeddings) -> tuple[int, int]:
    """Level-0 (width, height); from the patch grid when the file does not say (Trident/CLAM)."""
    w, h = int(emb.meta.level0_width), int(emb.meta.level0_height)
    if w > 0 and h > 0:
        return w, h
    if emb.n_patches == 0:
        return 1, 1
    far = emb.coords.max(axis=0) + emb.meta.patch_size_level0
    return int(far[0]), int(far[1])


def slide_thumbnail(
    slide_path: str | os.PathLike[str] | None, size: tuple[int, int], *, mpp: float | None = None
) -> Image.Image | None:
    """The slide's thumbnail resized to ``size`` (RGB), or None when the slide cannot be read.

    ``mpp`` is the level-0 resolution recorded in the embedding file; plain images (JPEG, PNG)
    need it to open.
    """
    if not slide_path or not Path(slide_path).is_file():
        return None
    try:
        from histosic.slides import open_slide  # needs the optional slide readers (embed extra)
    except ImportError as err:
        log.info("no slide reader available (%s); drawing on a white canvas", err)
        return None
    try:
        with open_slide(slide_path, mpp=mpp if mpp and mpp > 0 else None) as slide:
            thumb = slide.get_thumbnail(max(size))
    except Exception as err:  # any reader failure only costs the background picture
        log.warning(
            "cannot read a thumbnail of %s (%s); drawing on a white canvas", slide_path, err
        )
        return None
    return thumb.convert("RGB").resize(size)


def render_overlay(
    emb: Embeddings,
    clustering: SlideClustering,
    *,
    slide_path: str | os.PathLike[str] | None = None,
    seeds: Sequence[SeedPoint] | None = None,
    max_size: int = 2048,
    alpha: float = 0.4,
) -> Image.Image:
    """Draw the classes over the slide.

    Parameters
    ----------
    emb : Embeddings
    clustering : SlideClustering
    slide_path : path-like, optional
        Slide file for the background; default ``emb.meta.slide_path``. A white canvas is used
        when it cannot be read.
    seeds : sequence of SeedPoint, optional
        Points to mark (default: the seeds the clustering used); suggested seeds are marked too.
    max_size : int, default 2048
        Longest side of the picture in pixels.
    alpha : float, default 0.4
        Opacity of the class colours.

    Returns
    -------
    PIL.Image.Image
        RGB picture, at most ``max_size`` pixels a side, with the slide's aspect ratio.
    """
    from PIL import Image, ImageDraw

    width, height = _slide_size(emb)
    scale = min(1.0, max_size / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    background = slide_thumbnail(
        slide_path if slide_path is not None else emb.meta.slide_path, size, mpp=emb.meta.mpp
    )
    canvas = background if background is not None else Image.new("RGB", size, (255, 255, 255))

    if emb.n_patches:
        # Paint on the stride grid (one pixel per cell), then scale up: fast for 100k patches.
        grid = emb.grid_index()
        stride = max(int(emb.meta.stride_level0), 1)
        cols, rows = int(grid[:, 0].max()) + 1, int(grid[:, 1].max()) + 1
        palette = np.array([class_color(n) for n in clustering.class_names], dtype=np.uint8)
        rgba = np.zeros((rows, cols, 4), dtype=np.uint8)
        rgba[grid[:, 1], grid[:, 0], :3] = palette[clustering.result.labels]
        rgba[grid[:, 1], grid[:, 0], 3] = int(round(255 * alpha))
        layer = Image.fromarray(rgba, "RGBA")
        origin = emb.coords.min(axis=0) + emb.meta.patch_size_level0 / 2.0 - stride / 2.0
        x0, y0 = round(origin[0] * scale), round(origin[1] * scale)
        out_w = max(1, round((origin[0] + cols * stride) * scale) - x0)
        out_h = max(1, round((origin[1] + rows * stride) * scale) - y0)
        layer = layer.resize((out_w, out_h), Image.Resampling.NEAREST)
        full = Image.new("RGBA", size, (0, 0, 0, 0))
        full.paste(layer, (x0, y0))
        canvas = Image.alpha_composite(canvas.convert("RGBA"), full).convert("RGB")

    draw = ImageDraw.Draw(canvas)
    radius = max(3, round(max(size) / 200))
    marks = seeds if seeds is not None else clustering.mapping.used
    for p in marks:
        cx, cy = p.x * scale, p.y * scale
        draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius),
            fill=class_color(p.class_name) if p.class_name else (255, 255, 255),
            outline=(0, 0, 0),
            width=max(1, radius // 3),
        )
    if clustering.suggested.size:
        # Suggestions: a larger cross in the class colour with a dark outline, visible anywhere.
        centres = emb.centers()[clustering.suggested]
        color = class_color(SUGGESTED_SEED_CLASS)
        arm, width = 2 * radius, max(2, radius // 2)
        for cx, cy in (centres * scale).tolist():
            for fill, w in (((0, 0, 0), width + 2), (color, width)):
                draw.line((cx - arm, cy, cx + arm, cy), fill=fill, width=w)
                draw.line((cx, cy - arm, cx, cy + arm), fill=fill, width=w)
    return canvas


def write_overlay(
    path: str | os.PathLike[str],
    emb: Embeddings,
    clustering: SlideClustering,
    *,
    overwrite: bool = False,
    **kwargs: Any,
) -> Path:
    """Render (:func:`render_overlay`, same keyword arguments) and write a PNG atomically."""
    image = render_overlay(emb, clustering, **kwargs)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_atomic(path, buf.getvalue(), overwrite=overwrite)
