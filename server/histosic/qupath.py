"""QuPath GeoJSON: read seed points, write tiles, detections and region annotations.

The rules below follow QuPath's own reader and writer (qupath/qupath, qupath-core, read at commit
e7662d89, QuPath 0.6 line; the same rules hold in 0.5):

- ``qupath/lib/io/GsonTools.java`` ``parseObjectsFromGeoJSON``/``addPathObjects``: a file may hold a
  ``FeatureCollection``, a bare JSON array of features, a single ``Feature``, or a bare geometry
  (which becomes an unclassified annotation).
- ``qupath/lib/io/QuPathTypeAdapters.java`` ``PathObjectTypeAdapter``: ``properties.objectType`` is
  one of the lower-case names ``tile``, ``cell``, ``detection``, ``annotation``, ``tmaCore``,
  ``root`` (``MAP_TYPES``); an unknown value (e.g. ``"Tile"``) silently becomes an annotation. The
  feature ``id`` is parsed with ``UUID.fromString`` and dropped when it is not a UUID.
  ``measurements`` is a JSON object of name -> number (``MeasurementListTypeAdapter``; NaN and
  infinities as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``). Child objects may sit in
  ``properties.childObjects`` (or ``children``).
- ``qupath/lib/io/GsonTools.java`` ``PathClassTypeAdapter``: a classification object is read only if
  it has ``name`` (or ``names`` for a derived class) *and* ``color``, otherwise the whole import
  fails with "Unable to parse PathClass"; ``color`` is an ``int[]`` ``[r, g, b]`` (a packed integer
  does not parse). QuPath writes ``names`` for derived classes such as ``histosic: suggested seed``
  (``PathClass.DELIMITER`` is ``":"``).
- ``qupath/lib/io/ROITypeAdapters.java``: geometries are GeoJSON ``Point``, ``MultiPoint``,
  ``LineString``, ``MultiLineString``, ``Polygon``, ``MultiPolygon``, ``GeometryCollection`` in
  image (level-0 pixel) coordinates, written with 2 decimal places; a non-default ``plane``
  (``{c, z, t}``) is written next to ``type``.
- ``qupath/lib/objects/classes/PathClass.java``: colours of the built-in classes
  (``StandardPathClasses``, ``COLOR_POSITIVE`` etc., ``getDefaultColor``) and, for other names, a
  colour drawn from ``java.util.Random`` seeded with the name's ``String.hashCode`` — reproduced
  here so a new class gets the colour QuPath itself would give it.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from histosic.errors import InvalidInputError, OutputExistsError
from histosic.seeds import SeedPoint
from histosic.store import Embeddings

if TYPE_CHECKING:
    from histosic.cluster import SlideClustering

__all__ = [
    "OUTPUT_KINDS",
    "QUPATH_CLASS_COLORS",
    "SUGGESTED_SEED_CLASS",
    "OutputKind",
    "SeedFile",
    "class_color",
    "classification",
    "iter_features",
    "parse_seeds",
    "read_seeds",
    "region_geometries",
    "tile_polygons",
    "to_geojson",
    "to_geojson_bytes",
    "write_atomic",
    "write_geojson",
]

log = logging.getLogger(__name__)

OutputKind = Literal["tiles", "detections", "regions", "both"]
OUTPUT_KINDS: tuple[str, ...] = ("tiles", "detections", "regions", "both")

#: Class of suggested seed points; QuPath splits it at ":" into the derived class
#: ``["histosic", "suggested seed"]`` and writes it as ``names`` (GsonTools.PathClassTypeAdapter).
SUGGESTED_SEED_CLASS = "histosic: suggested seed"

# PathClass.java: StandardPathClasses (explicit colours) and getDefaultColor for the top-level
# "Positive", "Negative", "1+", "2+", "3+" (base colour scaled by 1.25, ColorTools.makeScaledRGB).
QUPATH_CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
    "Image": (128, 128, 128),
    "Positive": (250, 62, 62),
    "Negative": (112, 112, 225),
    "1+": (255, 255, 0),
    "2+": (255, 187, 62),
    "3+": (250, 62, 62),
}
# PathClass.java: COLOR_* constants, used unscaled for "Tumor: Positive" etc. and scaled for
# derived classes of other parents.
_INTENSITY_BASE = {
    "1+": ((255, 215, 0), 0.9),
    "2+": ((225, 150, 50), 0.6),
    "3+": ((200, 50, 50), 0.4),
    "Positive": ((200, 50, 50), 0.75),
    "Negative": ((90, 90, 180), 1.25),
}
_DELIMITER = ":"  # PathClass.DELIMITER
_DECIMALS = 2  # ROITypeAdapters.ROITypeAdapter.numDecimalPlaces


# --------------------------------------------------------------------------------------------------
# Colours


def _java_string_hash(s: str) -> int:
    """Java's ``String.hashCode`` (UTF-16 code units, 32-bit signed overflow)."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


