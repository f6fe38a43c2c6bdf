"""The Connect port over HTTPS: cheroot's threaded WSGI server with Python's own TLS.

Used when ``histosic serve`` has ``--tls-cert``/``--tls-key``: the Connect port then speaks only
HTTPS, with the certificate of the gRPC port, so QuPath scripts, curl and ``histosic cluster
--server https://...`` reach it encrypted. cheroot (the CherryPy project's server, maintained,
pure Python, WSGI) was chosen over an ASGI server because the Connect application is WSGI:
the same app runs under waitress (plain HTTP) and here without an adapter. TLS 1.2 is the
oldest protocol accepted.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path
from typing import Any

from histosic.errors import InvalidInputError

__all__ = ["HttpsServer"]

log = logging.getLogger(__name__)


def _error_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    """cheroot's error log into ours; a client that leaves mid-handshake is not an error."""
    if "lost" in msg or "handshake" in msg:
        level = logging.DEBUG
    log.log(level, "https: %s", msg, exc_info=traceback)


class HttpsServer:
    """A bound (not yet serving) HTTPS server for a WSGI application.

    Parameters
    ----------
    app : WSGI application
    host, port : str, int
        Where to bind (port 0 = any free port; :attr:`port` is the bound one).
    cert, key : Path
        PEM certificate (chain) and private key, as for the gRPC port.
    threads : int
        Worker threads.
    max_body : int
        Largest request body in bytes; larger ones get HTTP 413.
    """

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        cert: Path,
        key: Path,
        threads: int,
        max_body: int,
    ) -> None:
        from cheroot import wsgi
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        try:
            adapter = BuiltinSSLAdapter(str(cert), str(key))
        except (OSError, ssl.SSLError) as err:
            raise InvalidInputError(
                f"cannot load the TLS certificate {cert} and key {key} for HTTPS: {err}"
            ) from err
        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server = wsgi.Server(
            (host, port), app, numthreads=threads, server_name="histosic", shutdown_timeout=2
        )
        self._server.ssl_adapter = adapter
        self._server.error_log = _error_log  # type: ignore[method-assign]
        self._server.max_request_body_size = max_body
        try:
            self._server.prepare()
        except OSError as err:
            raise InvalidInputError(f"cannot bind HTTPS to {host}:{port}: {err}") from err
        self.port = int(self._server.bind_addr[1])
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve, name="histosic-https", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Stop accepting, let running requests end (at most ``timeout`` s), close the socket."""
        self._server.shutdown_timeout = max(0.1, timeout)
        self._server.stop()
        if self._thread is not None:
            self._thread.join(max(0.5, timeout))
