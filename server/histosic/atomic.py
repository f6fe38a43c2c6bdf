"""Atomic file output: every file histosic writes appears whole or not at all.

Output goes to a temporary file in the destination folder and is renamed over the destination with
``os.replace`` once complete, so a reader never sees half a file and an existing file is kept when
writing fails. :func:`write_atomic` takes bytes; :func:`atomic_output` hands a temporary path to
code that writes through a library (PIL, tifffile, torch, matplotlib).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from histosic.errors import InvalidInputError, OutputExistsError

__all__ = ["atomic_output", "check_output", "write_atomic", "write_text_atomic"]


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """``path`` as a Path, after checking it may be written.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False, or it is a folder.
    InvalidInputError
        The folder it would go in does not exist.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputExistsError(f"output {p} is a directory; give a file name")
    if p.exists() and not overwrite:
        raise OutputExistsError(
            f"output {p} exists; pass --overwrite (overwrite=True) to replace it"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInputError(f"output folder {parent} does not exist; create it first")
    return p


@contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, overwrite: bool = False, suffix: str = ".tmp"
) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed to ``path`` when the block ends without error.

    ``suffix`` is the temporary file's ending, for writers that choose the format by extension
    (``suffix=".png"``). On an error the temporary file is removed and ``path`` is left as it was.
    """
    p = check_output(path, overwrite=overwrite)
    parent = p.parent if str(p.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> Path:
    """Write bytes to ``path`` atomically (see the module docstring); returns the path.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, overwrite: bool = False) -> Path:
    """Write UTF-8 text to ``path`` atomically; returns the path."""
    return write_atomic(path, text.encode("utf-8"), overwrite=overwrite)
