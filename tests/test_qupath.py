"""QuPath GeoJSON in and out (histosic.outputs), checked against the rules of QuPath's own reader.

Each rule cites the QuPath source file it comes from (qupath/qupath, qupath-core/src/main/java/
qupath/lib/...). QuPath itself cannot run here; where Java is installed, the written file is also
parsed with the real Gson library the way QuPath binds it, and the class colours are computed with
the real ``java.util.Random`` (see ``test_output_parses_with_gson_like_qupath``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from shapely.geometry import shape
from test_qupath_data import (
    STRIDE,
    make_embeddings,
    qupath_point_feature,
    seeds_from_truth,
    write_seed_file,
)

from histosic.atomic import write_atomic
from histosic.cluster import SlideClustering, cluster_slide
from histosic.errors import InvalidInputError, OutputExistsError
from histosic.outputs.geojson import tile_polygons, to_geojson, to_geojson_bytes, write_geojson
from histosic.outputs.qupath_classes import (
    QUPATH_CLASS_COLORS,
    SUGGESTED_SEED_CLASS,
    class_color,
    classification,
)
from histosic.outputs.seedfile import iter_features, parse_seeds, read_seeds
from histosic.seeds import SeedPoint
from histosic.store import Embeddings

# QuPathTypeAdapters.PathObjectTypeAdapter.MAP_TYPES: the only objectType values QuPath knows.
QUPATH_OBJECT_TYPES = {"tile", "cell", "detection", "annotation", "tmaCore", "root"}
# ROITypeAdapters.parseGeometry: the geometry types QuPath reads.
QUPATH_GEOMETRY_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}


@pytest.fixture(scope="module")
def slide() -> tuple[Embeddings, np.ndarray]:
    return make_embeddings(nx=40, ny=30)


@pytest.fixture(scope="module")
def clustering(slide: tuple[Embeddings, np.ndarray]) -> SlideClustering:
    emb, truth = slide
    clicks = seeds_from_truth(emb, truth, 6)
    points = [SeedPoint(float(x), float(y), name) for name, xy in clicks.items() for x, y in xy]
    return cluster_slide(emb, points, suggest=5)


@pytest.fixture(scope="module")
def collections(
    slide: tuple[Embeddings, np.ndarray], clustering: SlideClustering
) -> dict[str, dict[str, Any]]:
    emb, _ = slide
    # Through a real file and back: what QuPath would read.
    out: dict[str, dict[str, Any]] = {}
    for kind in ("tiles", "detections", "regions", "both"):
        text = json.dumps(to_geojson(emb, clustering, kind), allow_nan=False)
        out[kind] = json.loads(text)
    return out


# --------------------------------------------------------------------------------------------------
# Reading seeds


def test_reads_feature_collection_as_qupath_exports_it(tmp_path: Path) -> None:
    features = [
        qupath_point_feature([[100.5, 200.25]], "Tumor"),
        qupath_point_feature([[10, 20], [30, 40], [50, 60]], "Stroma", color=[150, 200, 150]),
        {  # an area annotation: not a seed, counted
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
            "properties": {"objectType": "annotation", "classification": classification("Other")},
        },
        {  # a detection polygon
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
            "properties": {"objectType": "detection"},
        },
    ]
    f = read_seeds(write_seed_file(tmp_path / "seeds.geojson", features))
    assert f.points == [
        SeedPoint(100.5, 200.25, "Tumor"),
        SeedPoint(10, 20, "Stroma"),
        SeedPoint(30, 40, "Stroma"),
        SeedPoint(50, 60, "Stroma"),
    ]
    assert f.n_objects == 4 and f.n_non_point == 2
    assert "2 non-point objects ignored" in f.summary()


def test_reads_bare_list_single_feature_and_bom(tmp_path: Path) -> None:
    # GsonTools.addPathObjects: an array of features, or one Feature, is valid too.
    feats = [qupath_point_feature([[1, 2]], "Tumor"), qupath_point_feature([[3, 4]], "Stroma")]
    listed = read_seeds(write_seed_file(tmp_path / "list.json", feats, collection=False))
    assert [p.class_name for p in listed.points] == ["Tumor", "Stroma"]
    single = tmp_path / "one.geojson"
    single.write_text(json.dumps(feats[0]))
    assert read_seeds(single).points == [SeedPoint(1, 2, "Tumor")]
    bom = tmp_path / "bom.geojson"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(feats).encode())
    assert len(read_seeds(bom).points) == 2


def test_reads_derived_string_and_child_classifications() -> None:
    derived = qupath_point_feature([[1, 2]], None)
    # GsonTools.PathClassTypeAdapter.write: a derived class is written as "names".
    derived["properties"]["classification"] = {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}
    as_string = qupath_point_feature([[3, 4]], None)
    # PathClassTypeAdapter.read accepts a bare string.
    as_string["properties"]["classification"] = "Stroma"
    child = qupath_point_feature([[5, 6]], "Immune cells")
    child["geometry"]["coordinates"] = [5, 6, 0]  # ROITypeAdapters.parseCoordinate: x, y[, z]
    parent = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
        "properties": {
            "objectType": "annotation",
            # QuPathTypeAdapters.parseObject: children in "childObjects" (or "children").
            "childObjects": [child],
        },
    }
    f = parse_seeds({"type": "FeatureCollection", "features": [derived, as_string, parent]})
    assert [p.class_name for p in f.points] == ["Tumor: Positive", "Stroma", "Immune cells"]
    assert f.points[2] == SeedPoint(5, 6, "Immune cells")  # a z coordinate is dropped
    assert f.n_non_point == 1


def test_bare_geometry_becomes_unclassified_point() -> None:
    # GsonTools.addPathObjects: a bare geometry becomes an unclassified annotation.
    data = [{"type": "Point", "coordinates": [1, 2]}, qupath_point_feature([[3, 4]], "Tumor")]
    f = parse_seeds(data)
    assert f.points == [SeedPoint(1, 2, ""), SeedPoint(3, 4, "Tumor")]
    assert f.n_unclassified == 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not a text GeoJSON file"),
        (b"x,y,class\n1,2,Tumor\n", "not GeoJSON: invalid JSON at line 1"),
        (b'{"type": "Feature", "geometry":', "not GeoJSON: invalid JSON"),
        (b'{"points": [[1, 2]]}', "not GeoJSON as QuPath exports it"),
        (b"42", "not GeoJSON as QuPath exports it"),
        (b'{"type": "FeatureCollection", "features": []}', "holds no point annotations"),
        (
            b'[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": []}}]',
            r"no point annotations \(1 objects, 1 of them not points\)",
        ),
        (
            b'{"type": "Feature", "geometry": {"type": "Point", "coordinates": "12"}}',
            r"a point coordinate must be \[x, y\]",
        ),
    ],
)
def test_bad_seed_files_are_precise_errors(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "seeds.geojson"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=match) as info:
        read_seeds(path)
    assert str(path) in str(info.value)


def test_points_without_class_are_an_error(tmp_path: Path) -> None:
    feats = [qupath_point_feature([[1, 2], [3, 4]], None), qupath_point_feature([[5, 6]], None)]
    path = write_seed_file(tmp_path / "seeds.geojson", feats)
    with pytest.raises(InvalidInputError, match=r"none of the 3 points .* has a classification"):
        read_seeds(path)


def test_missing_seed_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_seeds(tmp_path / "nope.geojson")


# --------------------------------------------------------------------------------------------------
# Colours (PathClass.java)


def test_builtin_class_colours_match_qupath() -> None:
    # PathClass.StandardPathClasses
    assert class_color("Tumor") == (200, 0, 0)
    assert class_color("Stroma") == (150, 200, 150)
    assert class_color("Immune cells") == (160, 90, 160)
    assert class_color("Necrosis") == (50, 50, 50)
    assert class_color("Other") == (255, 200, 0)
    assert class_color("Region*") == (0, 0, 180)
    assert class_color("Ignore*") == (180, 180, 180)
    # PathClass.getDefaultColor: COLOR_POSITIVE (200, 50, 50) and COLOR_NEGATIVE (90, 90, 180)
    # scaled by 1.25 for the top-level classes, unscaled below "Tumor", scaled for other parents.
    assert class_color("Positive") == (250, 62, 62)
    assert class_color("Negative") == (112, 112, 225)
    assert class_color("Tumor: Positive") == (200, 50, 50)
    assert class_color(["Tumor", "Negative"]) == (90, 90, 180)
    assert class_color("Stroma: Positive") == (112, 150, 112)
    assert set(QUPATH_CLASS_COLORS) >= {"Tumor", "Stroma", "Other", "Positive", "Negative"}


def test_other_class_colours_are_stable_and_not_too_dark() -> None:
    for name in ("Lesion", "Normal mucosa", "Muscle", "Fett", "histosic: suggested seed", "Ä"):
        rgb = class_color(name)
        assert rgb == class_color(name)
        assert all(0 <= c <= 255 for c in rgb)
        assert max(rgb) >= 40  # getDefaultColor rejects very dark colours
    assert class_color("Lesion") != class_color("Normal mucosa")


def test_classification_object_shape() -> None:
    # GsonTools.PathClassTypeAdapter: {"name", "color": [r, g, b]}; derived classes as "names".
    assert classification("Tumor") == {"name": "Tumor", "color": [200, 0, 0]}
    sug = classification(SUGGESTED_SEED_CLASS)
    assert sug["names"] == ["histosic", "suggested seed"]
    assert isinstance(sug["color"], list) and len(sug["color"]) == 3
    with pytest.raises(InvalidInputError):
        classification("  ")


# --------------------------------------------------------------------------------------------------
# Writing results: every rule of QuPath's reader


def test_feature_collection_and_feature_types(collections: dict[str, dict[str, Any]]) -> None:
    for coll in collections.values():
        assert coll["type"] == "FeatureCollection"
        assert coll["features"]
        assert all(f["type"] == "Feature" for f in coll["features"])


def test_object_types_are_qupath_lower_case_names(
    collections: dict[str, dict[str, Any]],
) -> None:
    # QuPathTypeAdapters.PathObjectTypeAdapter: MAP_TYPES values; anything else (even "Tile")
    # silently becomes an annotation.
    def types(kind: str) -> set[str]:
        return {f["properties"]["objectType"] for f in collections[kind]["features"]}

    for kind in collections:
        assert types(kind) <= QUPATH_OBJECT_TYPES
    assert types("tiles") == {"tile", "annotation"}  # annotations: the suggested points
    assert types("detections") == {"detection", "annotation"}
    assert types("regions") == {"annotation"}
    assert types("both") == {"tile", "annotation"}


def test_ids_are_unique_uuids(collections: dict[str, dict[str, Any]]) -> None:
    # QuPathTypeAdapters.parseObject: UUID.fromString(id); a non-UUID id is dropped.
    ids = [f["id"] for coll in collections.values() for f in coll["features"]]
    for i in ids:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 4
    assert len(set(ids)) == len(ids)


def test_every_classification_has_name_and_rgb_color(
    collections: dict[str, dict[str, Any]], clustering: SlideClustering
) -> None:
    # GsonTools.PathClassTypeAdapter.read: needs ("name" or "names") and "color" (int[]), else
    # "Unable to parse PathClass" aborts the whole import.
    for coll in collections.values():
        for f in coll["features"]:
            cls = f["properties"]["classification"]
            assert ("name" in cls) != ("names" in cls)
            color = cls["color"]
            assert isinstance(color, list) and len(color) == 3
            assert all(isinstance(c, int) and 0 <= c <= 255 for c in color)
            name = cls.get("name") or ": ".join(cls["names"])
            assert tuple(color) == class_color(name)
    names = {
        f["properties"]["classification"].get("name") for f in collections["tiles"]["features"]
    }
    assert names == {*clustering.class_names, None}  # None: the suggested seeds ("names")


def test_geometries_are_valid_qupath_geojson(collections: dict[str, dict[str, Any]]) -> None:
    # ROITypeAdapters.parseGeometry: GeoJSON types; writeGeometry: 2 decimal places.
    decimals = re.compile(r"\.\d{3,}")
    for kind, coll in collections.items():
        for f in coll["features"]:
            g = f["geometry"]
            assert g["type"] in QUPATH_GEOMETRY_TYPES
            assert "plane" not in g  # default plane: QuPath omits it
            assert not decimals.search(json.dumps(g["coordinates"]))
            geom = shape(g)
            assert geom.is_valid, (kind, f["properties"])
            if f["properties"]["objectType"] in ("tile", "detection"):
                ring = g["coordinates"][0]
                assert g["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
                assert math.isclose(geom.area, STRIDE * STRIDE)


def test_measurements_are_a_name_to_number_object(
    collections: dict[str, dict[str, Any]],
) -> None:
    # QuPathTypeAdapters.MeasurementListTypeAdapter: an object of name -> number.
    for coll in collections.values():
        for f in coll["features"]:
            m = f["properties"]["measurements"]
            assert isinstance(m, dict) and m
            for key, value in m.items():
                assert isinstance(key, str)
                assert isinstance(value, (int, float)) and math.isfinite(value)
    tile = collections["tiles"]["features"][0]["properties"]["measurements"]
    assert set(tile) == {"histosic: confidence", "histosic: seed", "histosic: tissue fraction"}
    assert 0.0 <= tile["histosic: confidence"] <= 1.0


def test_non_finite_measurements_use_qupath_strings(
    slide: tuple[Embeddings, np.ndarray], clustering: SlideClustering
) -> None:
    # MeasurementListTypeAdapter.write: NaN and infinities as "NaN", "Infinity", "-Infinity".
    emb, _ = slide
    result = clustering.result
    conf = result.confidence.copy()
    conf[:3] = [np.nan, np.inf, -np.inf]
    doctored = SlideClustering(
        result=type(result)(**{**result.__dict__, "confidence": conf}),
        class_names=clustering.class_names,
        mapping=clustering.mapping,
    )
    coll = json.loads(json.dumps(to_geojson(emb, doctored, "tiles"), allow_nan=False))
    values = [f["properties"]["measurements"]["histosic: confidence"] for f in coll["features"][:3]]
    assert values == ["NaN", "Infinity", "-Infinity"]


def test_tiles_cover_exactly_the_tissue_patches_without_overlap(
    slide: tuple[Embeddings, np.ndarray],
    clustering: SlideClustering,
    collections: dict[str, dict[str, Any]],
) -> None:
    emb, _ = slide
    tiles = [f for f in collections["tiles"]["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tiles) == emb.n_patches
    geoms = np.array([shape(f["geometry"]) for f in tiles])
    union = shapely.union_all(geoms)
    # No overlap: the union's area is the sum of the tiles' areas.
    assert math.isclose(union.area, float(shapely.area(geoms).sum()), rel_tol=1e-9)
    # Exactly the tissue patches: each tile is centred on its patch, and nothing else is covered.
    centroids = shapely.get_coordinates(shapely.centroid(geoms))
    assert np.allclose(centroids, emb.centers())
    hole = shapely.box(64, 32, 64 + 8 * STRIDE, 32 + 6 * STRIDE)  # the block with no patches
    assert union.intersection(hole).area < 0.5 * hole.area
    cells = shapely.union_all(shapely.box(*tile_polygons(emb).T))
    assert math.isclose(union.symmetric_difference(cells).area, 0.0, abs_tol=1e-6)
    # Round trip: the class of each tile is the clustering's class of its patch.
    names = [f["properties"]["classification"]["name"] for f in tiles]
    assert names == clustering.label_names()


def test_regions_follow_the_tiles_of_each_class(
    clustering: SlideClustering, collections: dict[str, dict[str, Any]]
) -> None:
    regions = collections["regions"]["features"]
    regions = [f for f in regions if f["geometry"]["type"] != "Point"]
    assert {f["properties"]["classification"]["name"] for f in regions} == set(
        n for n, count in clustering.patches_per_class().items() if count
    )
    tiles = [f for f in collections["tiles"]["features"] if f["properties"]["objectType"] == "tile"]
    for f in regions:
        name = f["properties"]["classification"]["name"]
        assert f["properties"]["name"] == f"histosic {name}"
        region = shape(f["geometry"])
        cls_tiles = shapely.union_all(
            [
                shape(t["geometry"])
                for t in tiles
                if t["properties"]["classification"]["name"] == name
            ]
        )
        # Specks and small holes are dropped and outlines simplified: the areas stay close.
        assert region.symmetric_difference(cls_tiles).area < 0.15 * cls_tiles.area
        assert (
            f["properties"]["measurements"]["histosic: patches"]
            == (clustering.patches_per_class()[name])
        )
        n_vertices = len(shapely.get_coordinates(region))
        assert n_vertices < len(shapely.get_coordinates(cls_tiles))  # simplified


def test_regions_stay_valid_when_patches_are_off_the_grid() -> None:
    # Trident/CLAM files may hold coordinates that are not on an exact stride grid: the cells then
    # overlap or leave gaps, and the fast coverage union must not produce invalid outlines.
    emb, truth = make_embeddings(nx=20, ny=15, seed=4)
    rng = np.random.default_rng(0)
    emb.coords = emb.coords + rng.integers(-20, 21, size=emb.coords.shape)
    clicks = seeds_from_truth(emb, truth, 5)
    points = [SeedPoint(float(x), float(y), name) for name, xy in clicks.items() for x, y in xy]
    clustering = cluster_slide(emb, points)
    coll = to_geojson(emb, clustering, "regions", suggest_points=False)
    assert coll["features"]
    for f in coll["features"]:
        geom = shape(f["geometry"])
        assert geom.is_valid and geom.area > 0


def test_suggested_seeds_are_point_annotations(
    slide: tuple[Embeddings, np.ndarray],
    clustering: SlideClustering,
    collections: dict[str, dict[str, Any]],
) -> None:
    emb, _ = slide
    pts = [f for f in collections["tiles"]["features"] if f["geometry"]["type"] == "Point"]
    assert len(pts) == clustering.suggested.size == 5
    centres = emb.centers()[clustering.suggested]
    for f, c in zip(pts, centres, strict=True):
        assert f["properties"]["objectType"] == "annotation"
        assert f["properties"]["classification"]["names"] == ["histosic", "suggested seed"]
        assert np.allclose(f["geometry"]["coordinates"], c, atol=0.01)
    # A user re-classifies them and sends them back as seeds: they are read as points.
    assert len(parse_seeds(pts).points) == 5
    none = to_geojson(emb, clustering, "tiles", suggest_points=False)
    assert all(f["geometry"]["type"] == "Polygon" for f in none["features"])


@pytest.mark.parametrize("kind", ["tiles", "detections", "regions", "both"])
def test_fast_encoding_gives_the_same_objects(
    slide: tuple[Embeddings, np.ndarray], clustering: SlideClustering, kind: str
) -> None:
    emb, _ = slide
    no_ids = re.compile(r'"id":"[0-9a-f-]{36}"')
    fast = no_ids.sub('"id":""', to_geojson_bytes(emb, clustering, kind).decode())
    slow = json.dumps(to_geojson(emb, clustering, kind), separators=(",", ":"))
    assert fast == no_ids.sub('"id":""', slow)


def test_to_geojson_rejects_bad_arguments(
    slide: tuple[Embeddings, np.ndarray], clustering: SlideClustering
) -> None:
    emb, _ = slide
    with pytest.raises(InvalidInputError, match="output must be one of"):
        to_geojson(emb, clustering, "polygons")
    other, _ = make_embeddings(nx=5, ny=5)
    with pytest.raises(InvalidInputError, match="use the embeddings that were clustered"):
        to_geojson(other, clustering)


def test_seed_round_trip_through_qupath_export(
    slide: tuple[Embeddings, np.ndarray], tmp_path: Path
) -> None:
    emb, truth = slide
    clicks = seeds_from_truth(emb, truth, 4)
    feats = [qupath_point_feature(xy, name) for name, xy in clicks.items()]
    f = read_seeds(write_seed_file(tmp_path / "s.geojson", feats))
    got = np.array([[p.x, p.y] for p in f.points])
    assert np.allclose(got, np.concatenate([clicks["Tumor"], clicks["Stroma"]]))
    assert list(iter_features({"type": "Unknown", "features": feats})) == []


# --------------------------------------------------------------------------------------------------
# Atomic writing


def test_write_refuses_existing_output_and_leaves_no_temp_files(
    slide: tuple[Embeddings, np.ndarray], clustering: SlideClustering, tmp_path: Path
) -> None:
    emb, _ = slide
    coll = to_geojson(emb, clustering, "regions")
    out = tmp_path / "result.geojson"
    write_geojson(out, coll)
    first = out.read_bytes()
    assert json.loads(first)["type"] == "FeatureCollection"
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_geojson(out, coll)
    assert out.read_bytes() == first
    # A failure while serialising leaves the existing file as it was.
    with pytest.raises(InvalidInputError, match="NaN"):
        write_geojson(
            out, {"type": "FeatureCollection", "features": [float("nan")]}, overwrite=True
        )
    assert out.read_bytes() == first
    write_geojson(out, to_geojson(emb, clustering, "tiles"), overwrite=True)
    assert out.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["result.geojson"]
    with pytest.raises(InvalidInputError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "x.geojson", b"{}")
    with pytest.raises(OutputExistsError):
        write_atomic(tmp_path, b"{}", overwrite=True)


# --------------------------------------------------------------------------------------------------
# The same rules checked with real Java: Gson as QuPath binds it, java.util.Random, java.util.UUID

_JAVA_CHECK = r"""
import com.google.gson.*;
import java.nio.file.*;
import java.util.*;

