"""Derived QuPath classes in seeds (``Tumor: Positive``): through ``histosic cluster`` and the
server's Cluster RPC.

QuPath writes a derived class as ``"classification": {"names": ["Tumor", "Positive"]}``. In binary
mode a derived class of the positive class is positive, and the negative class keeps the seeds'
own name; multi-class mode keeps each full name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_qupath_data import (
    make_embeddings,
    qupath_point_feature,
    seeds_from_truth,
    write_seed_file,
)
from test_service_support import clustering_stub

from histosic import cli
from histosic.api.v1 import clustering_pb2, clustering_pb2_grpc, common_pb2
from histosic.seeds import SeedPoint, map_seeds
from histosic.store import Embeddings, write_embeddings


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("derived")
    emb, truth = make_embeddings(nx=40, ny=30)
    write_embeddings(d / "slide.h5", emb)
    clicks = seeds_from_truth(emb, truth, 6)
    return {"dir": d, "h5": d / "slide.h5", "emb": emb, "truth": truth, "clicks": clicks}


def _derived(xy: Any, names: list[str]) -> dict[str, Any]:
    """A point annotation with a derived class, as QuPath's exporter writes it."""
    feat = qupath_point_feature(xy, None)
    feat["properties"]["classification"] = {"names": names, "color": [200, 0, 0]}
    return feat


def _seed_features(clicks: dict[str, Any]) -> list[dict[str, Any]]:
    tumour, stroma = clicks["Tumor"], clicks["Stroma"]
    return [
        qupath_point_feature(tumour[:3], "Tumor"),
        _derived(tumour[3:], ["Tumor", "Positive"]),
        qupath_point_feature(stroma, "Stroma"),
    ]


def _cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: Any) -> dict[str, Any]:
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return {
        "stdout": out.out,
        "geo": json.loads(Path(str(argv[argv.index("--out") + 1])).read_text()),
    }


def _tile_classes(geo: dict[str, Any]) -> list[str]:
    out = []
    for f in geo["features"]:
        if f["properties"]["objectType"] != "tile":
            continue
        cls = f["properties"]["classification"]
        out.append(": ".join(cls["names"]) if "names" in cls else cls["name"])
    return out


def test_map_seeds_derived_positive_is_positive(slide: dict[str, Any]) -> None:
    emb: Embeddings = slide["emb"]
    c = slide["clicks"]
    pts = [SeedPoint(float(x), float(y), "Tumor: Positive") for x, y in c["Tumor"]]
    pts += [SeedPoint(float(x), float(y), "Stroma") for x, y in c["Stroma"]]
    m = map_seeds(emb, pts)
    assert m.class_names == ("Stroma", "Tumor") and m.positive == 1
    assert m.seed_class_names == {"Tumor: Positive": "Tumor", "Stroma": "Stroma"}
    assert m.seeded_patches_per_class() == {"Stroma": 6, "Tumor": 6}
    # Negative seeds that are all Stroma or a derived Stroma class keep the name "Stroma".
    pts2 = [SeedPoint(float(x), float(y), "Tumor") for x, y in c["Tumor"]]
    pts2 += [SeedPoint(float(x), float(y), "Stroma: Negative") for x, y in c["Stroma"][:3]]
    pts2 += [SeedPoint(float(x), float(y), "Stroma") for x, y in c["Stroma"][3:]]
    assert map_seeds(emb, pts2).class_names == ("Stroma", "Tumor")
    # Mixed negative names still merge into QuPath's "Other".
    pts3 = pts2[:6] + [SeedPoint(float(x), float(y), "Necrosis") for x, y in c["Stroma"][:3]]
    pts3 += pts2[9:]
    assert map_seeds(emb, pts3).class_names == ("Other", "Tumor")
    # A positive class given as the derived name: the plain base class is negative.
    m4 = map_seeds(emb, pts2[:3] + pts[3:6] + pts[6:], positive="Tumor: Positive")
    assert m4.class_names[m4.positive or 0] == "Tumor: Positive"
    assert m4.seed_class_names["Tumor"] == "Other"


