"""The gRPC and Connect server: the only package that imports grpc and the generated code.

Servicers convert messages and delegate to the core; :mod:`.status` maps errors to status codes in
one place; :func:`create_server` starts both protocols in one process.
"""

from __future__ import annotations

from histosic.service.server import HistosicServer, ServerConfig, create_server

__all__ = ["HistosicServer", "ServerConfig", "create_server"]