class _JavaRandom:
    """The 48-bit linear congruential generator of ``java.util.Random`` (enough for nextInt)."""

    _MULT = 0x5DEECE66D
    _MASK = (1 << 48) - 1

    def __init__(self, seed: int) -> None:
        self._seed = (seed ^ self._MULT) & self._MASK

    def _next(self, bits: int) -> int:
        self._seed = (self._seed * self._MULT + 0xB) & self._MASK
        r = self._seed >> (48 - bits)
        return r - (1 << 32) if r >= 1 << 31 else r

    def next_int(self, bound: int) -> int:
        if bound <= 0:
            raise ValueError("bound must be positive")
        if bound & (bound - 1) == 0:  # a power of two
            return (bound * self._next(31)) >> 31
        while True:
            bits = self._next(31)
            val = bits % bound
            if bits - val + (bound - 1) < (1 << 31):
                return val


def _random_class_color(cache_name: str) -> tuple[int, int, int]:
    # PathClass.getDefaultColor: Random(cacheName.hashCode()), rejecting very dark colours.
    rnd = _JavaRandom(_java_string_hash(cache_name))
    r = g = b = 0
    while r < 40 and g < 40 and b < 40:
        r, g, b = rnd.next_int(256), rnd.next_int(256), rnd.next_int(256)
    return (r, g, b)


def _scaled(rgb: tuple[int, int, int], scale: float) -> tuple[int, int, int]:
    # ColorTools.makeScaledRGB: (int) Math.min(255, c * scale)
    return (
        int(min(255.0, rgb[0] * scale)),
        int(min(255.0, rgb[1] * scale)),
        int(min(255.0, rgb[2] * scale)),
    )


def _split_names(name: str | Sequence[str]) -> list[str]:
    parts = name.split(_DELIMITER) if isinstance(name, str) else list(name)
    return [p.strip() for p in parts if p.strip()]


def class_color(name: str | Sequence[str]) -> tuple[int, int, int]:
    """The colour QuPath gives a class when it first meets it, as ``(r, g, b)``.

    Parameters
    ----------
    name : str or sequence of str
        A class name (``"Tumor"``), a derived class as QuPath's string (``"Tumor: Positive"``) or
        as its list of names.

    Built-in classes get QuPath's default colours; other names get the colour QuPath derives from
    the name's hash, so the same name always has the same colour, here and in QuPath.
    """
    names = _split_names(name)
    if not names:
        return (64, 64, 64)  # PathClass.DEFAULT_COLOR
    if len(names) == 1:
        known = QUPATH_CLASS_COLORS.get(names[0])
        return known if known is not None else _random_class_color(names[0])
    last = names[-1]
    if last in _INTENSITY_BASE:
        base, scale = _INTENSITY_BASE[last]
        if len(names) == 2 and names[0] == "Tumor":
            return base
        return _scaled(class_color(names[:-1]), scale)
    return _random_class_color("\n".join(names))  # PathClass.CACHE_DELIMITER


def classification(name: str | Sequence[str]) -> dict[str, Any]:
    """A QuPath classification object: ``{"name": ..., "color": [r, g, b]}``.

    Derived classes (``"histosic: suggested seed"``) are written as ``{"names": [...], ...}``
    exactly as ``GsonTools.PathClassTypeAdapter.write`` does. ``color`` is required by QuPath's
    reader.
    """
    names = _split_names(name)
    if not names:
        raise InvalidInputError(f"class name {name!r} is empty")
    color = list(class_color(names))
    if len(names) == 1:
        return {"name": names[0], "color": color}
    return {"names": names, "color": color}


# --------------------------------------------------------------------------------------------------
# Reading seeds