def test_cli_binary_counts_derived_positive_and_keeps_negative_name(
    slide: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = write_seed_file(tmp_path / "s.geojson", _seed_features(slide["clicks"]))
    out = tmp_path / "r.geojson"
    res = _cluster(tmp_path, capsys, "cluster", slide["h5"], "--seeds", seeds, "--out", out)
    classes = _tile_classes(res["geo"])
    assert set(classes) == {"Tumor", "Stroma"}, set(classes)
    assert "Other" not in res["stdout"]
    truth = slide["truth"]
    labels = np.array([c == "Tumor" for c in classes])
    assert (labels == truth).mean() > 0.95


def test_cli_multiclass_keeps_full_derived_names(
    slide: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = write_seed_file(tmp_path / "s.geojson", _seed_features(slide["clicks"]))
    out = tmp_path / "r.geojson"
    res = _cluster(
        tmp_path, capsys, "cluster", slide["h5"], "--seeds", seeds, "--out", out, "--multiclass"
    )
    classes = set(_tile_classes(res["geo"]))
    assert "Stroma" in classes and classes <= {"Tumor", "Tumor: Positive", "Stroma"}
    derived = [
        f["properties"]["classification"]
        for f in res["geo"]["features"]
        if "names" in f["properties"].get("classification", {})
        and f["properties"]["objectType"] == "tile"
    ]
    assert all(c["names"] == ["Tumor", "Positive"] for c in derived)


@pytest.fixture(scope="module")
def server(slide: dict[str, Any]) -> Iterator[clustering_pb2_grpc.ClusteringServiceStub]:
    with clustering_stub(slide["dir"]) as stub:
        yield stub


def test_cluster_rpc_counts_derived_positive(
    slide: dict[str, Any], server: clustering_pb2_grpc.ClusteringServiceStub
) -> None:
    c = slide["clicks"]
    seeds = [
        clustering_pb2.SeedPoint(x=x, y=y, class_name="Tumor: Positive") for x, y in c["Tumor"]
    ]
    seeds += [clustering_pb2.SeedPoint(x=x, y=y, class_name="Stroma") for x, y in c["Stroma"]]
    resp = server.Cluster(
        clustering_pb2.ClusterRequest(
            embedding=common_pb2.EmbeddingRef(embedding_id="slide.h5"), seeds=seeds
        ),
        timeout=60,
    )
    assert tuple(resp.class_names) == ("Stroma", "Tumor")
    assert resp.positive_class == "Tumor"
    labels = np.frombuffer(resp.labels.data, dtype="<i4")
    assert ((labels == 1) == slide["truth"]).mean() > 0.95
    resp_mc = server.Cluster(
        clustering_pb2.ClusterRequest(
            embedding=common_pb2.EmbeddingRef(embedding_id="slide.h5"),
            seeds=[
                *seeds[:3],
                *(clustering_pb2.SeedPoint(x=s.x, y=s.y, class_name="Tumor") for s in seeds[3:6]),
                *seeds[6:],
            ],
            options=clustering_pb2.ClusterOptions(multiclass=True),
        ),
        timeout=60,
    )
    assert tuple(resp_mc.class_names) == ("Stroma", "Tumor", "Tumor: Positive")


def test_base_and_derived_class_on_one_patch(slide: dict[str, Any]) -> None:
    """In binary mode ``Tumor`` and ``Tumor: Positive`` are one class: no conflict on a patch;
    in multi-class mode they are two classes, and the patch is left out."""
    emb: Embeddings = slide["emb"]
    c = slide["clicks"]
    x, y = (float(v) for v in c["Tumor"][0])
    pts = [SeedPoint(x, y, "Tumor"), SeedPoint(x + 1, y + 1, "Tumor: Positive")]
    pts += [SeedPoint(float(a), float(b), "Tumor") for a, b in c["Tumor"][1:]]
    pts += [SeedPoint(float(a), float(b), "Stroma") for a, b in c["Stroma"]]
    m = map_seeds(emb, pts)
    assert m.n_ignored == 0 and m.n_used == 13
    assert m.seeded_patches_per_class() == {"Stroma": 6, "Tumor": 6}
    mc = map_seeds(emb, pts, multiclass=True)
    assert [i.reason.split(":")[0] for i in mc.ignored] == ["conflicting classes"] * 2
    assert mc.class_names == ("Stroma", "Tumor")
