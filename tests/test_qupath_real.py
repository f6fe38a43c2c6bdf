"""histosic's GeoJSON both ways through QuPath's own code (real jars, real Java).

``tests/qupath/QuPathHarness.java`` is compiled at test time against the QuPath jars of each
version folder in ``../shared/qupath/<version>/`` (QuPath's source compiled with javac, see that
folder's README). It reads a file with ``qupath.lib.io.PathIO.readObjects`` into real
``PathObject``s in a ``PathObjectHierarchy`` and prints what QuPath made of it; and it writes point
seeds with QuPath's exporter (``PathIO.exportObjectsAsGeoJSON``, ``GsonTools``) from real
``PathObjects.createAnnotationObject(ROIs.createPointsROI(...), PathClass.fromString(...))``,
which ``histosic cluster`` and the Cluster RPC then read. A version is skipped, with the reason,
where its folder, its Java or a Debian jar is missing (``make test`` installs the Debian jars).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qupath_jars import VERSION_PARAMS, qupath_jars
from shapely.geometry import shape
from test_qupath_data import (
    make_embeddings,
    qupath_point_feature,
    seeds_from_truth,
    write_seed_file,
)
from test_service_support import clustering_stub

from histosic import cli
from histosic.api.v1 import clustering_pb2, clustering_pb2_grpc, common_pb2
from histosic.outputs.qupath_classes import SUGGESTED_SEED_CLASS, split_class_names
from histosic.outputs.seedfile import iter_features, read_seeds
from histosic.store import Embeddings, write_embeddings

HARNESS = Path(__file__).resolve().parent / "qupath" / "QuPathHarness.java"
pytestmark = [pytest.mark.slow, pytest.mark.qupath_jars]


@dataclass
class Harness:
    version: str
    java: Path
    classpath: str

    def _run(self, *args: str) -> str:
        # The client compiler only and the shared class archive: a short run starts faster.
        proc = subprocess.run(
            [
                str(self.java),
                "-Djava.awt.headless=true",
                "-XX:TieredStopAtLevel=1",
                "-Xshare:auto",
                "-cp",
                self.classpath,
                "QuPathHarness",
            ]
            + list(args),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"QuPath {self.version}: {proc.stderr[-3000:]}"
        return proc.stdout

    def read(self, path: Path) -> dict[str, Any]:
        """What QuPath's ``PathIO.readObjects`` makes of a file."""
        out: dict[str, Any] = json.loads(self._run("read", str(path)))
        assert out["qupathVersion"] == self.version
        return out

    def export(self, objects: list[dict[str, Any]], mode: str, out: Path) -> Path:
        """Point annotations written by QuPath's exporter (``array``, ``collection``, ``gson``)."""
        spec = out.with_suffix(".spec.json")
        spec.write_text(json.dumps({"mode": mode, "objects": objects}))
        self._run("export", str(spec), str(out))
        return out


@pytest.fixture(scope="module", params=VERSION_PARAMS)
def qupath(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Harness:
    version: str = request.param
    found = qupath_jars(version)
    jars = list(found.jars)
    classes = tmp_path_factory.mktemp(f"harness-{version}")
    proc = subprocess.run(
        [
            str(found.java_home / "bin" / "javac"),
            "-nowarn",
            "-cp",
            ":".join(jars),
            "-d",
            str(classes),
        ]
        + [str(HARNESS)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    return Harness(version, found.java_home / "bin" / "java", ":".join([str(classes), *jars]))


# --------------------------------------------------------------------------------------------------
# The slide, its seeds and every output histosic writes (made once)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("qupath-real")
    emb, truth = make_embeddings(nx=40, ny=30)
    write_embeddings(d / "slide.h5", emb)
    clicks = seeds_from_truth(emb, truth, 6)
    feats = [qupath_point_feature(xy, name) for name, xy in clicks.items()]
    seeds = write_seed_file(d / "seeds.geojson", feats)
    return {
        "dir": d,
        "h5": d / "slide.h5",
        "emb": emb,
        "truth": truth,
        "clicks": clicks,
        "seeds": seeds,
    }


def _cli(*argv: Any) -> None:
    assert cli.main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def outputs(slide: dict[str, Any]) -> dict[str, Path]:
    d: Path = slide["dir"]
    out: dict[str, Path] = {}
    for kind in ("tiles", "detections", "regions", "both"):
        out[kind] = d / f"{kind}.geojson"
        _cli(
            "cluster",
            slide["h5"],
            "--seeds",
            slide["seeds"],
            "--out",
            out[kind],
            "--output",
            kind,
            "--suggest",
            "4",
        )
    c = slide["clicks"]
    multi = [
        qupath_point_feature(c["Tumor"][:3], "Tumor"),
        qupath_point_feature(c["Tumor"][3:], "Tumor: Positive"),
        qupath_point_feature(c["Stroma"][:3], "Stroma"),
        qupath_point_feature(c["Stroma"][3:], "Immune cells"),
    ]
    out["multiclass"] = d / "multiclass.geojson"
    _cli(
        "cluster",
        slide["h5"],
        "--seeds",
        write_seed_file(d / "multi-seeds.geojson", multi),
        "--out",
        out["multiclass"],
        "--multiclass",
    )
    out["colors"] = d / "colors.geojson"
    _cli("colors", slide["h5"], "--out", out["colors"], "--method", "pca")
    return out


# --------------------------------------------------------------------------------------------------
# Comparing what histosic wrote with what QuPath read


def _expected_names(props: dict[str, Any]) -> list[str] | None:
    cls = props.get("classification")
    if cls is None:
        return None
    return list(cls["names"]) if "names" in cls else split_class_names(cls["name"])


def _number(value: Any) -> float:
    return float("nan") if value == "NaN" else float(value)


def compare(written_path: Path, read: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Assert that QuPath read every object histosic wrote, field by field (matched by id)."""
    written = list(iter_features(json.loads(written_path.read_text())))
    objects = {o["id"]: o for o in read["objects"]}
    assert read["hierarchy"]["all"] == len(written) == len(objects)
    for feat in written:
        props = feat["properties"]
        obj = objects[feat["id"]]  # QuPath kept histosic's UUID
        assert obj["type"] == props["objectType"]
        assert obj.get("names") == _expected_names(props)
        if "classification" in props:
            assert obj["classColor"] == props["classification"]["color"]
        assert obj["color"] == props.get("color")
        assert obj["name"] == props.get("name")
        measurements = {k: _number(v) for k, v in props.get("measurements", {}).items()}
        assert set(obj["measurements"]) == set(measurements)
        for k, v in measurements.items():
            got = obj["measurements"][k]
            # QuPath keeps measurements as float32.
            assert (math.isnan(v) and math.isnan(got)) or got == pytest.approx(
                v, rel=1e-6, abs=1e-6
            )
        geom = shape(feat["geometry"])
        x0, y0, x1, y1 = geom.bounds
        assert obj["bounds"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-6)
        assert obj["area"] == pytest.approx(geom.area, rel=1e-9, abs=1e-9)
        assert obj["geometry"] == geom.geom_type
        if geom.geom_type in ("Point", "MultiPoint"):
            xy = [p.coords[0] for p in getattr(geom, "geoms", [geom])]
            assert np.asarray(obj["points"]) == pytest.approx(np.asarray(xy))
    return objects


def _accuracy(
    emb: Embeddings, truth: np.ndarray, objects: dict[str, dict[str, Any]], kind: str
) -> float:
    """How often the class QuPath reads on each patch object is the truth ('Tumor' = positive)."""
    centre = {
        tuple(c): t
        for c, t in zip(np.round(emb.centers(), 2).tolist(), truth.tolist(), strict=True)
    }
    hits = []
    for o in objects.values():
        if o["type"] != kind:
            continue
        x, y, w, h = o["bounds"]
        t = centre.get((round(x + w / 2, 2), round(y + h / 2, 2)))
        assert t is not None, o["bounds"]
        hits.append((o["names"] == ["Tumor"]) == t)
    assert len(hits) == emb.n_patches
    return float(np.mean(hits))


@pytest.mark.parametrize("kind", ["tiles", "detections", "regions", "both"])
def test_cluster_outputs_read_by_qupath(
    qupath: Harness, slide: dict[str, Any], outputs: dict[str, Path], kind: str
) -> None:
    read = qupath.read(outputs[kind])
    objects = compare(outputs[kind], read)
    h = read["hierarchy"]
    n = slide["emb"].n_patches
    suggested = [
        o for o in objects.values() if o["names"] == split_class_names(SUGGESTED_SEED_CLASS)
    ]
    assert len(suggested) == 4 and all(
        o["type"] == "annotation" and o["roi"] == "Points" for o in suggested
    )
    if kind in ("tiles", "both"):
        assert h["tiles"] == n  # getDetectionObjects() includes tiles
        assert _accuracy(slide["emb"], slide["truth"], objects, "tile") > 0.95
    if kind == "detections":
        assert h["tiles"] == 0 and h["detections"] == n
        assert _accuracy(slide["emb"], slide["truth"], objects, "detection") > 0.95
    if kind in ("regions", "both"):
        regions = [
            o for o in objects.values() if o["type"] == "annotation" and o["roi"] != "Points"
        ]
        assert sorted(o["class"] for o in regions) == ["Stroma", "Tumor"]
        # The regions cover the slide's patch cells: their areas add up to the tiles'.
        cell = shape(json.loads(outputs["tiles"].read_text())["features"][0]["geometry"]).area
        assert sum(o["area"] for o in regions) == pytest.approx(n * cell, rel=1e-9)
    if kind == "regions":
        assert h["tiles"] == h["detections"] == 0 and h["annotations"] == 2 + 4


def test_multiclass_derived_classes_read_by_qupath(
    qupath: Harness, slide: dict[str, Any], outputs: dict[str, Path]
) -> None:
    objects = compare(outputs["multiclass"], qupath.read(outputs["multiclass"]))
    tiles = [o for o in objects.values() if o["type"] == "tile"]
    names = {o["class"] for o in tiles}
    assert names <= {"Tumor", "Tumor: Positive", "Stroma", "Immune cells"}
    assert "Tumor: Positive" in names and "Stroma" in names
    derived = [o for o in tiles if o["class"] == "Tumor: Positive"]
    assert all(o["names"] == ["Tumor", "Positive"] for o in derived)
    tumourish = np.array([o["names"][0] == "Tumor" for o in tiles])
    assert tumourish.sum() == pytest.approx(slide["truth"].sum(), rel=0.1)


def test_colour_view_read_by_qupath(
    qupath: Harness, slide: dict[str, Any], outputs: dict[str, Path]
) -> None:
    read = qupath.read(outputs["colors"])
    objects = compare(outputs["colors"], read)
    assert (
        read["hierarchy"]["detections"] == slide["emb"].n_patches
        and read["hierarchy"]["tiles"] == 0
    )
    colours = {tuple(o["color"]) for o in objects.values()}
    assert len(colours) > 100  # a real colour view, not one colour
    for o in objects.values():
        assert [o["measurements"][f"histosic: PCA {c}"] for c in "RGB"] == o["color"]


# --------------------------------------------------------------------------------------------------
# The other way: seeds written by QuPath's own exporter


def test_qupath_multipoint_order(qupath: Harness, tmp_path: Path) -> None:
    """What QuPath's exporter does with a multi-point annotation's order, per version."""
    pts = [[30.0, 2.0], [3.0, 4.0], [10.0, 1.0]]
    out = qupath.export([{"class": "Tumor", "points": pts}], "array", tmp_path / "one.geojson")
    data = json.loads(out.read_text())
    assert data["type"] == "Feature"  # one object: a bare Feature even without FEATURE_COLLECTION
    coords = data["geometry"]["coordinates"]
    assert coords == (pts if qupath.version.startswith("0.5.") else sorted(pts))
    assert data["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}


def _qupath_seed_objects(clicks: dict[str, Any]) -> list[dict[str, Any]]:
    """MultiPoint and single-point annotations, a derived class among them."""
    t = np.asarray(clicks["Tumor"]).tolist()
    s = np.asarray(clicks["Stroma"]).tolist()
    return [
        {"class": "Tumor", "points": t[:4]},  # a MultiPoint annotation
        {"class": "Tumor: Positive", "points": t[4:5]},  # a derived class, one Point
        {"class": "Tumor: Positive", "points": t[5:6]},
        {"class": "Stroma", "points": s},
        {"class": None, "points": [[5.0, 5.0]]},  # unclassified: ignored with a reason
    ]


@pytest.mark.parametrize("mode", ["array", "collection", "gson"])
def test_seeds_exported_by_qupath_cluster(
    qupath: Harness,
    slide: dict[str, Any],
    tmp_path: Path,
    mode: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seeds = qupath.export(_qupath_seed_objects(slide["clicks"]), mode, tmp_path / "seeds.geojson")
    data = json.loads(seeds.read_text())
    assert isinstance(data, list) == (mode != "collection")
    f = read_seeds(seeds)
    t, s = np.asarray(slide["clicks"]["Tumor"]), np.asarray(slide["clicks"]["Stroma"])
    assert [p.class_name for p in f.points] == ["Tumor"] * 4 + ["Tumor: Positive"] * 2 + [
        "Stroma"
    ] * 6 + [""]
    # QuPath 0.6 and 0.7 write a MultiPoint's coordinates sorted (0.5 in the order clicked): the
    # same points per class either way.
    for name, xy in (("Tumor", t[:4]), ("Tumor: Positive", t[4:]), ("Stroma", s)):
        got = sorted((p.x, p.y) for p in f.points if p.class_name == name)
        assert np.array(got) == pytest.approx(np.array(sorted(map(tuple, xy.tolist()))))
    out = tmp_path / "result.geojson"
    capsys.readouterr()
    _cli("cluster", slide["h5"], "--seeds", seeds, "--out", out)
    stdout = capsys.readouterr().out
    assert "12 used" in stdout and "1 ignored" in stdout
    objects = compare(out, qupath.read(out))
    assert {o["class"] for o in objects.values() if o["type"] == "tile"} == {"Tumor", "Stroma"}
    assert _accuracy(slide["emb"], slide["truth"], objects, "tile") > 0.95


@pytest.fixture(scope="module")
def server(slide: dict[str, Any]) -> Iterator[clustering_pb2_grpc.ClusteringServiceStub]:
    with clustering_stub(slide["dir"]) as stub:
        yield stub


def test_seeds_exported_by_qupath_through_cluster_rpc(
    qupath: Harness,
    slide: dict[str, Any],
    server: clustering_pb2_grpc.ClusteringServiceStub,
    tmp_path: Path,
) -> None:
    seeds = qupath.export(
        _qupath_seed_objects(slide["clicks"]), "collection", tmp_path / "s.geojson"
    )
    points = read_seeds(seeds).points
    resp = server.Cluster(
        clustering_pb2.ClusterRequest(
            embedding=common_pb2.EmbeddingRef(embedding_id="slide.h5"),
            seeds=[clustering_pb2.SeedPoint(x=p.x, y=p.y, class_name=p.class_name) for p in points],
            options=clustering_pb2.ClusterOptions(suggest=2),
        ),
        timeout=60,
    )
    assert tuple(resp.class_names) == ("Stroma", "Tumor") and resp.positive_class == "Tumor"
    assert len(resp.ignored_seeds) == 1 and "no classification" in resp.ignored_seeds[0].reason
    out = tmp_path / "rpc.geojson"
    out.write_text(resp.geojson)
    objects = compare(out, qupath.read(out))
    assert _accuracy(slide["emb"], slide["truth"], objects, "tile") > 0.95
    assert sum(o["names"] == split_class_names(SUGGESTED_SEED_CLASS) for o in objects.values()) == 2


def test_harness_sees_a_wrong_class(qupath: Harness, tmp_path: Path) -> None:
    """The comparison can fail: a file whose class QuPath reads differently is caught."""
    feat = qupath_point_feature([[1, 2]], "Tumor")
    path = write_seed_file(tmp_path / "x.geojson", [feat])
    read = qupath.read(path)
    read["objects"][0]["names"] = ["Stroma"]
    with pytest.raises(AssertionError):
        compare(path, read)
