"""Disk space reserved for a file before it is written, without changing the file's length."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["reserve"]


def reserve(path: Path, size: int) -> None:
    """Allocate ``size`` bytes of ``path`` on disk now, so that a disk that fills later cannot
    make HDF5 fail half-way (filesystems without ``fallocate`` are left as they are).

    Linux's ``fallocate`` with ``FALLOC_FL_KEEP_SIZE`` reserves the blocks without changing the
    file's length: the file stays exactly what HDF5 wrote, so a truncated copy is still seen as
    truncated (``posix_fallocate`` would pad it to ``size``).
    """
    fallocate = _libc_fallocate()
    if fallocate is None:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        if fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, size) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


_FALLOC_FL_KEEP_SIZE = 1


def _libc_fallocate() -> Any:
    """libc's ``fallocate(fd, mode, offset, len)``, or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn
