"""Writing a clustering as QuPath GeoJSON: tiles, detections, region annotations, suggested seeds.

By the rules of QuPath's reader (qupath/qupath, qupath-core, commit e7662d89, QuPath 0.6 line):

- ``qupath/lib/io/QuPathTypeAdapters.java`` ``PathObjectTypeAdapter``: ``properties.objectType``
  is one of the lower-case names ``tile``, ``cell``, ``detection``, ``annotation``, ``tmaCore``,
  ``root`` (``MAP_TYPES``); an unknown value (e.g. ``"Tile"``) silently becomes an annotation. The
  feature ``id`` is parsed with ``UUID.fromString`` and dropped when it is not a UUID.
  ``measurements`` is a JSON object of name -> number (``MeasurementListTypeAdapter``; NaN and
  infinities as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``).
- ``qupath/lib/io/ROITypeAdapters.java``: geometries in image (level-0 pixel) coordinates, written
  with 2 decimal places.
- Classifications: :mod:`histosic.outputs.qupath_classes`.

:func:`to_geojson_bytes` is the one encoder; :func:`to_geojson` parses its bytes.
"""

from __future__ import annotations

import gc
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from histosic.atomic import write_atomic
from histosic.config import OUTPUT_KINDS
from histosic.errors import InvalidInputError
from histosic.outputs.qupath_classes import SUGGESTED_SEED_CLASS, classification
from histosic.store import Embeddings

if TYPE_CHECKING:
    from histosic.cluster import SlideClustering

__all__ = [
    "OutputKind",
    "region_geometries",
    "tile_cells",
    "tile_polygons",
    "to_geojson",
    "to_geojson_bytes",
    "uuid4_strings",
    "write_geojson",
]

OutputKind = Literal["tiles", "detections", "regions", "both"]
_DECIMALS = 2  # ROITypeAdapters.ROITypeAdapter.numDecimalPlaces


def _r(v: float) -> float:
    return round(float(v), _DECIMALS)


def tile_cells(emb: Embeddings) -> tuple[np.ndarray[Any, np.dtype[np.float64]], float]:
    """Top-left corner of each patch's central stride x stride cell, (n_patches, 2), and its side.

    With 50% overlap the patches overlap, but their central cells tile the plane, so the written
    tiles cover the tissue without overlapping (DESIGN.md section 4). The server's compact answer
    (``ClusterResponse.cells``) sends exactly these cells.
    """
    size = float(max(int(emb.meta.stride_level0), 1))
    return emb.centers() - size / 2.0, size


def tile_polygons(emb: Embeddings) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Bounds of each patch's central cell (:func:`tile_cells`), (n_patches, 4) x0, y0, x1, y1."""
    origin, size = tile_cells(emb)
    return np.concatenate([origin, origin + size], axis=1)


def _measurement(v: float) -> float | str:
    # MeasurementListTypeAdapter writes non-finite values as strings.
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return round(v, 4)