public class QuPathRulesCheck {
    // GsonTools.PathClassTypeAdapter.PathClassProxy: the fields QuPath binds a class to.
    static class PathClassProxy { List<String> names; String name; int[] color; }
    static final Set<String> TYPES =
        Set.of("tile", "cell", "detection", "annotation", "tmaCore", "root");

    static void check(boolean ok, Object what) {
        if (!ok) throw new RuntimeException("rule broken: " + what);
    }

    public static void main(String[] args) throws Exception {
        Gson gson = new Gson();
        String text = Files.readString(Path.of(args[0]));
        JsonObject root = JsonParser.parseString(text).getAsJsonObject();
        int n = 0;
        for (JsonElement e : root.getAsJsonArray("features")) {
            JsonObject f = e.getAsJsonObject();
            String id = f.get("id").getAsString();
            check(UUID.fromString(id).toString().equals(id), id);
            JsonObject p = f.getAsJsonObject("properties");
            check(TYPES.contains(p.get("objectType").getAsString()), p);
            JsonObject c = p.getAsJsonObject("classification");
            check((c.has("name") || c.has("names")) && c.has("color"), c);
            PathClassProxy proxy = gson.fromJson(c, PathClassProxy.class);
            check(proxy.color.length == 3, c);
            Map<?, ?> m = gson.fromJson(p.get("measurements"), Map.class);
            for (Object v : m.values()) check(v instanceof Number, v);
            n++;
        }
        System.out.println("features " + n);
        // PathClass.getDefaultColor for a class QuPath does not know.
        for (int i = 1; i < args.length; i++) {
            Random random = new Random(args[i].replace("|", "\n").hashCode());
            int r = 0, g = 0, b = 0;
            while (r < 40 && g < 40 && b < 40) {
                r = random.nextInt(256);
                g = random.nextInt(256);
                b = random.nextInt(256);
            }
            System.out.println("color " + r + " " + g + " " + b);
        }
    }
}
"""


def _gson_jar() -> Path | None:
    env = os.environ.get("HISTOSIC_GSON_JAR")
    if env and Path(env).is_file():
        return Path(env)
    jars = sorted((Path.home() / ".m2/repository/com/google/code/gson/gson").glob("*/gson-*.jar"))
    jars = [j for j in jars if not j.name.endswith(("-sources.jar", "-javadoc.jar"))]
    return jars[-1] if jars else None


def test_output_parses_with_gson_like_qupath(
    slide: tuple[Embeddings, np.ndarray], clustering: SlideClustering, tmp_path: Path
) -> None:
    java = shutil.which("java")
    jar = _gson_jar()
    if java is None or jar is None:
        pytest.skip("needs java and a Gson jar (HISTOSIC_GSON_JAR or ~/.m2) for the Java check")
    emb, _ = slide
    out = tmp_path / "both.geojson"
    write_geojson(out, to_geojson(emb, clustering, "both"))
    src = tmp_path / "QuPathRulesCheck.java"
    src.write_text(_JAVA_CHECK)
    names = ["Lesion", "Normal mucosa", "Fett", "Ä", "histosic|suggested seed"]
    proc = subprocess.run(
        [java, "-cp", str(jar), str(src), str(out), *names],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    n_features = len(json.loads(out.read_text())["features"])
    assert lines[0] == f"features {n_features}"
    java_colors = [tuple(int(v) for v in line.split()[1:]) for line in lines[1:]]
    ours = [class_color(n.split("|")) for n in names]
    assert java_colors == ours


def test_core_modules_import_no_torch_grpc_or_paquo() -> None:
    code = (
        "import sys\n"
        "import histosic.outputs.geojson, histosic.outputs.seedfile, histosic.seeds\n"
        "import histosic.cluster, histosic.outputs.overlay, histosic.outputs.raster\n"
        "import histosic.commands.cluster\n"
        "print(sorted(m for m in ('torch', 'grpc', 'paquo') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
