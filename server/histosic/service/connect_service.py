"""Connect adapters (JSON or binary protobuf over HTTP/1.1): servicers, bearer auth, the WSGI app.

Both services are mounted in one WSGI application; the JSON codec rejects unknown fields so a
misspelt option is an error instead of being silently dropped.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.compat import google_protobuf_binary_codec
from connectrpc.errors import ConnectError
from google.protobuf import json_format
from google.protobuf.message import Message

from histosic.api.v1 import (
    clustering_connect,
    clustering_pb2,
    embedding_connect,
    embedding_pb2,
)
from histosic.service.api import HistosicApi
from histosic.service.calls import CallGuard
from histosic.service.status import status_of

__all__ = ["CompactJSONCodec", "TokenCheck", "make_wsgi_app"]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")
M = TypeVar("M", bound=Message)

# grpc.StatusCode names -> Connect codes (Connect spells CANCELED with one L).
_CODES = {c.name: c for c in Code}
_CODES["CANCELLED"] = Code.CANCELED

_local = threading.local()  # the WSGI environ of the request this thread serves

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _error(rpc: str, err: Exception) -> ConnectError:
    st = status_of(err, rpc=rpc)
    return ConnectError(_CODES.get(st.code, Code.INTERNAL), st.message)


def _unary(rpc: str, fn: Callable[[Req], Res], request: Req) -> Res:
    try:
        return fn(request)
    except ConnectError:
        raise
    except Exception as err:
        raise _error(rpc, err) from err


def _stream(rpc: str, fn: Callable[[Req], Iterator[Res]], request: Req) -> Iterator[Res]:
    try:
        yield from fn(request)
    except ConnectError:
        raise
    except Exception as err:
        raise _error(rpc, err) from err


class CompactJSONCodec:
    """Connect's JSON codec for google.protobuf messages, compact and strict.

    The stock codec pretty-prints (``indent=2``) and ignores unknown fields; a Cluster answer holds
    tens of MB of GeoJSON, so compact output is measurably faster, and a misspelt field must be an
    INVALID_ARGUMENT rather than silently dropped.
    """

    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return json_format.MessageToJson(message, indent=None, ensure_ascii=False).encode()

    def decode(self, data: bytes | bytearray, message_class: type[M]) -> M:
        message = message_class()
        json_format.Parse(bytes(data), message, ignore_unknown_fields=False)
        return message


class _Embedding:
    def __init__(self, api: HistosicApi) -> None:
        self.api = api

    def list_models(
        self, request: embedding_pb2.ListModelsRequest, ctx: Any, /
    ) -> embedding_pb2.ListModelsResponse:
        return _unary("ListModels", self.api.list_models, request)

    def start_embedding(
        self, request: embedding_pb2.StartEmbeddingRequest, ctx: Any, /
    ) -> embedding_pb2.StartEmbeddingResponse:
        return _unary("StartEmbedding", self.api.start_embedding, request)

    def watch_job(
        self, request: embedding_pb2.WatchJobRequest, ctx: Any, /
    ) -> Iterator[embedding_pb2.WatchJobResponse]:
        return _stream("WatchJob", self.api.watch_job, request)

    def get_job(
        self, request: embedding_pb2.GetJobRequest, ctx: Any, /
    ) -> embedding_pb2.GetJobResponse:
        return _unary("GetJob", self.api.get_job, request)

    def cancel_job(
        self, request: embedding_pb2.CancelJobRequest, ctx: Any, /
    ) -> embedding_pb2.CancelJobResponse:
        return _unary("CancelJob", self.api.cancel_job, request)

    def list_embeddings(
        self, request: embedding_pb2.ListEmbeddingsRequest, ctx: Any, /
    ) -> embedding_pb2.ListEmbeddingsResponse:
        return _unary("ListEmbeddings", self.api.list_embeddings, request)

    def get_embedding(
        self, request: embedding_pb2.GetEmbeddingRequest, ctx: Any, /
    ) -> Iterator[embedding_pb2.GetEmbeddingResponse]:
        return _stream("GetEmbedding", self.api.get_embedding, request)


class _Clustering:
    """Cluster and Colors under the :class:`CallGuard`: ``Connect-Timeout-Ms`` is the deadline,
    and where the HTTP server can tell (waitress), a closed connection ends the work too."""

    def __init__(self, api: HistosicApi, guard: CallGuard) -> None:
        self.api = api
        self.guard = guard

    def _guarded(self, rpc: str, fn: Callable[[Req], Res], request: Req, ctx: Any) -> Res:
        remaining_ms = ctx.timeout_ms  # a property: milliseconds left, or None
        timeout = None if remaining_ms is None else remaining_ms / 1000.0
        environ = getattr(_local, "environ", None) or {}
        disconnected = environ.get("waitress.client_disconnected")
        return _unary(
            rpc,
            lambda r: self.guard.run(rpc, lambda: fn(r), timeout=timeout, gone=disconnected),
            request,
        )

    def cluster(
        self, request: clustering_pb2.ClusterRequest, ctx: Any, /
    ) -> clustering_pb2.ClusterResponse:
        return self._guarded("Cluster", self.api.cluster, request, ctx)

    def colors(
        self, request: clustering_pb2.ColorsRequest, ctx: Any, /
    ) -> clustering_pb2.ColorsResponse:
        return self._guarded("Colors", self.api.colors, request, ctx)


class TokenCheck:
    """Connect metadata interceptor: reject calls without ``Authorization: Bearer <token>``.

    It runs before the request body is read.
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def on_start_sync(self, ctx: Any, /) -> None:
        given = ctx.request_headers.get("authorization", "")
        if not given:
            raise ConnectError(
                Code.UNAUTHENTICATED,
                "this server needs a token: send the header 'Authorization: Bearer <token>'",
            )
        if not hmac.compare_digest(given.encode(), self._expected):
            log.warning("rejected a Connect call with a wrong token")
            raise ConnectError(Code.UNAUTHENTICATED, "the bearer token is wrong")

    def on_end_sync(self, token: Any, ctx: Any, error: Exception | None, /) -> None:
        return None


