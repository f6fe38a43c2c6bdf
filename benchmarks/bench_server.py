"""Server overhead, measured side by side in one run.

Times are the best of ``--repeat`` runs, taken in turns.

1. ``Cluster`` on a cached 100k x 512 embedding: in process (``histosic.cluster.cluster_slide``
   and, for the GeoJSON variant, ``histosic.outputs.geojson.to_geojson_bytes``) vs over gRPC vs
   over Connect (JSON over HTTP/1.1). Target: server time <= 1.2 x in-process + 10 ms.
2. ``GetEmbedding`` of a 200 MB float32 matrix over loopback gRPC with the project's client
   (:func:`histosic.service.client.download_embedding`), and over Connect JSON (base64) for
   comparison. Target (gRPC): >= 1 GB/s.

Run: ``.venv/bin/python benchmarks/bench_server.py [--patches 100000 --dim 512 --repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import struct
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from histosic.api.v1 import (
    clustering_pb2,
    clustering_pb2_grpc,
    common_pb2,
)
from histosic.cluster import DEFAULT_METHOD, cluster_slide
from histosic.outputs.geojson import to_geojson_bytes
from histosic.seeds import SeedPoint
from histosic.service import ServerConfig, create_server
from histosic.service.client import download_embedding, open_channel
from histosic.store import EmbeddingMeta, Embeddings, write_embeddings


def make_store(store: Path, n: int, dim: int) -> tuple[Embeddings, list[SeedPoint]]:
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    stride = 128
    idx = np.arange(n)
    coords = np.stack([(idx % side) * stride, (idx // side) * stride], 1).astype(np.int64)
    region = (idx % side) < side // 2
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    feats[:, :8] += 1.5 * region[:, None]
    meta = EmbeddingMeta(
        slide_path="/bench/slide.svs",
        slide_fingerprint="sha256:bench",
        level0_width=side * stride + stride,
        level0_height=side * stride + stride,
        mpp=0.5,
        target_mpp=0.5,
        patch_size=256,
        patch_size_level0=256,
        stride_level0=stride,
        overlap=0.5,
        model="bench",
    )
    emb = Embeddings(feats, coords, meta, np.ones(n, np.float32), np.zeros(n, np.float32))
    write_embeddings(store / "bench.h5", emb)
    pts = []
    for k in range(20):  # 10 seeds in each half
        row = 5 + k * (side - 10) // 20
        pts.append(SeedPoint(float(5 * stride + 128), float(row * stride + 128), "Tumor"))
        pts.append(SeedPoint(float((side - 5) * stride + 128), float(row * stride + 128), "Stroma"))
    return emb, pts


def timed(fn: Callable[[], Any], repeat: int) -> float:
    return timed_side_by_side([fn], repeat)[0]


def timed_side_by_side(fns: list[Callable[[], Any]], repeat: int) -> list[float]:
    """Best wall time of each function over ``repeat`` runs, taken in turns so that load from other
    processes hits all alike (the minimum is the least noisy estimate on a shared machine, as
    ``timeit`` advises)."""
    for fn in fns:
        fn()  # warm-up: caches, imports, connections
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [min(ts) for ts in times]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--method", default=DEFAULT_METHOD, help="clustering method (default: %(default)s)"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="histosic-bench-") as tmp:
        store = Path(tmp)
        emb, pts = make_store(store, args.patches, args.dim)
        server, port = create_server("127.0.0.1:0", ServerConfig(store=store, cache_bytes=4 << 30))
        server.start()
        channel = open_channel(f"127.0.0.1:{port}")  # the project's client settings
        clu = clustering_pb2_grpc.ClusteringServiceStub(channel)
        ref = common_pb2.EmbeddingRef(embedding_id="bench.h5")
        seeds = [clustering_pb2.SeedPoint(x=p.x, y=p.y, class_name=p.class_name) for p in pts]
        print(
            f"embedding: {args.patches} x {args.dim} float32 "
            f"({emb.features.nbytes / 1e6:.0f} MB), {len(pts)} seeds"
        )
        print(
            f"{'variant':<10} {'in-process':>11} {'gRPC':>9} {'Connect':>9} "
            f"{'gRPC/in':>8} {'Conn/in':>8} {'target':>8}"
        )
        for geojson in ("none", "tiles"):
            method = args.method

            def in_process(geojson: str = geojson) -> None:
                sc = cluster_slide(emb, pts, method=args.method)
                if geojson != "none":
                    to_geojson_bytes(emb, sc, output=geojson).decode("utf-8")

            req = clustering_pb2.ClusterRequest(
                embedding=ref,
                seeds=seeds,
                options=clustering_pb2.ClusterOptions(method=method, geojson=geojson),
            )
            body = json.dumps(
                {
                    "embedding": {"embeddingId": "bench.h5"},
                    "seeds": [{"x": p.x, "y": p.y, "className": p.class_name} for p in pts],
                    "options": {"method": method, "geojson": geojson},
                }
            ).encode()

            def over_grpc(req: clustering_pb2.ClusterRequest = req) -> None:
                clu.Cluster(req, timeout=600)

            def over_connect(body: bytes = body) -> None:
                r = urllib.request.Request(
                    f"http://127.0.0.1:{server.http_port}/histosic.v1.ClusteringService/Cluster",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(r, timeout=600) as resp:
                    json.loads(resp.read())

            t_in, t_g, t_c = timed_side_by_side([in_process, over_grpc, over_connect], args.repeat)
            target = 1.2 * t_in + 0.010
            print(
                f"{'geojson=' + geojson:<10} {t_in:10.3f}s {t_g:8.3f}s {t_c:8.3f}s "
                f"{t_g / t_in:8.2f} {t_c / t_in:8.2f} {target:7.3f}s  "
                f"gRPC {'ok' if t_g <= target else 'MISS'}, "
                f"Connect {'ok' if t_c <= target else 'MISS'}"
            )

        # GetEmbedding throughput: 200 MB unless the matrix is smaller.
        nbytes = emb.features.nbytes

        dl_channel = open_channel(f"127.0.0.1:{port}")

        def download_grpc() -> None:
            got = download_embedding(dl_channel, ref)
            assert got.features.nbytes == nbytes

        payload = json.dumps({"embedding": {"embeddingId": "bench.h5"}}).encode()

        def download_connect() -> None:
            r = urllib.request.Request(
                f"http://127.0.0.1:{server.http_port}/histosic.v1.EmbeddingService/GetEmbedding",
                data=struct.pack(">BI", 0, len(payload)) + payload,
                headers={"Content-Type": "application/connect+json"},
            )
            # Binary protobuf would be faster; JSON (base64) is what curl and Groovy use.
            with urllib.request.urlopen(r, timeout=600) as resp:
                raw = resp.read()
            assert len(raw) > nbytes

        t_dl = timed(download_grpc, args.repeat)
        t_dc = timed(download_connect, args.repeat)
        print(
            f"GetEmbedding {nbytes / 1e6:.0f} MB: gRPC {t_dl:.3f}s = "
            f"{nbytes / t_dl / 1e9:.2f} GB/s "
            f"(target >= 1 GB/s: {'ok' if nbytes / t_dl >= 1e9 else 'MISS'}); "
            f"Connect JSON {t_dc:.3f}s = {nbytes / t_dc / 1e9:.2f} GB/s"
        )
        channel.close()
        dl_channel.close()
        server.stop(grace=1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
