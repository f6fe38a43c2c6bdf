"""Reading seed points from QuPath GeoJSON, by the rules of QuPath's own reader.

After qupath/qupath, qupath-core (commit e7662d89, QuPath 0.6 line; the same in 0.5):

- ``qupath/lib/io/GsonTools.java`` ``parseObjectsFromGeoJSON``/``addPathObjects``: a file may hold a
  ``FeatureCollection``, a bare JSON array of features, a single ``Feature``, or a bare geometry
  (which becomes an unclassified annotation). Child objects may sit in
  ``properties.childObjects`` (or ``children``).
- ``qupath/lib/io/GsonTools.java`` ``PathClassTypeAdapter``: ``classification`` is an object with
  ``name`` (or ``names`` for a derived class) or a bare string.
- ``qupath/lib/io/ROITypeAdapters.java``: points are GeoJSON ``Point``/``MultiPoint`` in image
  (level-0 pixel) coordinates.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histosic.errors import InvalidInputError
from histosic.outputs.qupath_classes import split_class_names
from histosic.seeds import SeedPoint

__all__ = ["SeedFile", "iter_features", "parse_seeds", "read_seeds"]

log = logging.getLogger(__name__)


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
        return ": ".join(split_class_names(cls))
    if isinstance(cls, dict):
        names = cls.get("names")
        if isinstance(names, list) and names:
            return ": ".join(split_class_names([str(n) for n in names]))
        name = cls.get("name")
        if isinstance(name, str):
            return ": ".join(split_class_names(name))
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
    except ValueError as err:  # a path with a NUL character ("embedded null byte")
        raise InvalidInputError(f"seeds file name {str(p)!r} is not a valid path ({err})") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInputError(
            f"seeds file {p} is not GeoJSON: invalid JSON at line {err.lineno} column "
            f"{err.colno} ({err.msg}); export the points from QuPath as GeoJSON"
        ) from err
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise InvalidInputError(
            f"seeds file {p} is not GeoJSON as QuPath writes it ({err}); export the points "
            "from QuPath as GeoJSON"
        ) from err
    return parse_seeds(data, source=str(p))
