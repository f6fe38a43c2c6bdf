"""``histosic serve``: the gRPC + Connect (JSON over HTTP) server for QuPath scripts and clients."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from histosic.service.jobs import EmbedFunction

from histosic.config import DEFAULT_SHUTDOWN_GRACE_S, MAX_PATCHES_PER_JOB

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve embedding and clustering over gRPC and Connect (JSON over HTTP)",
        description=(
            "Serve the histosic.v1 EmbeddingService and ClusteringService over gRPC and over the "
            "Connect protocol (JSON or protobuf over HTTP/1.1 POST, for QuPath scripts and curl) "
            "from one process. Slides are read only from --slide-root folders; embeddings are kept "
            "in --store. Binds to loopback by default."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (default: %(default)s)")
    p.add_argument(
        "--http-port",
        type=int,
        default=50052,
        help="Connect/HTTP port; -1 turns the HTTP server off (default: %(default)s)",
    )
    p.add_argument(
        "--store",
        type=Path,
        default=Path("embeddings"),
        metavar="DIR",
        help="folder of embedding files (created if missing; default: %(default)s)",
    )
    p.add_argument(
        "--slide-root",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="folder slides may be read from (repeatable); without one, no slide is readable",
    )
    p.add_argument(
        "--device",
        action="append",
        default=[],
        help="device for embedding jobs, repeatable for one job queue per device: auto, cpu, "
        "cuda, cuda:N, mps (default: auto)",
    )
    p.add_argument(
        "--embed-workers",
        type=int,
        default=None,
        metavar="N",
        help="patch-reading worker processes per embedding job (default: chosen per device)",
    )
    p.add_argument(
        "--batch-size", type=int, default=32, help="patches per forward pass (default: 32)"
    )
    p.add_argument(
        "--grpc-threads", type=int, default=16, help="gRPC worker threads (default: %(default)s)"
    )
    p.add_argument(
        "--http-threads", type=int, default=8, help="HTTP worker threads (default: %(default)s)"
    )
    p.add_argument(
        "--cache-mb",
        type=int,
        default=2048,
        help="memory for embeddings kept for Cluster calls, in MiB (default: %(default)s)",
    )
    p.add_argument(
        "--max-request-mb",
        type=int,
        default=16,
        help="largest request accepted, in MiB (default: %(default)s)",
    )
    p.add_argument(
        "--max-queue", type=int, default=64, help="embedding jobs that may wait (default: 64)"
    )
    p.add_argument(
        "--max-patches-per-job",
        type=int,
        default=MAX_PATCHES_PER_JOB,
        metavar="N",
        help="largest patch grid (before the tissue filter) a StartEmbedding may ask for; more "
        "is refused with RESOURCE_EXHAUSTED and the count (default: %(default)s)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=DEFAULT_SHUTDOWN_GRACE_S,
        metavar="SECONDS",
        help="on SIGTERM or Ctrl-C, stop within this many seconds: running Cluster calls and "
        "embedding jobs are ended (default: %(default)s)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="require 'authorization: Bearer TOKEN' on every call (default: $HISTOSIC_TOKEN; "
        "prefer the environment variable: command lines are visible to other users)",
    )
    p.add_argument(
        "--tls-cert", type=Path, default=None, help="PEM certificate: serve gRPC over TLS"
    )
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key for --tls-cert")
    from histosic.commands.embed_ray import add_ray_flags

    add_ray_flags(p, report=False)  # --ray: embedding jobs run on a Ray cluster (docs/RAY.md)
    p.set_defaults(func=run)


def _ray_embed(args: argparse.Namespace) -> EmbedFunction | None:
    """With --ray, jobs go to a Ray cluster (connected on the first job); else None."""
    if getattr(args, "ray", None) is None:
        return None
    from histosic.commands.embed_ray import ray_options
    from histosic.embed.ray_run import ray_embed_function

    return ray_embed_function(ray_options(args))


def run(args: argparse.Namespace) -> int:
    from histosic.config import current as current_settings
    from histosic.errors import InvalidInputError
    from histosic.service.server import ServerConfig, create_server, is_loopback

    for name in ("port", "http_port"):
        value = getattr(args, name)
        if not (0 <= value <= 65535 or (name == "http_port" and value == -1)):
            raise InvalidInputError(f"--{name.replace('_', '-')} must be in 0..65535, got {value}")
    for name in (
        "grpc_threads",
        "http_threads",
        "cache_mb",
        "max_request_mb",
        "max_queue",
        "batch_size",
        "max_patches_per_job",
    ):
        if getattr(args, name) < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be at least 1")
    if not (math.isfinite(args.shutdown_grace) and 0 <= args.shutdown_grace <= 3600):
        raise InvalidInputError(
            f"--shutdown-grace must be between 0 and 3600 seconds, got {args.shutdown_grace:g}"
        )
    token = args.token or current_settings().token
    host = args.host
    bracket = f"[{host}]" if ":" in host else host
    config = ServerConfig(
        store=args.store,
        slide_roots=tuple(args.slide_root),
        token=token,
        devices=tuple(args.device) or ("auto",),
        embed_workers=args.embed_workers,
        batch_size=args.batch_size,
        grpc_threads=args.grpc_threads,
        http_threads=args.http_threads,
        cache_bytes=args.cache_mb << 20,
        max_request_bytes=args.max_request_mb << 20,
        max_queue=args.max_queue,
        max_patches_per_job=args.max_patches_per_job,
        shutdown_grace_s=args.shutdown_grace,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        http_address=None if args.http_port == -1 else f"{bracket}:{args.http_port}",
        embed=_ray_embed(args),
    )
    if not is_loopback(host) and not token:
        print(
            f"histosic serve: warning: binding {host} without a token: anyone who can reach this "
            "machine can read slides under the slide roots and start jobs; set HISTOSIC_TOKEN or "
            "--token",
            file=sys.stderr,
        )
    if not args.slide_root:
        print(
            "histosic serve: note: no --slide-root: StartEmbedding and slide references are "
            "refused; clustering of embeddings in the store works",
            file=sys.stderr,
        )
    server, port = create_server(f"{bracket}:{args.port}", config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    http = (
        f", Connect on {server.http_scheme}://{bracket}:{server.http_port}"
        if server.http_port
        else ""
    )
    scheme = "grpcs" if args.tls_cert else "grpc"
    print(
        f"histosic serve: gRPC on {scheme}://{bracket}:{port}{http}; "
        f"store {config.store.resolve()}; "
        f"slide roots: {', '.join(str(r) for r in server.resolver.roots) or 'none'}"
        f"{'; token required' if token else ''}",
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    print(
        f"histosic serve: stopping within {args.shutdown_grace:g} s (running calls and jobs are "
        "ended)",
        flush=True,
    )
    server.stop(grace=args.shutdown_grace)
    return 0
