"""Bootstrap: one process serving gRPC and Connect over the same :class:`HistosicApi`.

``create_server(address, config)`` returns the server and its bound gRPC port (tests bind port 0);
``server.http_port`` is the Connect port. gRPC health checking and reflection are on, so
``grpcurl`` works without the protos.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from histosic.api.v1 import clustering_pb2, clustering_pb2_grpc, embedding_pb2
from histosic.catalog import EmbeddingCache, EmbeddingCatalog
from histosic.config import DEFAULT_SHUTDOWN_GRACE_S, MAX_PATCHES_PER_JOB
from histosic.errors import InvalidInputError
from histosic.service.api import HistosicApi
from histosic.service.calls import CallGuard
from histosic.service.connect_service import make_wsgi_app
from histosic.service.grpc_service import (
    ClusteringServicer,
    DecodeGuard,
    EmbeddingServicer,
    TokenInterceptor,
    add_embedding_servicer,
)
from histosic.service.https import HttpsServer
from histosic.service.jobs import EmbedFunction, JobManager
from histosic.service.paths import SlideResolver
from histosic.service.status import hide_paths

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
    max_patches_per_job: int = MAX_PATCHES_PER_JOB
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    tls_cert: Path | None = None
    tls_key: Path | None = None
    http_address: str | None = "127.0.0.1:0"  # None = no Connect server
    embed: EmbedFunction | None = field(default=None, repr=False)


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidInputError(f"address {address!r} must be HOST:PORT (e.g. 127.0.0.1:50051)")
    return host.strip("[]") or "127.0.0.1", int(port)


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InvalidInputError(
            f"cannot read the TLS {what} {path}: {err.strerror or err}; give a PEM file"
        ) from err


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
        hide_paths((self.catalog.store, *self.resolver.roots))  # client messages: relative paths
        self.jobs = JobManager(
            config.devices,
            workers=config.embed_workers,
            batch_size=config.batch_size,
            max_queue=config.max_queue,
            embed=config.embed,
        )
        self.api = HistosicApi(
            self.catalog,
            self.cache,
            self.resolver,
            self.jobs,
            max_patches_per_job=config.max_patches_per_job,
        )
        # The token first: an unauthenticated caller learns nothing, not even a decode error.
        interceptors: list[grpc.ServerInterceptor] = [DecodeGuard()]
        if config.token:
            interceptors.insert(0, TokenInterceptor(config.token))
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
        self.guard = CallGuard()
        clustering_pb2_grpc.add_ClusteringServiceServicer_to_server(
            ClusteringServicer(self.api, self.guard), self.grpc
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
                [(_read_pem(config.tls_key, "key"), _read_pem(config.tls_cert, "certificate"))]
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
        self._https: HttpsServer | None = None
        if config.http_address is not None:
            app = make_wsgi_app(
                self.api,
                token=config.token,
                read_max_bytes=config.max_request_bytes,
                guard=self.guard,
            )
            if config.tls_cert and config.tls_key:
                self._https = self._bind_https(app, config)
                self.http_port = self._https.port
            else:
                self._http = self._bind_http(app, config)
                self.http_port = int(self._http.effective_port)
        self._stopped = threading.Event()

    @property
    def http_scheme(self) -> str:
        """``https`` when the Connect port speaks TLS (``--tls-cert``), else ``http``."""
        return "https" if self._https is not None else "http"

    def _bind_https(self, app: Any, config: ServerConfig) -> HttpsServer:
        """The Connect port over HTTPS with the gRPC port's certificate (cheroot)."""
        assert config.http_address is not None and config.tls_cert and config.tls_key
        hhost, hport = _split(config.http_address)
        try:
            return HttpsServer(
                app,
                hhost,
                hport,
                cert=Path(config.tls_cert),
                key=Path(config.tls_key),
                threads=config.http_threads,
                max_body=2 * config.max_request_bytes,
            )
        except InvalidInputError:
            self.grpc.stop(None)
            raise

    def _bind_http(self, app: Any, config: ServerConfig) -> Any:
        """The Connect port over plain HTTP (waitress)."""
        from waitress.server import BaseWSGIServer
        from waitress.server import create_server as create_http_server

        assert config.http_address is not None
        hhost, hport = _split(config.http_address)
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
                # A readable channel while a request runs lets waitress notice a client
                # that closed its connection (environ["waitress.client_disconnected"]).
                channel_request_lookahead=1,
            )
        except OSError as err:
            self.grpc.stop(None)
            raise InvalidInputError(f"cannot bind HTTP to {config.http_address!r}: {err}") from err
        if not isinstance(server, BaseWSGIServer):  # one host name, one socket
            self.grpc.stop(None)
            raise InvalidInputError(f"HTTP address {config.http_address!r} gives several sockets")
        return server

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
        if self._https is not None:
            self._https.start()
        log.info(
            "serving gRPC on %s:%d%s",
            self.host,
            self.port,
            f", Connect ({self.http_scheme}) on port {self.http_port}" if self.http_port else "",
        )
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop within ``grace`` seconds (default: ``ServerConfig.shutdown_grace_s``).

        New calls are refused at once; running Cluster and Colors calls are ended (CANCELLED) and
        embedding jobs cancelled between batches (their partial files removed); both ports close.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        end = time.monotonic() + (self.config.shutdown_grace_s if grace is None else grace)

        def left() -> float:
            return max(0.0, end - time.monotonic())

        self.health.enter_graceful_shutdown()
        self.guard.stop()
        done = self.grpc.stop(left())
        self.jobs.shutdown(timeout=left())
        if self._http is not None:
            self._close_http(left())
        if self._https is not None:
            self._https.close(left())
        done.wait(left())
        log.info("server stopped")

    def _close_http(self, timeout: float) -> None:
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
        thread.join(max(timeout, 0.5))
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
