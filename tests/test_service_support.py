"""Shared helpers for the service tests: synthetic slides and embeddings, real clients.

Not a test module of its own (it has no tests); the test_service* modules import it.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from histosic.api.v1 import clustering_pb2_grpc
from histosic.service import ServerConfig, create_server
from histosic.store import EmbeddingMeta, Embeddings, write_embeddings

__all__ = [
    "FINGERPRINT",
    "connect_call",
    "grpc_healthy",
    "http_healthy",
    "make_embedding",
    "make_slide",
]

FINGERPRINT = "sha256:0123456789abcdef0123456789abcdef"


def make_slide(path: Path, size: int = 1024, seed: int = 0) -> Path:
    """A plain RGB image that looks like H&E: a pink tissue disc (purple half) on white."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 245, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    c = size / 2
    tissue = (xx - c * 0.8) ** 2 + (yy - c) ** 2 < (size * 0.34) ** 2
    img[tissue] = (220, 150, 190)
    img[tissue & (xx < c * 0.8)] = (150, 60, 140)
    noise = rng.integers(-20, 20, img.shape)
    img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def make_embedding(
    path: Path,
    *,
    grid: int = 40,
    dim: int = 16,
    fingerprint: str = FINGERPRINT,
    model: str = "synthetic",
    slide_path: str = "/elsewhere/slide.svs",
    seed: int = 0,
) -> Embeddings:
    """A synthetic embedding file on a ``grid`` x ``grid`` patch grid; the left half differs in
    feature 0 (a separable 'tumour' region). Returns what was written."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(grid), np.arange(grid))
    stride = 128
    coords = np.stack([xs.ravel() * stride, ys.ravel() * stride], 1).astype(np.int64)
    left = (xs.ravel() < grid // 2).astype(np.float32)
    feats = rng.normal(size=(grid * grid, dim)).astype(np.float32)
    feats[:, 0] += 4.0 * left
    n = grid * grid
    meta = EmbeddingMeta(
        slide_path=slide_path,
        slide_fingerprint=fingerprint,
        level0_width=grid * stride + stride,
        level0_height=grid * stride + stride,
        mpp=0.5,
        target_mpp=0.5,
        patch_size=256,
        patch_size_level0=256,
        stride_level0=stride,
        overlap=0.5,
        model=model,
    )
    emb = Embeddings(feats, coords, meta, np.ones(n, np.float32), np.zeros(n, np.float32))
    write_embeddings(path, emb)
    return emb


def connect_call(
    port: int,
    service: str,
    method: str,
    body: Any,
    *,
    token: str | None = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 60.0,
) -> tuple[int, Any]:
    """POST a Connect unary call with urllib; returns (HTTP status, decoded JSON body)."""
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/histosic.v1.{service}/{method}", data=data, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, json.loads(text) if text else {}


def grpc_healthy(channel: grpc.Channel, service: str = "") -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def http_healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        return bool(json.loads(resp.read())["status"] == "SERVING")


def env_without_token() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HISTOSIC_TOKEN", None)
    return env


def seeds_json(points: Sequence[tuple[float, float, str]]) -> list[dict[str, Any]]:
    return [{"x": x, "y": y, "className": c} for x, y, c in points]


@contextmanager
def clustering_stub(store: Path) -> Iterator[clustering_pb2_grpc.ClusteringServiceStub]:
    """A real server on free ports over ``store`` (also its slide root), and a gRPC stub to it."""
    config = ServerConfig(store=store, slide_roots=(store,), http_address="127.0.0.1:0")
    srv, port = create_server("127.0.0.1:0", config)
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield clustering_pb2_grpc.ClusteringServiceStub(channel)
    finally:
        channel.close()
        srv.stop(grace=1.0)