def _feature(
    geometry: dict[str, Any],
    object_type: str,
    cls: dict[str, Any] | None,
    measurements: Mapping[str, float] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    props: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        props["name"] = name
    if cls is not None:
        props["classification"] = cls
    if measurements:
        props["measurements"] = {k: _measurement(float(v)) for k, v in measurements.items()}
    return {
        "type": "Feature",
        "id": uuid4_strings(1)[0],
        "geometry": geometry,
        "properties": props,
    }


def region_geometries(
    emb: Embeddings,
    labels: np.ndarray[Any, np.dtype[np.integer[Any]]],
    n_classes: int,
    *,
    min_area_cells: float = 4.0,
    min_hole_cells: float = 4.0,
    simplify_cells: float = 0.5,
) -> list[Any]:
    """Merged outline of each class's tiles (shapely geometries, None for an empty class).

    Parameters
    ----------
    emb : Embeddings
    labels : ndarray of shape (n_patches,)
        Class id of each patch.
    n_classes : int
    min_area_cells, min_hole_cells : float, default 4
        Parts and holes smaller than this many stride x stride cells are dropped (specks).
    simplify_cells : float, default 0.5
        Simplification tolerance in cells (turns the tile staircase into smoother outlines).
    """
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    stride = float(max(int(emb.meta.stride_level0), 1))
    cell_area = stride * stride
    bounds = tile_polygons(emb)
    out: list[Any] = []
    for k in range(n_classes):
        idx = np.flatnonzero(labels == k)
        if idx.size == 0:
            out.append(None)
            continue
        boxes = shapely.box(bounds[idx, 0], bounds[idx, 1], bounds[idx, 2], bounds[idx, 3])
        try:
            # The cells share edges exactly and never overlap: a coverage union is much faster.
            merged = shapely.coverage_union_all(boxes)
            if not merged.is_valid:  # cells that overlap (coordinates off the stride grid)
                merged = shapely.union_all(boxes)
        except shapely.errors.GEOSException:  # pragma: no cover - fall back on odd grids
            merged = shapely.union_all(boxes)
        parts = [merged] if isinstance(merged, Polygon) else list(getattr(merged, "geoms", []))
        kept: list[Polygon] = []
        for part in parts:
            if not isinstance(part, Polygon) or part.area < min_area_cells * cell_area:
                continue
            holes = [r for r in part.interiors if Polygon(r).area >= min_hole_cells * cell_area]
            kept.append(Polygon(part.exterior, holes))
        if not kept:
            out.append(None)
            continue
        # Simplify all parts together: a topology-preserving simplification of the whole
        # MultiPolygon keeps neighbouring parts from crossing, which part-by-part would not; then
        # snap to QuPath's 2 decimals (ROITypeAdapters) without breaking validity.
        geom: Any = kept[0] if len(kept) == 1 else MultiPolygon(kept)
        geom = geom.simplify(simplify_cells * stride, preserve_topology=True)
        geom = shapely.set_precision(geom, 10.0**-_DECIMALS)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        polys = [
            g
            for g in (list(geom.geoms) if hasattr(geom, "geoms") else [geom])
            if isinstance(g, Polygon) and not g.is_empty
        ]
        if not polys:
            out.append(None)
            continue
        out.append(polys[0] if len(polys) == 1 else MultiPolygon(polys))
    return out


def _geometry_json(geom: Any) -> dict[str, Any]:
    import shapely

    g: dict[str, Any] = _round_coords(json.loads(shapely.to_geojson(geom)))
    return g


def _round_coords(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _round_coords(v) for k, v in obj.items()}
    if isinstance(obj, list):
        if obj and all(isinstance(v, (int, float)) for v in obj):
            return [_r(v) for v in obj]
        return [_round_coords(v) for v in obj]
    return obj


def uuid4_strings(n: int) -> list[str]:
    """n random (version 4) UUIDs as strings; one urandom call instead of n uuid4() calls."""
    raw = bytearray(os.urandom(16 * n))
    out = []
    for i in range(n):
        b = raw[16 * i : 16 * i + 16]
        b[6] = (b[6] & 0x0F) | 0x40  # version 4
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = b.hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def _number_texts(values: np.ndarray[Any, Any], decimals: int) -> list[str]:
    """Measurement values as JSON text: rounded, non-finite ones as QuPath's strings."""
    out = []
    for v in np.round(values.astype(np.float64), decimals).tolist():
        out.append(repr(v) if math.isfinite(v) else f'"{_measurement(v)}"')
    return out


def _tile_texts(
    emb: Embeddings,
    clustering: SlideClustering,
    object_type: str,
    classes: Sequence[dict[str, Any]],
) -> list[str]:
    """One tile/detection feature per patch (tens of thousands per slide) as compact JSON text.

    The one tile encoder: a ``%`` template per feature is several times faster than building and
    encoding a dict per feature. Numbers are written with ``repr``, exactly as ``json.dumps``
    writes them.
    """
    b = np.round(tile_polygons(emb), _DECIMALS).tolist()
    labels = clustering.result.labels.tolist()
    conf = _number_texts(clustering.result.confidence, 4)
    seeded = (clustering.result.seeds >= 0).astype(np.float64).tolist()
    ids = uuid4_strings(emb.n_patches)
    class_json = [json.dumps(c, separators=(",", ":")) for c in classes]
    template = (
        '{"type":"Feature","id":"%s","geometry":{"type":"Polygon","coordinates":'
        '[[[%r,%r],[%r,%r],[%r,%r],[%r,%r],[%r,%r]]]},"properties":{"objectType":"'
        + object_type
        + '","classification":%s,"measurements":{"histosic: confidence":%s,"histosic: seed":%r'
    )
    if emb.tissue_fraction is not None:
        tissue = _number_texts(emb.tissue_fraction, 4)
        template += ',"histosic: tissue fraction":%s}}}'
        return [
            template % (
                ids[i],
                x0, y0, x1, y0, x1, y1, x0, y1, x0, y0,
                class_json[labels[i]], conf[i], seeded[i], tissue[i],
            )
            for i, (x0, y0, x1, y1) in enumerate(b)
        ]  # fmt: skip
    template += "}}}"
    return [
        template % (
            ids[i],
            x0, y0, x1, y0, x1, y1, x0, y1, x0, y0,
            class_json[labels[i]], conf[i], seeded[i],
        )
        for i, (x0, y0, x1, y1) in enumerate(b)
    ]  # fmt: skip


def _check_clustering(emb: Embeddings, clustering: SlideClustering, output: str) -> None:
    if output not in OUTPUT_KINDS:
        raise InvalidInputError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")
    labels = clustering.result.labels
    if labels.shape != (emb.n_patches,):
        raise InvalidInputError(
            f"the clustering has {labels.shape[0]} labels but the embeddings {emb.n_patches} "
            "patches: use the embeddings that were clustered"
        )
    n_classes = len(clustering.class_names)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise InvalidInputError(
            f"the clustering's labels run from {int(labels.min())} to {int(labels.max())} but it "
            f"names {n_classes} classes (ids 0 to {n_classes - 1}): every patch needs a class"
        )


def _other_features(
    emb: Embeddings,
    clustering: SlideClustering,
    output: str,
    suggest_points: bool,
    classes: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Region annotations (for "regions"/"both") and suggested seed points."""
    labels = clustering.result.labels
    confidence = clustering.result.confidence
    features: list[dict[str, Any]] = []
    if output in ("regions", "both"):
        geoms = region_geometries(emb, labels, len(clustering.class_names))
        for k, geom in enumerate(geoms):
            if geom is None:
                continue
            in_class = labels == k
            features.append(
                _feature(
                    _geometry_json(geom),
                    "annotation",
                    classes[k],
                    {
                        "histosic: patches": float(in_class.sum()),
                        "histosic: mean confidence": float(confidence[in_class].mean()),
                    },
                    name=f"histosic {clustering.class_names[k]}",
                )
            )
    if suggest_points and clustering.suggested.size:
        centres = emb.centers()
        cls = classification(SUGGESTED_SEED_CLASS)
        for rank, i in enumerate(clustering.suggested.tolist()):
            x, y = centres[i]
            features.append(
                _feature(
                    {"type": "Point", "coordinates": [_r(x), _r(y)]},
                    "annotation",
                    cls,
                    {"histosic: confidence": float(confidence[i]), "histosic: rank": rank + 1},
                )
            )
    return features


def to_geojson(
    emb: Embeddings,
    clustering: SlideClustering,
    output: OutputKind | str = "tiles",
    suggest_points: bool = True,
) -> dict[str, Any]:
    """A clustering as a QuPath GeoJSON FeatureCollection.

    Parameters
    ----------
    emb : Embeddings
        The embeddings that were clustered (for patch positions).
    clustering : SlideClustering
        From :func:`histosic.cluster.cluster_slide`.
    output : {"tiles", "detections", "regions", "both"}, default "tiles"
        ``tiles``/``detections``: one object per patch (its central stride x stride cell) with
        objectType ``tile``/``detection``; ``regions``: one ``annotation`` per class with the
        merged outline; ``both``: tiles and regions.
    suggest_points : bool, default True
        Add the suggested patches as ``Point`` annotations of class ``histosic: suggested seed``.

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...]}``, ready for ``json.dump``: the parsed
        :func:`to_geojson_bytes` (non-finite measurements as QuPath's strings ``"NaN"`` etc.).
    """
    data = to_geojson_bytes(emb, clustering, output, suggest_points)
    # The parsed bytes of the one encoder: the same objects, and no second encoder to keep in step.
    # Hundreds of thousands of small containers: the cyclic GC would rescan them many times over
    # (half of the time), and none of them can form a cycle.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        collection: dict[str, Any] = json.loads(data)
    finally:
        if gc_was_enabled:
            gc.enable()
    return collection


def to_geojson_bytes(
    emb: Embeddings,
    clustering: SlideClustering,
    output: OutputKind | str = "tiles",
    suggest_points: bool = True,
) -> bytes:
    """The clustering as QuPath GeoJSON, compact UTF-8 JSON (arguments as :func:`to_geojson`).

    Every feature gets a new random (version 4) UUID as its ``id``.
    """
    _check_clustering(emb, clustering, output)
    classes = [classification(n) for n in clustering.class_names]
    parts: list[str] = []
    if output in ("tiles", "detections", "both"):
        object_type = "detection" if output == "detections" else "tile"
        parts.extend(_tile_texts(emb, clustering, object_type, classes))
    for f in _other_features(emb, clustering, output, suggest_points, classes):
        parts.append(json.dumps(f, separators=(",", ":"), allow_nan=False))
    text = '{"type":"FeatureCollection","features":[' + ",".join(parts) + "]}"
    return text.encode("utf-8")


def write_geojson(
    path: str | os.PathLike[str], collection: Mapping[str, Any], *, overwrite: bool = False
) -> Path:
    """Write a FeatureCollection as compact JSON, atomically (:func:`histosic.atomic.write_atomic`).

    Raises
    ------
    InvalidInputError
        ``collection`` holds NaN or infinity as a number (QuPath's reader wants the strings
        ``"NaN"``, ``"Infinity"``), or a value JSON cannot hold.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    try:
        text = json.dumps(collection, separators=(",", ":"), allow_nan=False)
    except ValueError as err:  # "Out of range float values are not JSON compliant"
        raise InvalidInputError(
            f"cannot write {path} as GeoJSON: {err}; write non-finite measurements as the strings "
            '"NaN", "Infinity", "-Infinity" as QuPath does'
        ) from err
    except TypeError as err:  # a value that is not JSON (a numpy array, a set)
        raise InvalidInputError(f"cannot write {path} as GeoJSON: {err}") from err
    return write_atomic(path, text.encode("utf-8"), overwrite=overwrite)
