"""The project's exception hierarchy.

Every class also inherits the built-in exception that carries its meaning, so callers can catch
either (``except FileNotFoundError`` works for a missing slide). Messages name the offending value
and say what to do. The service layer maps these classes to gRPC/Connect status codes in one place.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_SHOWN",
    "CancelledError",
    "CorruptFileError",
    "DeadlineExceededError",
    "DiskFullError",
    "EmbeddingNotFoundError",
    "HistosicError",
    "InvalidInputError",
    "JobNotFoundError",
    "ModelUnavailableError",
    "NoTissueError",
    "OutputExistsError",
    "PermissionDeniedError",
    "PreconditionError",
    "ResourceExhaustedError",
    "SlideNotFoundError",
    "UnauthenticatedError",
    "UnknownModelError",
    "UnknownResolutionError",
    "check_name_lengths",
    "shown",
    "shown_list",
]

#: The most characters of a user's value that a message repeats (a 200 KB class name would
#: otherwise come back whole, and over gRPC overflow the trailers that carry the message).
MAX_SHOWN = 80


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters of a long string or bytes value
    with its length said: ``'TTTT...' (200000 characters)``."""
    if isinstance(value, str | bytes) and len(value) > limit:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    text = repr(value)
    return text if len(text) <= 2 * limit else f"{text[:limit]}... ({len(text)} characters)"


#: The longest file or folder name most file systems allow, in bytes of UTF-8 (NAME_MAX).
MAX_NAME_BYTES = 255


def check_name_lengths(what: str, parts: Iterable[str]) -> None:
    """Refuse a path whose file or folder names are longer than :data:`MAX_NAME_BYTES` (the
    file system would fail with ``File name too long``).

    Raises
    ------
    InvalidInputError
        ``what`` names the path in the message (already shortened by the caller).
    """
    for part in parts:
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise InvalidInputError(
                f"{what} has a file or folder name of {size} bytes; names are at most "
                f"{MAX_NAME_BYTES} bytes"
            )


def shown_list(values: Iterable[object], limit: int = 10) -> str:
    """A list of values for a message: at most ``limit`` of them, each :func:`shown`."""
    items = list(values)
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return "[" + ", ".join(shown(v) for v in items[:limit]) + more + "]"


class HistosicError(Exception):
    """Base class of every error histosic raises on purpose."""


class InvalidInputError(HistosicError, ValueError):
    """An argument or input file has a wrong value, shape or content."""


class NoTissueError(InvalidInputError):
    """Tissue detection found no patch that passes the tissue threshold."""


class UnknownResolutionError(InvalidInputError):
    """The slide's resolution (microns per pixel) is unknown and was not given."""


class UnknownModelError(InvalidInputError, KeyError):
    """A model name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CorruptFileError(InvalidInputError):
    """A file exists but is not what it should be (truncated, not ours, unreadable tiles)."""


class SlideNotFoundError(HistosicError, FileNotFoundError):
    """A slide file does not exist."""


class EmbeddingNotFoundError(HistosicError, FileNotFoundError):
    """No embedding file matches the reference."""


class ProjectNotFoundError(HistosicError, FileNotFoundError):
    """A QuPath project that does not exist."""


class PermissionDeniedError(HistosicError, PermissionError):
    """A path resolves outside the configured roots, or a token is missing or wrong."""


class UnauthenticatedError(PermissionDeniedError):
    """The bearer token is missing or wrong (UNAUTHENTICATED rather than PERMISSION_DENIED)."""


class JobNotFoundError(HistosicError, LookupError):
    """No embedding job has the given id on this server."""


class OutputExistsError(HistosicError, FileExistsError):
    """An output path exists and overwriting was not asked for."""


class ModelUnavailableError(HistosicError, RuntimeError):
    """A known model whose weights or libraries cannot be had right now (e.g. offline)."""


class PreconditionError(HistosicError, RuntimeError):
    """The operation is valid but the system is not in a state to run it (e.g. job not finished)."""


class ResourceExhaustedError(HistosicError, RuntimeError):
    """A size or capacity limit was reached (message too large, queue full)."""


class DiskFullError(ResourceExhaustedError):
    """The disk holding an output has no room left for it (``No space left on device``)."""


class DeadlineExceededError(HistosicError, TimeoutError):
    """The caller's deadline passed before the work was done (the work was stopped)."""


class CancelledError(HistosicError, RuntimeError):
    """The operation was cancelled on request."""
