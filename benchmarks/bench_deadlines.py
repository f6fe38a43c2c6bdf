"""How soon a Cluster call's work ends after its deadline, over gRPC and Connect.

A real server on free ports over a synthetic embedding; each call asks the paper's SIC (whose time
is spent in short numpy calls) with a deadline shorter than the full run, and the time from the
deadline to the moment the server's guard has no call left is measured. The full run without a
deadline is timed once, side by side.

    PYTHONPATH=server .venv/bin/python benchmarks/bench_deadlines.py --grid 500 --deadlines 0.5 2
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_service_support import make_embedding, seeds_json

from histosic.api.v1 import clustering_pb2, clustering_pb2_grpc, common_pb2
from histosic.service import ServerConfig, create_server
from histosic.service.server import HistosicServer


def _seeds(grid: int) -> list[tuple[float, float, str]]:
    far = grid * 128.0 - 1000.0
    return [(300.0, 300.0, "Tumor"), (400.0, far / 3, "Tumor"), (far, 300.0, "Stroma")] + [
        (far, far, "Stroma")
    ]


def _wait_idle(server: HistosicServer) -> float:
    start = time.monotonic()
    while server.guard.in_flight():
        time.sleep(0.002)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=500, help="grid side: grid^2 patches")
    parser.add_argument("--deadlines", type=float, nargs="+", default=[0.5, 2.0])
    args = parser.parse_args()
    seeds = _seeds(args.grid)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        make_embedding(store / "e.h5", grid=args.grid, dim=64)
        server, port = create_server("127.0.0.1:0", ServerConfig(store=store, devices=("cpu",)))
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = clustering_pb2_grpc.ClusteringServiceStub(channel)
        request = clustering_pb2.ClusterRequest(
            embedding=common_pb2.EmbeddingRef(embedding_id="e.h5"),
            seeds=[clustering_pb2.SeedPoint(x=x, y=y, class_name=c) for x, y, c in seeds],
            options=clustering_pb2.ClusterOptions(method="sic", geojson="none"),
        )
        body = json.dumps(
            {
                "embedding": {"embeddingId": "e.h5"},
                "seeds": seeds_json(seeds),
                "options": {"method": "sic", "geojson": "none"},
            }
        )
        t = time.monotonic()
        stub.Cluster(request, timeout=600)
        full = time.monotonic() - t
        print(f"{args.grid**2} patches x 64, SIC in full: {full:.2f} s")
        after: dict[str, float] = {}
        for d in args.deadlines:
            if d >= 0.5 * full:  # the call would end (nearly) on its own: nothing to measure
                print(f"deadline {d:g} s: skipped, the whole call takes only {full:.2f} s")
                continue
            t = time.monotonic()
            try:
                stub.Cluster(request, timeout=d)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
            late = time.monotonic() - t + _wait_idle(server) - d
            after[f"grpc_{d:g}s"] = round(late, 3)
            t = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=600)
            conn.request(
                "POST",
                "/histosic.v1.ClusteringService/Cluster",
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Connect-Timeout-Ms": str(int(d * 1e3)),
                },
            )
            resp = conn.getresponse()
            code = json.loads(resp.read()).get("code")
            conn.close()
            assert code == "deadline_exceeded", code
            late = time.monotonic() - t + _wait_idle(server) - d
            after[f"connect_{d:g}s"] = round(late, 3)
            print(
                f"deadline {d:g} s: work ended {after[f'grpc_{d:g}s']:.3f} s (gRPC), "
                f"{after[f'connect_{d:g}s']:.3f} s (Connect) after it"
            )
        channel.close()
        server.stop(grace=2.0)
    result = {
        "benchmark": "deadlines",
        "target": "a Cluster's work ends within 0.5 s of its deadline, over gRPC and Connect",
        "measured": {"full_run_s": round(full, 2), "seconds_after_deadline": after},
        "holds": bool(after) and all(v <= 0.5 for v in after.values()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
