"""Deadlines and cancellation end the work, not only the wait (issue 15, item 4).

A real server on free ports; the long call is a real Cluster (the paper's SIC on a 360,000-patch
embedding, about 11 s here, its time spent in numpy calls of milliseconds each), ended by a gRPC
deadline, a cancelled gRPC call, ``Connect-Timeout-Ms``, a closed HTTP connection, or SIGTERM to
``histosic serve``. Each test checks that the work itself stopped (no call left in the server's
guard) well before it would have finished.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_service_process import ServeProcess
from test_service_support import grpc_healthy, http_healthy, make_embedding, seeds_json

from histosic.api.v1 import clustering_pb2, clustering_pb2_grpc, common_pb2
from histosic.service import ServerConfig, create_server
from histosic.service.server import HistosicServer

# The slow call: multi-class SIC with 8 classes of 4 seeds each on 360,000 patches of 64
# features, 5-6 s in process on a fast day here (binary SIC on them took 11 s on a slow day and
# 1 s on a fast one, too close to the deadlines below); the tests end it long before.
GRID = 600
DIM = 64
_XY = [(float(x), float(y)) for x, y in np.random.default_rng(0).uniform(0, 76000, (32, 2))]
SEEDS = [(x, y, f"Class {i % 8}") for i, (x, y) in enumerate(_XY)]
SMALL_SEEDS = [(100.0, 100.0, "Tumor"), (200.0, 1500.0, "Tumor"), (2400.0, 100.0, "Stroma")]


@dataclass
class Env:
    server: HistosicServer
    stub: clustering_pb2_grpc.ClusteringServiceStub
    channel: grpc.Channel
    http_port: int
    store: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("deadlines")
    make_embedding(store / "slow.h5", grid=GRID, dim=DIM)
    make_embedding(store / "small.h5", grid=20, dim=8, fingerprint="sha256:small")
    return store


@pytest.fixture(scope="module")
def env(store: Path) -> Iterator[Env]:
    server, port = create_server(
        "127.0.0.1:0", ServerConfig(store=store, slide_roots=(store,), devices=("cpu",))
    )
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Env(
            server,
            clustering_pb2_grpc.ClusteringServiceStub(channel),
            channel,
            server.http_port,
            store,
        )
    finally:
        channel.close()
        server.stop(grace=2.0)


def _slow_request() -> clustering_pb2.ClusterRequest:
    return clustering_pb2.ClusterRequest(
        embedding=common_pb2.EmbeddingRef(embedding_id="slow.h5"),
        seeds=[clustering_pb2.SeedPoint(x=x, y=y, class_name=c) for x, y, c in SEEDS],
        options=clustering_pb2.ClusterOptions(method="sic", geojson="none", multiclass=True),
    )


def _slow_json() -> bytes:
    body = {
        "embedding": {"embeddingId": "slow.h5"},
        "seeds": seeds_json(SEEDS),
        "options": {"method": "sic", "geojson": "none", "multiclass": True},
    }
    return json.dumps(body).encode()


def _work_ends(env: Env, within: float) -> float:
    """Seconds until no Cluster runs on the server; fails after ``within``."""
    start = time.monotonic()
    while env.server.guard.in_flight():
        assert time.monotonic() - start < within, "the Cluster kept running"
        time.sleep(0.02)
    return time.monotonic() - start


def _still_serves(env: Env) -> None:
    small = clustering_pb2.ClusterRequest(
        embedding=common_pb2.EmbeddingRef(embedding_id="small.h5"),
        seeds=[clustering_pb2.SeedPoint(x=x, y=y, class_name=c) for x, y, c in SMALL_SEEDS],
    )
    assert list(env.stub.Cluster(small, timeout=60).labels.shape) == [400]
    assert grpc_healthy(env.channel) and http_healthy(env.http_port)


def _started(env: Env, within: float = 30.0) -> None:
    start = time.monotonic()
    while not env.server.guard.in_flight():
        assert time.monotonic() - start < within, "the Cluster did not start"
        time.sleep(0.01)


def test_grpc_deadline_ends_the_work(env: Env) -> None:
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        env.stub.Cluster(_slow_request(), timeout=1.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _work_ends(env, within=3.0)
    assert time.monotonic() - start < 4.5
    _still_serves(env)


def test_grpc_cancelled_call_ends_the_work(env: Env) -> None:
    future = env.stub.Cluster.future(_slow_request())
    _started(env)
    time.sleep(0.5)
    future.cancel()
    _work_ends(env, within=3.0)
    _still_serves(env)


def test_connect_timeout_header_ends_the_work(env: Env) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.http_port, timeout=60)
    start = time.monotonic()
    conn.request(
        "POST",
        "/histosic.v1.ClusteringService/Cluster",
        body=_slow_json(),
        headers={"Content-Type": "application/json", "Connect-Timeout-Ms": "1500"},
    )
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert body["code"] == "deadline_exceeded", body
    assert "deadline passed" in body["message"]
    assert time.monotonic() - start < 4.5
    _work_ends(env, within=1.0)
    _still_serves(env)


def test_closed_http_connection_ends_the_work(env: Env) -> None:
    data = _slow_json()
    sock = socket.create_connection(("127.0.0.1", env.http_port), timeout=10)
    head = (
        "POST /histosic.v1.ClusteringService/Cluster HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    _started(env)
    time.sleep(0.5)
    sock.close()
    _work_ends(env, within=3.0)
    _still_serves(env)


@pytest.mark.slow
def test_sigterm_ends_a_running_cluster_within_the_grace(store: Path) -> None:
    # A short grace and an early signal: on a fast machine the slow call must still be running
    # when the grace ends, or it would (rightly) finish instead of being cancelled.
    server = ServeProcess(store, store, "--shutdown-grace", "1")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        future = clustering_pb2_grpc.ClusteringServiceStub(channel).Cluster.future(_slow_request())
        time.sleep(1.0)  # the embedding is read and SIC runs
        assert not future.done()
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        out, _ = server.proc.communicate(timeout=30)
        took = time.monotonic() - start
        assert server.proc.returncode == 0, out
        assert took < 1.0 + 2.0, f"stopped after {took:.1f} s, grace 1 s"
        err = future.exception(timeout=10)
        assert isinstance(err, grpc.RpcError)
        assert err.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        channel.close()
    finally:
        server.close()
