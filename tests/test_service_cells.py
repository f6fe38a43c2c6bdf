"""The compact Cluster answer (``include_cells``) on a real server, over gRPC and Connect JSON.

The tiles a client builds from ``cells`` + ``labels`` + ``confidence`` must be the tiles of the
"tiles" GeoJSON: same squares, classes and measurements, patch for patch.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import h5py
import numpy as np
import pytest
from test_service_support import connect_call, make_embedding, seeds_json

from histosic.api.v1 import clustering_pb2, clustering_pb2_grpc, common_pb2
from histosic.service import ServerConfig, create_server
from histosic.service.arrays import from_ndarray
from histosic.service.server import HistosicServer
from histosic.store import write_embeddings

SEEDS = [(300.0, 300.0, "Tumor"), (400.0, 2000.0, "Tumor"), (3500.0, 300.0, "Stroma")]


@dataclass
class Server:
    server: HistosicServer
    http_port: int
    clu: clustering_pb2_grpc.ClusteringServiceStub


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    store = tmp_path_factory.mktemp("cells")
    emb = make_embedding(store / "tmp.h5", grid=30)
    (store / "tmp.h5").unlink()
    # Tissue fractions that differ per patch, so that the measurement is really compared.
    emb.tissue_fraction = np.random.default_rng(1).uniform(0.3, 1.0, emb.n_patches).astype("f4")
    write_embeddings(store / "cells.h5", emb)
    make_embedding(store / "plain.h5", grid=10)
    with h5py.File(store / "plain.h5", "a") as f:
        del f["tissue_fraction"]  # as in a Trident file
    server, port = create_server("127.0.0.1:0", ServerConfig(store=store, slide_roots=(store,)))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Server(server, server.http_port, clustering_pb2_grpc.ClusteringServiceStub(channel))
    finally:
        channel.close()
        server.stop(grace=1.0)


def _json_array(msg: dict[str, Any]) -> np.ndarray[Any, Any]:
    data = base64.b64decode(msg.get("data", ""))
    dt = np.dtype(msg["dtype"]).newbyteorder("<")
    return np.frombuffer(data, dtype=dt).reshape([int(s) for s in msg["shape"]])


def _tiles_from_cells(
    names: list[str],
    labels: np.ndarray[Any, Any],
    conf: np.ndarray[Any, Any],
    origin: np.ndarray[Any, Any],
    size: float,
    seeded: np.ndarray[Any, Any],
    tissue: np.ndarray[Any, Any] | None,
) -> list[tuple[Any, ...]]:
    """What a client (the QuPath script) builds: one square per patch, class and measurements."""
    out = []
    for i in range(labels.size):
        x0, y0 = (round(float(v), 2) for v in origin[i])
        x1, y1 = round(float(origin[i, 0]) + size, 2), round(float(origin[i, 1]) + size, 2)
        m = {
            "histosic: confidence": round(float(conf[i]), 4),
            "histosic: seed": float(seeded[i]),
        }
        if tissue is not None:
            m["histosic: tissue fraction"] = round(float(tissue[i]), 4)
        out.append(((x0, y0, x1, y1), names[int(labels[i])], m))
    return out


def _tiles_from_geojson(text: str) -> list[tuple[Any, ...]]:
    out = []
    for f in json.loads(text)["features"]:
        if f["properties"]["objectType"] != "tile":
            continue
        ring = np.asarray(f["geometry"]["coordinates"][0])
        box = (ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max())
        props = f["properties"]
        out.append(
            (tuple(float(v) for v in box), props["classification"]["name"], props["measurements"])
        )
    return out


def test_cells_over_grpc_rebuild_the_geojson_tiles(srv: Server) -> None:
    resp = srv.clu.Cluster(
        clustering_pb2.ClusterRequest(
            embedding=common_pb2.EmbeddingRef(embedding_id="cells.h5"),
            seeds=[clustering_pb2.SeedPoint(x=x, y=y, class_name=c) for x, y, c in SEEDS],
            options=clustering_pb2.ClusterOptions(geojson="tiles", include_cells=True),
        ),
        timeout=60,
    )
    assert resp.HasField("cells")
    labels, conf = from_ndarray(resp.labels), from_ndarray(resp.confidence)
    origin, seeded = from_ndarray(resp.cells.origin), from_ndarray(resp.cells.seeded)
    assert origin.shape == (900, 2) and origin.dtype == np.float32
    assert resp.cells.size == 128.0
    assert seeded.dtype == np.uint8 and int(seeded.sum()) == len(SEEDS)
    built = _tiles_from_cells(
        list(resp.class_names),
        labels,
        conf,
        origin,
        resp.cells.size,
        seeded,
        from_ndarray(resp.cells.tissue_fraction),
    )
    assert built == _tiles_from_geojson(resp.geojson)


def test_cells_over_connect_json_rebuild_the_geojson_tiles(srv: Server) -> None:
    request = {
        "embedding": {"embeddingId": "cells.h5"},
        "seeds": seeds_json(SEEDS),
        "options": {"geojson": "tiles", "includeCells": True, "multiclass": True},
    }
    status, body = connect_call(srv.http_port, "ClusteringService", "Cluster", request)
    assert status == 200, body
    cells = body["cells"]
    built = _tiles_from_cells(
        body["classNames"],
        _json_array(body["labels"]),
        _json_array(body["confidence"]),
        _json_array(cells["origin"]),
        float(cells["size"]),
        _json_array(cells["seeded"]),
        _json_array(cells["tissueFraction"]),
    )
    assert built == _tiles_from_geojson(body["geojson"])


def test_cells_only_when_asked_and_far_smaller_than_geojson(srv: Server) -> None:
    base = {"embedding": {"embeddingId": "cells.h5"}, "seeds": seeds_json(SEEDS)}
    _, plain = connect_call(
        srv.http_port, "ClusteringService", "Cluster", {**base, "options": {"geojson": "none"}}
    )
    assert "cells" not in plain
    _, compact = connect_call(
        srv.http_port,
        "ClusteringService",
        "Cluster",
        {**base, "options": {"geojson": "none", "includeCells": True}},
    )
    _, full = connect_call(
        srv.http_port, "ClusteringService", "Cluster", {**base, "options": {"geojson": "tiles"}}
    )
    assert "geojson" not in compact and "cells" in compact
    assert len(json.dumps(compact)) * 10 < len(json.dumps(full))


def test_cells_without_tissue_fractions_leave_that_field_empty(srv: Server) -> None:
    resp = srv.clu.Cluster(
        clustering_pb2.ClusterRequest(
            embedding=common_pb2.EmbeddingRef(embedding_id="plain.h5"),
            seeds=[
                clustering_pb2.SeedPoint(x=200, y=200, class_name="Tumor"),
                clustering_pb2.SeedPoint(x=1200, y=1200, class_name="Stroma"),
            ],
            options=clustering_pb2.ClusterOptions(geojson="tiles", include_cells=True),
        ),
        timeout=60,
    )
    assert not resp.cells.HasField("tissue_fraction")
    built = _tiles_from_cells(
        list(resp.class_names),
        from_ndarray(resp.labels),
        from_ndarray(resp.confidence),
        from_ndarray(resp.cells.origin),
        resp.cells.size,
        from_ndarray(resp.cells.seeded),
        None,
    )
    assert len(built) == 100
    assert built == _tiles_from_geojson(resp.geojson)
