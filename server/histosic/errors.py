"""The project's exception hierarchy.

Every class also inherits the built-in exception that carries its meaning, so callers can catch
either (``except FileNotFoundError`` works for a missing slide). Messages name the offending value
and say what to do. The service layer maps these classes to gRPC/Connect status codes in one place.
"""

from __future__ import annotations

__all__ = [
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
]


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
