"""Bootstrap: one process serving gRPC and Connect over the same :class:`HistosicApi`.

``create_server(address, config)`` returns the server and its bound gRPC port (tests bind port 0);
``server.http_port`` is the Connect port. gRPC health checking and reflection are on, so
``grpcurl`` works without the protos.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from histosic.api.v1 import clustering_pb2, clustering_pb2_grpc, embedding_pb2
from histosic.catalog import EmbeddingCache, EmbeddingCatalog
from histosic.errors import InvalidInputError
from histosic.service.api import HistosicApi
from histosic.service.connect_service import make_wsgi_app
from histosic.service.grpc_service import (
    ClusteringServicer,
    EmbeddingServicer,
    TokenInterceptor,
    add_embedding_servicer,
)
from histosic.service.jobs import EmbedFunction, JobManager
from histosic.service.paths import SlideResolver

__all__ = ["HistosicServer", "ServerConfig", "create_server", "is_loopback"]

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
    clustering_pb2.DESCRIPTOR.services_by_name["ClusteringService"].full_name,
)


@dataclass
class ServerConfig:
    """Everything ``histosic serve`` can set.

    Message-size limits: requests are small (seed points, references), so 16 MiB refuses abuse
    early; responses carry per-patch arrays and GeoJSON for 100k+ patches, so 512 MiB.
    """

    store: Path
    slide_roots: tuple[Path, ...] = ()
    token: str | None = None
    devices: tuple[str, ...] = ("auto",)
    embed_workers: int | None = None
    batch_size: int = 32
    grpc_threads: int = 16
    http_threads: int = 8
    cache_bytes: int = 2 << 30
    max_request_bytes: int = 16 << 20
    max_response_bytes: int = 512 << 20
    max_queue: int = 64
    tls_cert: Path | None = None
    tls_key: Path | None = None
    http_address: str | None = "127.0.0.1:0"  # None = no Connect server
    embed: EmbedFunction | None = field(default=None, repr=False)


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidInputError(f"address {address!r} must be HOST:PORT (e.g. 127.0.0.1:50051)")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    """True for addresses that only this machine can reach."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HistosicServer:
    """The gRPC server, the Connect (waitress) server and the job manager of one process."""

    def __init__(self, address: str, config: ServerConfig) -> None:
        self.config = config
        self.catalog = EmbeddingCatalog(config.store)
        self.cache = EmbeddingCache(config.cache_bytes)
        self.resolver = SlideResolver(config.slide_roots)
        self.jobs = JobManager(
            config.devices,
            workers=config.embed_workers,
            batch_size=config.batch_size,
            max_queue=config.max_queue,
            embed=config.embed,
        )
        self.api = HistosicApi(self.catalog, self.cache, self.resolver, self.jobs)
        interceptors = [TokenInterceptor(config.token)] if config.token else []
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=config.grpc_threads, thread_name_prefix="histosic-grpc"
            ),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", config.max_request_bytes),
                ("grpc.max_send_message_length", config.max_response_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        add_embedding_servicer(EmbeddingServicer(self.api), self.grpc)
        clustering_pb2_grpc.add_ClusteringServiceServicer_to_server(
            ClusteringServicer(self.api), self.grpc
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        host, _ = _split(address)
        if config.tls_cert or config.tls_key:
            if not (config.tls_cert and config.tls_key):
                raise InvalidInputError("TLS needs both --tls-cert and --tls-key")
            creds = grpc.ssl_server_credentials(
                [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
            )
            self.port = self.grpc.add_secure_port(address, creds)
        else:
            self.port = self.grpc.add_insecure_port(address)
        if self.port == 0:
            raise InvalidInputError(f"cannot bind gRPC to {address!r} (in use or not an address)")
        self.host = host
        self._http: Any = None
        self._http_thread: threading.Thread | None = None
        self.http_port = 0
        if config.http_address is not None:
            from waitress.server import BaseWSGIServer
            from waitress.server import create_server as create_http_server

            hhost, hport = _split(config.http_address)
            app = make_wsgi_app(
                self.api, token=config.token, read_max_bytes=config.max_request_bytes
            )
            try:
                server = create_http_server(
                    app,
                    host=hhost,
                    port=hport,
                    threads=config.http_threads,
                    # Connect answers RESOURCE_EXHAUSTED above max_request_bytes; waitress cuts
                    # the connection only far above it, as a last guard.
                    max_request_body_size=2 * config.max_request_bytes,
                    # Keep large responses (the GeoJSON of 100k tiles is ~40 MB) in memory:
                    # waitress spools anything above 1 MB to a temporary file by default.
                    outbuf_overflow=64 << 20,
                    expose_tracebacks=False,
                    ident="histosic",
                    clear_untrusted_proxy_headers=True,
                )
            except OSError as err:
                self.grpc.stop(None)
                raise InvalidInputError(
                    f"cannot bind HTTP to {config.http_address!r}: {err}"
                ) from err
            if not isinstance(server, BaseWSGIServer):  # one host name, one socket
                raise InvalidInputError(
                    f"HTTP address {config.http_address!r} gives several sockets"
                )
            self._http = server
            self.http_port = int(server.effective_port)  # type: ignore[attr-defined]
        self._stopped = threading.Event()

    def start(self) -> HistosicServer:
        self.grpc.start()
        for name in (*SERVICE_NAMES, ""):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self._http is not None:
            self._http_thread = threading.Thread(
                target=self._http.run,
                name="histosic-http",
                daemon=True,
            )
            self._http_thread.start()
        log.info(
            "serving gRPC on %s:%d%s",
            self.host,
            self.port,
            f", Connect (HTTP) on port {self.http_port}" if self._http is not None else "",
        )
        return self

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting calls, cancel jobs (their partial files are removed), then stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.jobs.shutdown(timeout=grace if grace is not None else 30.0)
        done = self.grpc.stop(grace)
        if self._http is not None:
            self._close_http()
        done.wait(grace)
        log.info("server stopped")

    def _close_http(self) -> None:
        """Close the HTTP server from inside its own event loop.

        Closing its sockets from this thread while the loop sits in ``select()`` on them made the
        loop fail with ``OSError: Bad file descriptor`` now and then. The loop's trigger runs the
        close in the loop thread instead, and wakes it; with every channel closed the loop ends.
        """
        from waitress import wasyncore

        http, thread = self._http, self._http_thread
        if thread is None or not thread.is_alive():
            wasyncore.close_all(http._map)
            http.task_dispatcher.shutdown()
            return

        def close_all() -> None:
            wasyncore.close_all(http._map)

        http.trigger.pull_trigger(close_all)
        thread.join(5.0)
        http.task_dispatcher.shutdown()

    def wait(self) -> None:
        self._stopped.wait()

    def __enter__(self) -> HistosicServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)


def create_server(address: str, config: ServerConfig) -> tuple[HistosicServer, int]:
    """Build (not start) the server bound to ``address`` (``HOST:PORT``; port 0 = any free port).

    Returns the server and its bound gRPC port; ``server.http_port`` is the Connect port.
    """
    server = HistosicServer(address, config)
    return server, server.port