def make_wsgi_app(
    api: HistosicApi,
    *,
    token: str | None = None,
    read_max_bytes: int = 16 << 20,
    guard: CallGuard | None = None,
) -> WSGIApp:
    """One WSGI application serving both services with the Connect protocol.

    ``GET /healthz`` answers ``{"status": "SERVING"}`` without a token, for probes and curl.
    """
    codecs = [google_protobuf_binary_codec(), CompactJSONCodec()]
    interceptors = [TokenCheck(token)] if token else []
    apps: dict[str, WSGIApp] = {
        "/histosic.v1.EmbeddingService/": embedding_connect.EmbeddingServiceWSGIApplication(
            _Embedding(api), interceptors=interceptors, read_max_bytes=read_max_bytes, codecs=codecs
        ),
        "/histosic.v1.ClusteringService/": clustering_connect.ClusteringServiceWSGIApplication(
            _Clustering(api, guard if guard is not None else CallGuard()),
            interceptors=interceptors,
            read_max_bytes=read_max_bytes,
            codecs=codecs,
        ),
    }

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz" and environ.get("REQUEST_METHOD") == "GET":
            body = json.dumps({"status": "SERVING"}).encode()
            start_response(
                "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return [body]
        for prefix, sub in apps.items():
            if path.startswith(prefix):
                # The servicers run on this thread; they read the transport's hooks from here.
                _local.environ = environ
                try:
                    return sub(environ, start_response)
                finally:
                    _local.environ = None
        body = json.dumps(
            {"code": "unimplemented", "message": f"no RPC at {path!r}; see the histosic.v1 protos"}
        ).encode()
        start_response(
            "404 Not Found",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app
