"""gRPC adapters: servicers calling :class:`~histosic.service.api.HistosicApi`; bearer auth."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from histosic.api.v1 import (
    clustering_pb2,
    clustering_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
)
from histosic.service.api import HistosicApi
from histosic.service.calls import CallGuard
from histosic.service.status import status_of

__all__ = [
    "ClusteringServicer",
    "DecodeGuard",
    "EmbeddingServicer",
    "TokenInterceptor",
    "add_embedding_servicer",
]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")

# Open without a token: load balancers probe health, and reflection only describes the API.
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _unary(
    rpc: str,
    fn: Callable[[Req], Res],
    request: Req,
    context: grpc.ServicerContext,
    guard: CallGuard | None = None,
) -> Res:
    try:
        if guard is None:
            return fn(request)
        # The work ends with the call: at the client's deadline, or when the client is gone.
        return guard.run(
            rpc,
            lambda: fn(request),
            timeout=context.time_remaining(),
            gone=lambda: not context.is_active(),
        )
    except Exception as err:  # every error leaves through the one mapping
        st = status_of(err, rpc=rpc)
        context.abort(grpc.StatusCode[st.code], st.message)
        raise  # abort raises; this is never reached


def _stream(
    rpc: str, fn: Callable[[Req], Iterator[Res]], request: Req, context: grpc.ServicerContext
) -> Iterator[Res]:
    try:
        yield from fn(request)
    except Exception as err:
        st = status_of(err, rpc=rpc)
        context.abort(grpc.StatusCode[st.code], st.message)


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, api: HistosicApi) -> None:
        self.api = api

    def ListModels(
        self, request: embedding_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.ListModelsResponse:
        return _unary("ListModels", self.api.list_models, request, context)

    def StartEmbedding(
        self, request: embedding_pb2.StartEmbeddingRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.StartEmbeddingResponse:
        return _unary("StartEmbedding", self.api.start_embedding, request, context)

    def WatchJob(
        self, request: embedding_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[embedding_pb2.WatchJobResponse]:
        return _stream("WatchJob", self.api.watch_job, request, context)

    def GetJob(
        self, request: embedding_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.GetJobResponse:
        return _unary("GetJob", self.api.get_job, request, context)

    def CancelJob(
        self, request: embedding_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.CancelJobResponse:
        return _unary("CancelJob", self.api.cancel_job, request, context)

    def ListEmbeddings(
        self, request: embedding_pb2.ListEmbeddingsRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.ListEmbeddingsResponse:
        return _unary("ListEmbeddings", self.api.list_embeddings, request, context)

    def GetEmbedding(  # type: ignore[override]  # bytes: pre-serialized messages, see below
        self, request: embedding_pb2.GetEmbeddingRequest, context: grpc.ServicerContext
    ) -> Iterator[embedding_pb2.GetEmbeddingResponse | bytes]:
        # Chunks leave pre-serialized (service/wire.py); add_embedding_servicer lets them through.
        return _stream("GetEmbedding", self.api.get_embedding_wire, request, context)


def _serialize_or_pass(message: embedding_pb2.GetEmbeddingResponse | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


class _Registration:
    """Stands in for a grpc.Server to catch the generated code's method handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = dict(handlers)


def add_embedding_servicer(servicer: EmbeddingServicer, server: grpc.Server) -> None:
    """``add_EmbeddingServiceServicer_to_server``, with GetEmbedding's serializer passing the
    pre-serialized chunk messages through unchanged."""
    caught = _Registration()
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(servicer, caught)
    caught.handlers["GetEmbedding"] = grpc.unary_stream_rpc_method_handler(
        servicer.GetEmbedding,
        request_deserializer=embedding_pb2.GetEmbeddingRequest.FromString,
        response_serializer=_serialize_or_pass,
    )
    service = "histosic.v1.EmbeddingService"
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, caught.handlers),)
    )
    server.add_registered_method_handlers(service, caught.handlers)


class ClusteringServicer(clustering_pb2_grpc.ClusteringServiceServicer):
    """Cluster and Colors run under a :class:`CallGuard`: a deadline, a cancelled call or the
    server stopping ends the computation."""

    def __init__(self, api: HistosicApi, guard: CallGuard | None = None) -> None:
        self.api = api
        self.guard = guard if guard is not None else CallGuard()

    def Cluster(
        self, request: clustering_pb2.ClusterRequest, context: grpc.ServicerContext
    ) -> clustering_pb2.ClusterResponse:
        return _unary("Cluster", self.api.cluster, request, context, self.guard)

    def Colors(
        self, request: clustering_pb2.ColorsRequest, context: grpc.ServicerContext
    ) -> clustering_pb2.ColorsResponse:
        return _unary("Colors", self.api.colors, request, context, self.guard)


class _Undecodable:
    """What the guarded deserializer gives for bytes that are not the request message."""

    def __init__(self, size: int, reason: str) -> None:
        self.size, self.reason = size, reason


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as err:  # protobuf's DecodeError, or anything a parser raises
            return _Undecodable(len(data), " ".join(str(err).split())[:120] or type(err).__name__)

    return deserialize


def _refusing(behaviour: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Any:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request to {method} is not a valid protobuf message of its type "
                f"({request.size} bytes: {request.reason}); send the message the API defines",
            )
        return behaviour(request, context)

    return call


class DecodeGuard(grpc.ServerInterceptor):  # type: ignore[misc]
    """Answer request bytes that do not parse as INVALID_ARGUMENT (grpcio itself says INTERNAL
    "Exception deserializing request!"), before the servicer runs."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        parse = getattr(handler, "request_deserializer", None)
        if handler is None or parse is None or handler.request_streaming:
            return handler
        method = (handler_call_details.method or "").rsplit("/", 1)[-1]
        kind = "unary_stream" if handler.response_streaming else "unary_unary"
        return handler._replace(  # grpc's handlers are named tuples
            request_deserializer=_tolerant(parse),
            **{kind: _refusing(getattr(handler, kind), method)},
        )


def _deny(message: str) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(abort)


class TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Require ``authorization: Bearer <token>`` metadata on every RPC but health and reflection."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        if method.startswith(_OPEN_PREFIXES):
            return continuation(handler_call_details)
        given = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value if isinstance(value, str) else value.decode("latin-1")
        if not given:
            return _deny(
                "this server needs a token: send the metadata 'authorization: Bearer <token>'"
            )
        if not hmac.compare_digest(given.encode(), self._expected):
            log.warning("rejected a gRPC call to %s with a wrong token", method)
            return _deny("the bearer token is wrong")
        return continuation(handler_call_details)