@dataclass
class SeedFile:
    """Seed points read from a QuPath GeoJSON export.

    Attributes
    ----------
    points : list of SeedPoint
        Every point (a ``MultiPoint`` gives one per coordinate); ``class_name`` is ``""`` for
        unclassified points.
    n_objects : int
        Objects (features and bare geometries) in the file.
    n_non_point : int
        Objects that are not points (areas, lines, detections...), ignored.
    source : str
        The file name, for messages.
    """

    points: list[SeedPoint]
    n_objects: int = 0
    n_non_point: int = 0
    source: str = "<data>"

    @property
    def n_unclassified(self) -> int:
        return sum(1 for p in self.points if not p.class_name)

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.points:
            counts[p.class_name] = counts.get(p.class_name, 0) + 1
        return counts

    def summary(self) -> str:
        per_class = ", ".join(
            f"{n} {name or '(no class)'}" for name, n in sorted(self.class_counts().items())
        )
        text = f"{self.source}: {len(self.points)} seed points ({per_class})"
        if self.n_non_point:
            text += f"; {self.n_non_point} non-point objects ignored"
        return text


_GEOMETRY_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}


def iter_features(data: Any) -> Iterator[dict[str, Any]]:
    """Yield the objects of GeoJSON data as QuPath reads it, children included.

    Accepts a ``FeatureCollection``, a JSON array, a ``Feature`` or a bare geometry (returned
    wrapped as a feature with no properties), like ``GsonTools.addPathObjects``.
    """
    if isinstance(data, list):
        for item in data:
            yield from iter_features(item)
        return
    if not isinstance(data, dict):
        return
    kind = data.get("type")
    if kind == "FeatureCollection":
        features = data.get("features")
        if isinstance(features, list):
            yield from iter_features(features)
    elif kind == "Feature":
        yield data
        props = data.get("properties")
        if isinstance(props, dict):
            children = props.get("childObjects", props.get("children"))
            if isinstance(children, list):
                yield from iter_features(children)
    elif kind in _GEOMETRY_TYPES:
        yield {"type": "Feature", "geometry": data, "properties": {}}


def _class_name_of(props: Mapping[str, Any]) -> str:
    """The class of a feature as QuPath's string (names joined with ': '), or ''."""
    cls = props.get("classification")
    if isinstance(cls, str):  # PathClassTypeAdapter.read accepts a bare string
        return ": ".join(_split_names(cls))
    if isinstance(cls, dict):
        names = cls.get("names")
        if isinstance(names, list) and names:
            return ": ".join(_split_names([str(n) for n in names]))
        name = cls.get("name")
        if isinstance(name, str):
            return ": ".join(_split_names(name))
    return ""


def _coordinate(value: Any, where: str) -> tuple[float, float]:
    if (
        isinstance(value, (list, tuple))
        and len(value) >= 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value[:2])
    ):
        return float(value[0]), float(value[1])
    raise InvalidInputError(f"{where}: a point coordinate must be [x, y], got {value!r}")


def parse_seeds(data: Any, *, source: str = "<data>") -> SeedFile:
    """Seed points from parsed GeoJSON data (see :func:`read_seeds`)."""
    is_geojson = isinstance(data, list) or (
        isinstance(data, dict)
        and data.get("type") in ({"FeatureCollection", "Feature"} | _GEOMETRY_TYPES)
    )
    if not is_geojson:
        found = type(data).__name__
        if isinstance(data, dict):
            found = f"an object with type {data.get('type')!r} and keys {sorted(data)[:6]}"
        raise InvalidInputError(
            f"{source} is not GeoJSON as QuPath exports it (expected a FeatureCollection, a "
            f"list of features or a Feature; found {found}). In QuPath use File > Export "
            "objects as GeoJSON (or exportObjectsToGeoJson) on the point annotations"
        )
    points: list[SeedPoint] = []
    n_objects = 0
    n_non_point = 0
    for i, feature in enumerate(iter_features(data)):
        n_objects += 1
        geometry = feature.get("geometry")
        props = feature.get("properties")
        props = props if isinstance(props, dict) else {}
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        if kind not in ("Point", "MultiPoint") or not isinstance(geometry, dict):
            n_non_point += 1
            continue
        where = f"{source}: object {i} ({kind})"
        name = _class_name_of(props)
        coords = geometry.get("coordinates")
        if kind == "Point":
            x, y = _coordinate(coords, where)
            points.append(SeedPoint(x, y, name))
        else:
            if not isinstance(coords, list):
                raise InvalidInputError(f"{where}: MultiPoint coordinates must be a list")
            for c in coords:
                x, y = _coordinate(c, where)
                points.append(SeedPoint(x, y, name))
    if not points:
        raise InvalidInputError(
            f"{source} holds no point annotations ({n_objects} objects, {n_non_point} of them "
            "not points): place seeds with QuPath's Points tool and export them as GeoJSON"
        )
    if all(not p.class_name for p in points):
        raise InvalidInputError(
            f"none of the {len(points)} points in {source} has a classification: set a class "
            "on each point in QuPath (e.g. 'Tumor' and 'Stroma') before exporting"
        )
    result = SeedFile(points=points, n_objects=n_objects, n_non_point=n_non_point, source=source)
    log.debug("%s", result.summary())
    return result


def read_seeds(path: str | os.PathLike[str]) -> SeedFile:
    """Read seed points from a GeoJSON file as QuPath 0.5/0.6 exports point annotations.

    Parameters
    ----------
    path : path-like
        A ``.geojson``/``.json`` file: FeatureCollection, array of features or single Feature, with
        ``Point``/``MultiPoint`` geometries in level-0 pixels and ``classification.name`` (or
        ``names``).

    Returns
    -------
    SeedFile

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    InvalidInputError
        The file is not JSON, not GeoJSON, holds no points, or no point has a class.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # QuPath on Windows may write a BOM
    except FileNotFoundError as err:
        raise InvalidInputError(f"seeds file {p} does not exist") from err
    except (UnicodeDecodeError, OSError) as err:  # binary, a directory, unreadable
        raise InvalidInputError(f"seeds file {p} is not a text GeoJSON file ({err})") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInputError(
            f"seeds file {p} is not GeoJSON: invalid JSON at line {err.lineno} column "
            f"{err.colno} ({err.msg}); export the points from QuPath as GeoJSON"
        ) from err
    return parse_seeds(data, source=str(p))


# --------------------------------------------------------------------------------------------------
# Writing results


def _r(v: float) -> float:
    return round(float(v), _DECIMALS)


def tile_polygons(emb: Embeddings) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Bounds of each patch's central stride x stride cell, (n_patches, 4) x0, y0, x1, y1.

    With 50% overlap the patches overlap, but their central cells tile the plane, so the written
    tiles cover the tissue without overlapping (DESIGN.md section 4).
    """
    half_cell = max(int(emb.meta.stride_level0), 1) / 2.0
    c = emb.centers()
    return np.concatenate([c - half_cell, c + half_cell], axis=1)


def _box_coords(b: Sequence[float]) -> list[list[list[float]]]:
    x0, y0, x1, y1 = _r(b[0]), _r(b[1]), _r(b[2]), _r(b[3])
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


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
        "id": _uuid4_strings(1)[0],
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


def _uuid4_strings(n: int) -> list[str]:
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


def _tile_columns(emb: Embeddings, clustering: SlideClustering) -> dict[str, list[Any]]:
    """Per-patch values of the tile features as Python lists (one numpy pass each)."""
    conf = np.round(clustering.result.confidence.astype(np.float64), 4).tolist()
    cols: dict[str, list[Any]] = {
        "bounds": np.round(tile_polygons(emb), _DECIMALS).tolist(),
        "labels": clustering.result.labels.tolist(),
        "confidence": [v if math.isfinite(v) else _measurement(v) for v in conf],
        "seed": (clustering.result.seeds >= 0).astype(np.float64).tolist(),
        "ids": _uuid4_strings(emb.n_patches),
    }
    if emb.tissue_fraction is not None:
        cols["tissue"] = np.round(emb.tissue_fraction.astype(np.float64), 4).tolist()
    return cols


