"""Slide references as QuPath gives them, resolved only inside the server's slide roots.

QuPath names an image by a ``file:`` URI (``file:/C:/slides/a.svs``, ``file:///data/a.svs``), and
users paste Windows or POSIX paths or paths relative to a root. Whatever the form, the result must
be a file inside one of the configured roots after resolving ``..`` and symbolic links; anything
else is refused with PERMISSION_DENIED before the file system is asked whether it exists, so the
server does not reveal which files exist outside its roots.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import unquote, urlparse

from histosic.errors import (
    InvalidInputError,
    PermissionDeniedError,
    SlideNotFoundError,
    check_name_lengths,
    shown,
)

__all__ = ["SlideResolver", "parse_slide_reference"]

log = logging.getLogger(__name__)

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_MAX_REFERENCE = 4096


def parse_slide_reference(ref: str) -> tuple[str, tuple[str, ...], bool]:
    """Split a slide reference into its flavour, path parts and whether it is absolute.

    Returns
    -------
    flavour : {'posix', 'windows'}
    parts : tuple of str
        Path components without the drive or root (``('data', 'a.svs')``).
    absolute : bool

    Raises
    ------
    InvalidInputError
        Empty, too long, NUL bytes, or a URI scheme other than ``file:``.
    """
    if not ref or not ref.strip():
        raise InvalidInputError("the slide reference is empty: give a path or file: URI of a slide")
    if len(ref) > _MAX_REFERENCE:
        raise InvalidInputError(f"the slide reference is {len(ref)} characters long (max 4096)")
    if "\x00" in ref:
        raise InvalidInputError(f"the slide reference {shown(ref)} contains a NUL character")
    text = ref.strip()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", text) and not _WINDOWS_DRIVE.match(text):
        url = urlparse(text)
        if url.scheme.lower() != "file":
            raise InvalidInputError(
                f"slide reference {shown(ref)} has the URI scheme {shown(url.scheme)}; only file: "
                "URIs and paths are accepted"
            )
        path = unquote(url.path)
        if url.netloc and url.netloc.lower() != "localhost":
            # file://server/share/a.svs: a UNC path on Windows.
            path = "\\\\" + url.netloc + path.replace("/", "\\")
        # file:/C:/x or file:///C:/x -> C:/x
        if re.match(r"^/[A-Za-z]:[\\/]", path):
            path = path[1:]
        text = path
    if _WINDOWS_DRIVE.match(text) or text.startswith("\\\\") or "\\" in text:
        win = PureWindowsPath(text)
        parts = tuple(p for p in win.parts if p not in (win.anchor,))
        check_name_lengths(f"slide reference {shown(ref)}", parts)
        return "windows", parts, bool(win.anchor)
    posix = PurePosixPath(text)
    parts = tuple(p for p in posix.parts if p != "/")
    check_name_lengths(f"slide reference {shown(ref)}", parts)
    return "posix", parts, posix.is_absolute()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class SlideResolver:
    """Resolve slide references to real files inside configured root folders.

    Parameters
    ----------
    roots : sequence of path-like
        The only folders slides are read from. Each is resolved (symlinks followed) once.
    """

    def __init__(self, roots: Sequence[str | os.PathLike[str]]) -> None:
        resolved = []
        for r in roots:
            p = Path(r).expanduser()
            if not p.is_dir():
                raise InvalidInputError(f"slide root {str(p)!r} is not a folder")
            resolved.append(p.resolve(strict=True))
        self.roots: tuple[Path, ...] = tuple(resolved)

    def _check_inside(self, ref: str, candidate: Path) -> Path:
        real = candidate.resolve(strict=False)
        for root in self.roots:
            if _inside(real, root):
                return real
        # The roots are not named: a client learns no absolute path of the server's.
        raise PermissionDeniedError(
            f"slide {shown(ref)} is outside the server's slide roots; give a path relative to a "
            "slide root (ask the server's operator which folders those are)"
        )

    def resolve(self, ref: str) -> Path:
        """The real path of the slide file that ``ref`` names.

        Raises
        ------
        InvalidInputError
            The reference is malformed.
        PermissionDeniedError
            It resolves outside every root (absolute elsewhere, ``..``, or a symlink out), or the
            server has no slide root.
        SlideNotFoundError
            It is inside a root but no such file exists.
        """
        flavour, parts, absolute = parse_slide_reference(ref)
        if not self.roots:
            raise PermissionDeniedError(
                f"slide {shown(ref)} cannot be read: the server was started without --slide-root, "
                "so it reads no slides (restart it with --slide-root DIR)"
            )
        if not parts:
            raise InvalidInputError(f"slide reference {shown(ref)} names no file")
        if flavour == "posix" and absolute:
            real = self._check_inside(ref, Path("/", *parts))
            if not real.is_file():
                raise SlideNotFoundError(f"slide {shown(ref)} {self._missing(real)} on the server")
            return real
        if ".." in parts:
            raise PermissionDeniedError(
                f"slide reference {shown(ref)} contains '..'; give a path inside a slide root"
            )
        if flavour == "windows" and absolute:
            # A client's Windows path cannot exist on this machine as written: find the longest
            # tail of it that exists under a root (C:\data\slides\a.svs -> <root>/slides/a.svs).
            for start in range(len(parts)):
                tail = parts[start:]
                for root in self.roots:
                    candidate = root.joinpath(*tail)
                    if candidate.is_file():
                        return self._check_inside(ref, candidate)
            raise SlideNotFoundError(
                f"slide {shown(ref)} was not found under the server's slide roots (looked for the "
                f"end of the path, down to {shown(parts[-1])})"
            )
        # Relative: under the first root that has it.
        what = "does not exist"
        for root in self.roots:
            candidate = root.joinpath(*parts)
            real = self._check_inside(ref, candidate)
            if real.is_file():
                return real
            if what == "does not exist":
                what = self._missing(real)
        raise SlideNotFoundError(f"slide {shown(ref)} {what} under the server's slide roots")

    @staticmethod
    def _missing(real: Path) -> str:
        """Why a path inside a root is no slide: missing, or a folder."""
        try:
            if real.is_dir():
                return "is a folder, not a slide file,"
        except OSError:
            pass
        return "does not exist"
