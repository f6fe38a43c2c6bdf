"""A bounded load test (issue 15): large and small Cluster calls mixed on one real server, over
gRPC and Connect. While large requests (40,000 seeds on 14,400 patches) run, small ones (four
seeds) keep answering: none waits behind a large one, and their median stays within a small
multiple of their median on an idle server (the figures are printed; run with ``-s``)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from test_service_support import connect_call, grpc_healthy, http_healthy, make_embedding

from histosic.api.v1 import clustering_pb2, clustering_pb2_grpc, common_pb2
from histosic.service import ServerConfig, create_server
from histosic.service.server import HistosicServer

pytestmark = pytest.mark.slow

SMALL = [(300.0, 300.0, "Tumor"), (400.0, 2000.0, "Tumor"), (4500.0, 300.0, "Stroma")]
BIG_GRID = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HistosicServer, int]]:
    store = tmp_path_factory.mktemp("load")
    make_embedding(store / "small.h5")
    make_embedding(store / "large.h5", grid=BIG_GRID, dim=256, fingerprint="sha256:L", seed=4)
    config = ServerConfig(store=store, slide_roots=(store,), devices=("cpu",), embed_workers=0)
    srv, port = create_server("127.0.0.1:0", config)
    srv.start()
    try:
        yield srv, port
    finally:
        srv.stop(grace=2.0)


def _large_points() -> list[tuple[float, float, str]]:
    out = []
    for i in range(40_000):
        col, row = i % BIG_GRID, (i // BIG_GRID) % BIG_GRID
        out.append((128.0 * col + 128, 128.0 * row + 128, "Tumor" if col < 60 else "Stroma"))
    return out


def _request(emb: str, points: list[tuple[float, float, str]]) -> clustering_pb2.ClusterRequest:
    return clustering_pb2.ClusterRequest(
        embedding=common_pb2.EmbeddingRef(embedding_id=emb),
        seeds=[clustering_pb2.SeedPoint(x=x, y=y, class_name=c) for x, y, c in points],
        options=clustering_pb2.ClusterOptions(geojson="none"),
    )


def _json(emb: str, points: list[tuple[float, float, str]]) -> dict[str, Any]:
    return {
        "embedding": {"embeddingId": emb},
        "seeds": [{"x": x, "y": y, "className": c} for x, y, c in points],
        "options": {"geojson": "none"},
    }


def test_small_calls_keep_their_latency_while_large_ones_run(
    server: tuple[HistosicServer, int],
) -> None:
    srv, port = server
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    stub = clustering_pb2_grpc.ClusteringServiceStub(channel)
    small = _request("small.h5", SMALL)
    small_json = _json("small.h5", SMALL)

    def small_call(i: int) -> float:
        t = time.perf_counter()
        if i % 2:
            stub.Cluster(small, timeout=60)
        else:
            status, body = connect_call(srv.http_port, "ClusteringService", "Cluster", small_json)
            assert status == 200, body
        return time.perf_counter() - t

    for i in range(4):  # warm: the embedding cache, imports
        small_call(i)
    idle = [small_call(i) for i in range(20)]

    points = _large_points()
    large, large_json = _request("large.h5", points), _json("large.h5", points)
    running = threading.Event()
    done = threading.Event()
    large_s: list[float] = []

    def large_calls() -> list[int]:
        counts = []
        running.set()
        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            g = pool.submit(stub.Cluster, large, timeout=600)
            c = pool.submit(
                connect_call,
                srv.http_port,
                "ClusteringService",
                "Cluster",
                large_json,
                timeout=600,
            )
            counts.append(list(g.result().class_counts))
            status, body = c.result()
            assert status == 200, body
            counts.append([int(v) for v in body["classCounts"]])
        large_s.append(time.perf_counter() - t)
        done.set()
        return [sum(cnt) for cnt in counts]

    busy: list[float] = []
    with ThreadPoolExecutor(1) as runner:
        future = runner.submit(large_calls)
        running.wait(30)
        i = 0
        with ThreadPoolExecutor(4) as clients:
            while not done.is_set():
                busy += list(clients.map(small_call, range(i, i + 4)))
                i += 4
        totals = future.result()
    assert totals == [BIG_GRID * BIG_GRID] * 2
    idle_median, busy_median = statistics.median(idle), statistics.median(busy)
    print(
        f"\nsmall Cluster calls: idle median {1000 * idle_median:.0f} ms; while two large calls "
        f"ran ({large_s[0]:.1f} s): median {1000 * busy_median:.0f} ms, max "
        f"{1000 * max(busy):.0f} ms over {len(busy)} calls"
    )
    assert len(busy) >= 8, "the large calls ended before the small ones could be measured"
    # None waited for a large call to end, and the typical one stayed within a few times idle.
    assert max(busy) < 0.5 * large_s[0]
    assert busy_median < max(10 * idle_median, 0.5)
    assert grpc_healthy(channel) and http_healthy(srv.http_port)
    channel.close()
