"""Ground truth for the evaluation: per-patch class fractions from a mask image or QuPath polygons.

A patch is positive when at least half its area lies in the positive region (the paper's rule).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from histosic.errors import InvalidInputError, SlideNotFoundError

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

NEGATIVE = 0
POSITIVE = 1


@dataclass
class Truth:
    """Per-class area fraction of each patch, and the patch labels that follow from it.

    ``fractions[:, c]`` is the fraction of patch area in class ``c``; class 0 is the rest (negative
    or background). ``labels`` is the binary truth (1 = at least ``threshold`` of the patch in the
    positive class). ``classes`` is the multi-class truth (majority tissue class, 0 = none) or None.
    """

    fractions: FloatArray  # (n, n_classes)
    labels: IntArray  # (n,) 0/1
    classes: IntArray | None = None  # (n,) 1..C, 0 = no tissue class
    class_names: tuple[str, ...] = ("negative", "positive")
    #: The positive share each label was decided on (``labels = share >= threshold``).
    share: FloatArray | None = None
    threshold: float = 0.5

    @property
    def positive_ratio(self) -> float:
        return float(self.labels.mean()) if self.labels.size else 0.0


def patch_fractions(
    region: npt.NDArray[Any],
    coords: npt.ArrayLike,
    patch_size_level0: float,
    scale: tuple[float, float] = (1.0, 1.0),
) -> FloatArray:
    """Fraction of each patch's area where ``region`` is true.

    Parameters
    ----------
    region : ndarray of bool of shape (H, W)
        The region at mask resolution.
    coords : array-like of shape (n, 2)
        Level-0 top-left x, y of each patch.
    patch_size_level0 : float
        Patch side in level-0 pixels.
    scale : (float, float)
        Level-0 pixels per mask pixel in x and y.

    Returns
    -------
    ndarray of shape (n,), values in [0, 1]
    """
    m = np.asarray(region, dtype=bool)
    if m.ndim != 2:
        raise InvalidInputError(f"region must be a 2-D mask, got shape {m.shape}")
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    h, w = m.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = m.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    sx, sy = scale
    x0 = np.clip(np.rint(xy[:, 0] / sx), 0, w).astype(np.int64)
    x1 = np.clip(np.rint((xy[:, 0] + patch_size_level0) / sx), 0, w).astype(np.int64)
    y0 = np.clip(np.rint(xy[:, 1] / sy), 0, h).astype(np.int64)
    y1 = np.clip(np.rint((xy[:, 1] + patch_size_level0) / sy), 0, h).astype(np.int64)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = max((patch_size_level0 / sx) * (patch_size_level0 / sy), 1e-9)
    return np.clip(inside / area, 0.0, 1.0)


def _geojson_region(
    path: Path, width: int, height: int, positive: str | None, max_side: int = 4096
) -> tuple[npt.NDArray[np.bool_], tuple[float, float]]:
    """Rasterise the polygons of a GeoJSON file (of class ``positive`` if given)."""
    from PIL import Image, ImageDraw

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidInputError(f"cannot read GeoJSON ground truth {path}: {err}") from err
    feats = data.get("features", [data] if data.get("type") == "Feature" else [])
    if isinstance(data, list):
        feats = data
    down = max(1.0, max(width, height) / max_side)
    mw, mh = max(1, math.ceil(width / down)), max(1, math.ceil(height / down))
    img = Image.new("1", (mw, mh), 0)
    draw = ImageDraw.Draw(img)
    n_used = 0
    for f in feats:
        props = f.get("properties") or {}
        cls = (props.get("classification") or {}).get("name")
        if positive is not None and cls is not None and cls.casefold() != positive.casefold():
            continue
        geom = f.get("geometry") or {}
        polys = (
            [geom.get("coordinates", [])]
            if geom.get("type") == "Polygon"
            else geom.get("coordinates", [])
            if geom.get("type") == "MultiPolygon"
            else []
        )
        for poly in polys:
            for ring_i, ring in enumerate(poly):
                pts = [(float(x) / down, float(y) / down) for x, y, *_ in ring]
                if len(pts) >= 3:
                    draw.polygon(pts, fill=0 if ring_i else 1)  # later rings are holes
                    n_used += ring_i == 0
    if n_used == 0:
        raise InvalidInputError(
            f"{path} holds no polygon"
            + (f" of class {positive!r}" if positive else "")
            + "; export the positive-class annotations from QuPath as GeoJSON"
        )
    return np.asarray(img, dtype=bool), (width / mw, height / mh)


def load_truth(
    path: str | os.PathLike[str],
    coords: npt.ArrayLike,
    patch_size_level0: float,
    *,
    slide_size: tuple[int, int],
    positive: str | None = None,
    threshold: float = 0.5,
    labels: bool = False,
    label_names: Mapping[int, str] | None = None,
    positive_label: int = 1,
    relative_to_tissue: bool = True,
) -> Truth:
    """Patch ground truth from a mask image or a QuPath GeoJSON file.

    Parameters
    ----------
    path : path-like
        A mask image (any size; scaled to the slide), or ``.geojson``/``.json`` polygons.
        Greyscale masks are positive where the value is above 127 (DigestPath's JPEG masks).
    coords : array-like of shape (n, 2)
        Level-0 top-left x, y of each patch.
    patch_size_level0 : float
    slide_size : (width, height)
        Level-0 size of the slide, to scale the mask.
    positive : str, optional
        GeoJSON: the class name of the positive polygons (default: every polygon).
    threshold : float, default 0.5
        Positive when at least this fraction of the patch lies in the positive region.
    labels : bool, default False
        The image is a label image (0 none, 1..C classes, as ``histosic mosaic`` writes); class
        ``positive_label`` is the positive class and the multi-class truth is filled in. A patch
        is then positive when the positive class covers at least ``threshold`` of the labelled
        tissue in it (label images leave lumen and gaps unlabelled), and its multi-class label
        is its majority tissue class.
    relative_to_tissue : bool, default True
        Label images only: False applies the plain area rule (``threshold`` of the patch area).
    """
    p = Path(path)
    if not p.is_file():
        raise SlideNotFoundError(f"ground-truth file {p} does not exist")
    width, height = slide_size
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if p.suffix.lower() in (".geojson", ".json"):
        region, scale = _geojson_region(p, width, height, positive)
        pos = patch_fractions(region, xy, patch_size_level0, scale)
        fr = np.stack([1.0 - pos, pos], axis=1)
        return Truth(
            fractions=fr,
            labels=(pos >= threshold).astype(np.int64),
            share=pos,
            threshold=threshold,
        )
    from PIL import Image

    try:
        with Image.open(p) as im:
            arr = np.asarray(im if im.mode in ("P", "L", "I", "I;16") else im.convert("L"))
    except OSError as err:
        raise InvalidInputError(f"cannot read mask image {p}: {err}") from err
    if arr.ndim != 2:
        raise InvalidInputError(f"mask {p} must be single-channel, got shape {arr.shape}")
    scale = (width / arr.shape[1], height / arr.shape[0])
    if not labels:
        pos = patch_fractions(arr > 127, xy, patch_size_level0, scale)
        fr = np.stack([1.0 - pos, pos], axis=1)
        return Truth(
            fractions=fr,
            labels=(pos >= threshold).astype(np.int64),
            share=pos,
            threshold=threshold,
        )
    n_cls = int(arr.max())
    if positive_label < 1 or positive_label > n_cls:
        raise InvalidInputError(
            f"positive label {positive_label} not in label image {p} (1..{n_cls})"
        )
    fr = np.stack(
        [patch_fractions(arr == c, xy, patch_size_level0, scale) for c in range(n_cls + 1)], 1
    )
    tissue = fr[:, 1:]
    cls = np.where(tissue.max(axis=1) > 0, tissue.argmax(axis=1) + 1, 0).astype(np.int64)
    names = tuple((label_names or {}).get(c, f"class{c}") for c in range(n_cls + 1))
    # A label image marks tissue exactly (lumen and white gaps are label 0), so the rule is taken
    # relative to the labelled tissue in the patch: positive when the positive class covers at
    # least `threshold` of it. A lesion mask drawn by a pathologist includes such gaps, hence the
    # plain area rule above.
    labelled = tissue.sum(axis=1) if relative_to_tissue else np.ones(fr.shape[0])
    pos_share = np.where(labelled > 0, fr[:, positive_label] / np.maximum(labelled, 1e-12), 0.0)
    return Truth(
        fractions=fr,
        labels=(pos_share >= threshold).astype(np.int64),
        classes=cls,
        class_names=names,
        share=pos_share,
        threshold=threshold,
    )
