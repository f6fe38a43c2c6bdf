"""The overlay PNG of a clustering: slide thumbnail, classes as translucent colour, seeds marked.

For people who would rather look than read GeoJSON. The slide is read through
:func:`histosic.outputs.raster.slide_thumbnail` when its file is reachable; otherwise the classes
are drawn on a white canvas of the slide's shape. The classes are painted by
:func:`histosic.outputs.raster.paint_patches`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histosic.outputs.qupath_classes import SUGGESTED_SEED_CLASS, class_color
from histosic.outputs.raster import composite, paint_patches, slide_thumbnail, write_png
from histosic.seeds import SeedPoint
from histosic.store import Embeddings

if TYPE_CHECKING:
    from PIL import Image

    from histosic.cluster import SlideClustering

__all__ = ["render_overlay", "write_overlay"]


def _slide_size(emb: Embeddings) -> tuple[int, int]:
    """Level-0 (width, height); from the patch grid when the file does not say (Trident/CLAM)."""
    w, h = int(emb.meta.level0_width), int(emb.meta.level0_height)
    if w > 0 and h > 0:
        return w, h
    if emb.n_patches == 0:
        return 1, 1
    far = emb.coords.max(axis=0) + emb.meta.patch_size_level0
    return int(far[0]), int(far[1])


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
        palette = np.array([class_color(n) for n in clustering.class_names], dtype=np.uint8)
        rgba = np.empty((emb.n_patches, 4), dtype=np.uint8)
        rgba[:, :3] = palette[clustering.result.labels]
        rgba[:, 3] = int(round(255 * alpha))
        layer = paint_patches(emb, rgba, size, (scale, scale))
        canvas = Image.fromarray(composite(canvas, layer), "RGB")

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
        arm, line_width = 2 * radius, max(2, radius // 2)
        for cx, cy in (centres * scale).tolist():
            for fill, w in (((0, 0, 0), line_width + 2), (color, line_width)):
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
    return write_png(path, render_overlay(emb, clustering, **kwargs), overwrite=overwrite)