def _tile_features(
    emb: Embeddings,
    clustering: SlideClustering,
    object_type: str,
    classes: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """One tile/detection feature per patch (tens of thousands per slide)."""
    cols = _tile_columns(emb, clustering)
    b, labels, conf, seeded, ids = (
        cols["bounds"],
        cols["labels"],
        cols["confidence"],
        cols["seed"],
        cols["ids"],
    )
    tissue = cols.get("tissue")
    features: list[dict[str, Any]] = []
    # Hundreds of thousands of small containers: the cyclic GC would rescan them many times over
    # (more than half of the time), and none of them can form a cycle.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(emb.n_patches):
            x0, y0, x1, y1 = b[i]
            m: dict[str, Any] = {"histosic: confidence": conf[i], "histosic: seed": seeded[i]}
            if tissue is not None:
                m["histosic: tissue fraction"] = tissue[i]
            features.append(
                {
                    "type": "Feature",
                    "id": ids[i],
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
                    },
                    "properties": {
                        "objectType": object_type,
                        "classification": classes[labels[i]],
                        "measurements": m,
                    },
                }
            )
    finally:
        if gc_was_enabled:
            gc.enable()
    return features


def _tile_texts(
    emb: Embeddings,
    clustering: SlideClustering,
    object_type: str,
    classes: Sequence[dict[str, Any]],
) -> list[str]:
    """The same features as :func:`_tile_features`, already encoded as compact JSON text."""
    cols = _tile_columns(emb, clustering)
    b, labels, conf, seeded, ids = (
        cols["bounds"],
        cols["labels"],
        cols["confidence"],
        cols["seed"],
        cols["ids"],
    )
    tissue = cols.get("tissue")
    class_json = [json.dumps(c, separators=(",", ":")) for c in classes]
    head = '{"type":"Feature","id":"%s","geometry":{"type":"Polygon","coordinates":'
    body = (
        '[[[%r,%r],[%r,%r],[%r,%r],[%r,%r],[%r,%r]]]},"properties":{"objectType":"'
        + object_type
        + '","classification":%s,"measurements":{"histosic: confidence":%s,"histosic: seed":%r'
    )
    template = head + body
    out: list[str] = []
    for i in range(emb.n_patches):
        x0, y0, x1, y1 = b[i]
        c = conf[i]
        text = template % (
            ids[i],
            x0, y0, x1, y0, x1, y1, x0, y1, x0, y0,
            class_json[labels[i]],
            json.dumps(c) if isinstance(c, str) else repr(c),
            seeded[i],
        )  # fmt: skip
        if tissue is not None:
            text += ',"histosic: tissue fraction":' + repr(tissue[i]) + "}}}"
        else:
            text += "}}}"
        out.append(text)
    return out


def _check_clustering(emb: Embeddings, clustering: SlideClustering, output: str) -> None:
    if output not in OUTPUT_KINDS:
        raise InvalidInputError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")
    labels = clustering.result.labels
    if labels.shape != (emb.n_patches,):
        raise InvalidInputError(
            f"the clustering has {labels.shape[0]} labels but the embeddings {emb.n_patches} "
            "patches: use the embeddings that were clustered"
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
        ``{"type": "FeatureCollection", "features": [...]}``, ready for ``json.dump``.
    """
    _check_clustering(emb, clustering, output)
    classes = [classification(n) for n in clustering.class_names]
    features: list[dict[str, Any]] = []
    if output in ("tiles", "detections", "both"):
        object_type = "detection" if output == "detections" else "tile"
        features.extend(_tile_features(emb, clustering, object_type, classes))
    features.extend(_other_features(emb, clustering, output, suggest_points, classes))
    return {"type": "FeatureCollection", "features": features}


def to_geojson_bytes(
    emb: Embeddings,
    clustering: SlideClustering,
    output: OutputKind | str = "tiles",
    suggest_points: bool = True,
) -> bytes:
    """:func:`to_geojson` encoded as compact UTF-8 JSON, a few times faster for many tiles.

    The text parses to the same objects as ``to_geojson`` gives (ids are new random UUIDs).
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


def write_atomic(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> Path:
    """Write bytes to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader never sees half a file, and an existing file is kept when writing fails.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(
            f"output {p} exists; pass --overwrite (overwrite=True) to replace it"
        )
    if p.is_dir():
        raise OutputExistsError(f"output {p} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInputError(f"output folder {parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_geojson(
    path: str | os.PathLike[str], collection: Mapping[str, Any], *, overwrite: bool = False
) -> Path:
    """Write a FeatureCollection as compact JSON, atomically (see :func:`write_atomic`)."""
    data = json.dumps(collection, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return write_atomic(path, data, overwrite=overwrite)
