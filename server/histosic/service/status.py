"""The one place that maps exceptions to RPC status codes, for gRPC and Connect alike.

Servicers raise :mod:`histosic.errors` classes (or let the core raise them); the protocol adapters
call :func:`status_of` and turn the result into a gRPC status or a Connect error. Anything that is
not a :class:`~histosic.errors.HistosicError` is a bug: it becomes INTERNAL with a generic message,
and its traceback is logged, never sent to the client.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from histosic.errors import (
    CancelledError,
    DeadlineExceededError,
    EmbeddingNotFoundError,
    HistosicError,
    InvalidInputError,
    JobNotFoundError,
    ModelUnavailableError,
    OutputExistsError,
    PermissionDeniedError,
    PreconditionError,
    ProjectNotFoundError,
    ResourceExhaustedError,
    SlideNotFoundError,
    UnauthenticatedError,
)

__all__ = [
    "MAX_MESSAGE",
    "JobNotFoundError",
    "RpcStatus",
    "UnauthenticatedError",
    "hide_paths",
    "status_of",
]

log = logging.getLogger(__name__)

#: The longest message a client gets (characters). Messages quote user values shortened already
#: (:func:`histosic.errors.shown`); this cut is the last guard, far below gRPC's 16 KiB limit on
#: the trailers that carry a status message.
MAX_MESSAGE = 1000


#: Absolute server folders (slide roots, the store), each ending in a separator: a path under one
#: is shown relative to it.
_HIDDEN: set[str] = set()


def hide_paths(folders: Iterable[str | os.PathLike[str]]) -> None:
    """Show paths under these folders relative to them in every client message (a client has
    no use for the server's absolute paths, and should not learn them)."""
    for folder in folders:
        for form in {os.path.abspath(folder), os.path.realpath(folder)}:
            _HIDDEN.add(form.rstrip(os.sep) + os.sep)


def _bounded(message: str) -> str:
    """One line of at most :data:`MAX_MESSAGE` characters, server folders left out."""
    for prefix in sorted(_HIDDEN, key=len, reverse=True):
        message = message.replace(prefix, "")
    line = " ".join(message.split())
    if len(line) <= MAX_MESSAGE:
        return line
    return line[: MAX_MESSAGE - 40] + f"... (message cut, {len(line)} characters)"


@dataclass(frozen=True)
class RpcStatus:
    """A status code name shared by gRPC and Connect (``grpc.StatusCode`` names) and a message."""

    code: str
    message: str


# Most specific first: the first class an exception is an instance of decides its code.
_TABLE: tuple[tuple[type[BaseException], str], ...] = (
    (UnauthenticatedError, "UNAUTHENTICATED"),
    (PermissionDeniedError, "PERMISSION_DENIED"),
    (CancelledError, "CANCELLED"),
    (DeadlineExceededError, "DEADLINE_EXCEEDED"),
    (ResourceExhaustedError, "RESOURCE_EXHAUSTED"),
    (PreconditionError, "FAILED_PRECONDITION"),
    (ModelUnavailableError, "FAILED_PRECONDITION"),
    (OutputExistsError, "ALREADY_EXISTS"),
    (SlideNotFoundError, "NOT_FOUND"),
    (ProjectNotFoundError, "NOT_FOUND"),
    (EmbeddingNotFoundError, "NOT_FOUND"),
    (JobNotFoundError, "NOT_FOUND"),
    (InvalidInputError, "INVALID_ARGUMENT"),
)


def status_of(exc: BaseException, *, rpc: str = "") -> RpcStatus:
    """The status code and client-facing message for an exception raised while serving ``rpc``.

    Unexpected exceptions are logged here with their traceback and answered as INTERNAL.
    """
    for cls, code in _TABLE:
        if isinstance(exc, cls):
            return RpcStatus(code, _bounded(str(exc) or cls.__name__))
    if isinstance(exc, HistosicError):
        log.error("%s: unmapped %s: %s", rpc or "rpc", type(exc).__name__, exc, exc_info=exc)
        return RpcStatus("INTERNAL", _bounded(f"{type(exc).__name__}: {exc}"))
    log.error("%s: internal error", rpc or "rpc", exc_info=exc)
    return RpcStatus(
        "INTERNAL",
        f"internal server error ({type(exc).__name__}) in {rpc or 'the request'}; the server log "
        "has the traceback",
    )
