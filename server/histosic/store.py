"""HDF5 embedding store: one file per (slide, model, tiling); atomic, resumable, Trident-readable.

Layout (DESIGN.md section 4)::

    /features          (n_patches, dim) float32 or float16
    /coords            (n_patches, 2) int64, level-0 top-left x, y
    /tissue_fraction   (n_patches,) float32, fraction of the patch on tissue
    /white_fraction    (n_patches,) float32, fraction of near-white (background) pixels
    attrs on / and on /coords: patch_size, patch_size_level0, level0_magnification,
        target_magnification, overlap (Trident/CLAM readers look on /coords), plus histosic's own
        metadata on / (see :class:`EmbeddingMeta`).

Files are written under a temporary name (``<name>.partial``) and renamed when complete, so a file
with the final name is always whole. :class:`EmbeddingWriter` appends batches as they come and can
resume a killed run from its ``.partial`` file.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from histosic import __version__
from histosic.diskspace import reserve
from histosic.errors import (
    CorruptFileError,
    DiskFullError,
    EmbeddingNotFoundError,
    InvalidInputError,
)

__all__ = [
    "PARTIAL_SUFFIX",
    "EmbeddingMeta",
    "EmbeddingWriter",
    "Embeddings",
    "file_fingerprint",
    "partial_path",
    "read_embeddings",
    "read_meta",
    "unclosable_files",
    "write_embeddings",
]

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
FORMAT_NAME = "histosic-embeddings"
FORMAT_VERSION = 1
_FINGERPRINT_CHUNK = 1 << 20


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """A content fingerprint of a slide file that survives copying it to another machine.

    SHA-256 over the file size and its first and last MiB (reading a whole multi-GB slide would
    take too long), prefixed with ``sha256:``.
    """
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256()
    h.update(str(size).encode())
    with p.open("rb") as fh:
        h.update(fh.read(_FINGERPRINT_CHUNK))
        if size > 2 * _FINGERPRINT_CHUNK:
            fh.seek(size - _FINGERPRINT_CHUNK)
            h.update(fh.read(_FINGERPRINT_CHUNK))
        else:
            h.update(fh.read())
    return "sha256:" + h.hexdigest()[:32]


@dataclass(frozen=True)
class EmbeddingMeta:
    """What an embedding file says about how it was made.

    Sizes are in pixels; ``*_level0`` sizes are in level-0 (full resolution) pixels.
    """

    slide_path: str
    slide_fingerprint: str
    level0_width: int
    level0_height: int
    mpp: float  # level-0 microns per pixel
    target_mpp: float  # microns per pixel at which patches were cut
    patch_size: int  # patch side at target resolution
    patch_size_level0: int
    stride_level0: int
    overlap: float  # fraction, 0.5 = 50%
    model: str
    weights_hash: str = ""
    preprocessing: str = ""  # JSON: input size, mean, std
    tissue_method: str = ""
    tissue_threshold: float = 0.0
    histosic_version: str = __version__
    created: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def level0_magnification(self) -> float:
        """Objective power at level 0, from the convention 10 um/px / mpp (0.25 um/px = 40x)."""
        return 10.0 / self.mpp if self.mpp > 0 else 0.0

    @property
    def target_magnification(self) -> float:
        return 10.0 / self.target_mpp if self.target_mpp > 0 else 0.0

    def settings_key(self) -> dict[str, Any]:
        """The settings that make two embeddings of the same slide interchangeable."""
        return {
            "slide_fingerprint": self.slide_fingerprint,
            "model": self.model,
            "weights_hash": self.weights_hash,
            "mpp": round(self.mpp, 6),
            "target_mpp": round(self.target_mpp, 6),
            "patch_size": self.patch_size,
            "overlap": round(self.overlap, 6),
            "tissue_threshold": round(self.tissue_threshold, 6),
        }


@dataclass
class Embeddings:
    """Patch embeddings of one slide with their coordinates and per-patch tissue statistics."""

    features: npt.NDArray[np.floating[Any]]  # (n, dim)
    coords: npt.NDArray[np.int64]  # (n, 2) level-0 top-left x, y
    meta: EmbeddingMeta
    tissue_fraction: npt.NDArray[np.float32] | None = None  # (n,)
    white_fraction: npt.NDArray[np.float32] | None = None  # (n,)

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        if self.features.ndim != 2:
            raise InvalidInputError(
                f"features must be 2-D (n_patches, dim), got {self.features.shape}"
            )
        if self.coords.shape != (n, 2):
            raise InvalidInputError(f"coords must have shape ({n}, 2), got {self.coords.shape}")
        for name in ("tissue_fraction", "white_fraction"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (n,):
                raise InvalidInputError(f"{name} must have shape ({n},), got {arr.shape}")

    @property
    def n_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def centers(self) -> npt.NDArray[np.float64]:
        """Patch centres in level-0 pixels, (n, 2) x, y."""
        return self.coords.astype(np.float64) + self.meta.patch_size_level0 / 2.0

    def grid_index(self) -> npt.NDArray[np.int64]:
        """Integer (column, row) of each patch on the stride grid, (n, 2)."""
        stride = max(int(self.meta.stride_level0), 1)
        origin = self.coords.min(axis=0) if self.n_patches else np.zeros(2, np.int64)
        return np.rint((self.coords - origin) / stride).astype(np.int64)

    def nuisance(self) -> npt.NDArray[np.float64] | None:
        """Per-patch tissue and white fractions as an (n, 2) matrix, or None when unknown."""
        if self.tissue_fraction is None or self.white_fraction is None:
            return None
        return np.stack([self.tissue_fraction, self.white_fraction], axis=1).astype(np.float64)


def partial_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def _meta_attrs(meta: EmbeddingMeta) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for f in dataclasses.fields(meta):
        value = getattr(meta, f.name)
        if f.name == "extra":
            attrs["extra_json"] = json.dumps(dict(value), sort_keys=True)
        else:
            attrs[f.name] = value
    attrs["format"] = FORMAT_NAME
    attrs["format_version"] = FORMAT_VERSION
    return attrs


def _interop_attrs(meta: EmbeddingMeta) -> dict[str, Any]:
    """Attributes that Trident and CLAM readers look for (on /coords and on /)."""
    return {
        "patch_size": meta.patch_size,
        "patch_size_level0": meta.patch_size_level0,
        "level0_magnification": meta.level0_magnification,
        "target_magnification": meta.target_magnification,
        "overlap": int(round(meta.overlap * meta.patch_size)),  # Trident: overlap in pixels
        "overlap_fraction": meta.overlap,
        "patch_level": 0,
        "name": Path(meta.slide_path).stem,
        "level0_width": meta.level0_width,
        "level0_height": meta.level0_height,
        "mpp": meta.mpp,
    }


# Writers whose HDF5 file failed for want of space: HDF5 cannot close such a file (closing writes
# its metadata again, fails, and the library then crashes), so the object is kept, never closed.
_UNCLOSABLE: list[Any] = []


def unclosable_files() -> int:
    """How many HDF5 files of this process could not be written for want of space.

    HDF5 crashes when such a file is finalised (at interpreter exit too), so a process with any
    should end with ``os._exit`` after reporting its error; ``histosic`` (the CLI) does.
    """
    return len(_UNCLOSABLE)


def _is_disk_full(err: BaseException) -> bool:
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err)


def _disk_full(path: Path, needed: int) -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        f"No space left on device: {path.name} needs about {needed / 2**20:.1f} MiB in "
        f"{path.parent} ({free}); free some space or choose another --out"
    )


def _write_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        obj.attrs[key] = value


class EmbeddingWriter:
    """Append patch embeddings to a ``.partial`` HDF5 file, resumable, renamed when complete.

    Parameters
    ----------
    path : path-like
        Final file name. Data goes to ``path + '.partial'`` until :meth:`finish`.
    meta : EmbeddingMeta
        Written as attributes. On resume, the partial file's settings must match.
    coords : ndarray of shape (n_patches, 2)
        All patch coordinates, known up front from the patch grid.
    dim : int
        Embedding dimension.
    dtype : {'float32', 'float16'}, default 'float32'
    resume : bool, default True
        Continue a partial file with the same settings instead of starting over.

    Use as a context manager; leaving the block without :meth:`finish` keeps the partial file for a
    later resume (call :meth:`discard` to delete it instead).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: EmbeddingMeta,
        coords: npt.ArrayLike,
        dim: int,
        *,
        dtype: str = "float32",
        resume: bool = True,
    ) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.meta = meta
        self.coords = np.asarray(coords, dtype=np.int64)
        self.dim = int(dim)
        self.n_total = int(self.coords.shape[0])
        if self.coords.ndim != 2 or self.coords.shape[1] != 2:
            raise InvalidInputError(f"coords must have shape (n, 2), got {self.coords.shape}")
        if dtype not in ("float32", "float16"):
            raise InvalidInputError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self.dtype = dtype
        self.n_done = 0
        self._file: h5py.File | None = None
        self._handles: list[Any] = []
        self._open(resume)

    def _open(self, resume: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.partial.exists():
            try:
                f = h5py.File(self.partial, "r+")
                same = (
                    json.loads(str(f.attrs.get("settings_json", "null")))
                    == json.loads(json.dumps(self.meta.settings_key()))
                    and f["features"].shape == (self.n_total, self.dim)
                    and np.array_equal(f["coords"][()], self.coords)
                )
                if same:
                    self._file = f
                    self.n_done = int(f.attrs.get("n_done", 0))
                    self._reserve()
                    log.info(
                        "resuming %s at patch %d of %d", self.partial, self.n_done, self.n_total
                    )
                    return
                f.close()
                log.info("partial file %s has other settings; starting over", self.partial)
            except (OSError, KeyError, ValueError) as err:
                log.warning("partial file %s is unreadable (%s); starting over", self.partial, err)
        self.partial.unlink(missing_ok=True)
        try:
            f = h5py.File(self.partial, "w")
        except OSError as err:
            if not _is_disk_full(err):
                raise
            self.partial.unlink(missing_ok=True)
            raise _disk_full(self.partial, self.expected_bytes) from err
        chunk_rows = max(1, min(self.n_total, (1 << 20) // max(self.dim * 4, 1)))
        f.create_dataset(
            "features",
            shape=(self.n_total, self.dim),
            dtype=self.dtype,
            chunks=(chunk_rows, self.dim) if self.n_total else None,
        )
        coords = f.create_dataset("coords", data=self.coords)
        # Where Trident records the encoder of a feature file (and reads it back).
        _write_attrs(
            f["features"], {"encoder": self.meta.model, "name": Path(self.meta.slide_path).stem}
        )
        f.create_dataset("tissue_fraction", shape=(self.n_total,), dtype="float32")
        f.create_dataset("white_fraction", shape=(self.n_total,), dtype="float32")
        meta_attrs = _meta_attrs(self.meta)
        _write_attrs(f, meta_attrs)
        # Interop attributes go on / only where they do not shadow histosic's own (``overlap`` is
        # a fraction here but pixels for Trident); readers of Trident/CLAM files look on /coords.
        _write_attrs(f, {k: v for k, v in _interop_attrs(self.meta).items() if k not in meta_attrs})
        _write_attrs(coords, _interop_attrs(self.meta))
        f.attrs["settings_json"] = json.dumps(self.meta.settings_key(), sort_keys=True)
        f.attrs["n_done"] = 0
        f.flush()
        self._file = f
        self._reserve()

    @property
    def expected_bytes(self) -> int:
        """About the size of the finished file: the arrays, 2% for HDF5's indexes, 1 MiB more."""
        item = 2 if self.dtype == "float16" else 4
        arrays = self.n_total * (self.dim * item + 2 * 8 + 2 * 4)
        return int(arrays * 1.02) + (1 << 20)

    def _reserve(self) -> None:
        """Reserve the finished file's size on disk; a disk without room fails here, cleanly."""
        try:
            reserve(self.partial, self.expected_bytes)
        except OSError as err:
            if not _is_disk_full(err):
                raise
            self.discard()
            raise _disk_full(self.partial, self.expected_bytes) from err

    def _failed_write(self, err: BaseException) -> DiskFullError | None:
        """A disk-full error for ``err`` (and the file put beyond closing), or None."""
        if not _is_disk_full(err):
            return None
        if self._file is not None:
            _UNCLOSABLE.append(self._file)
            _UNCLOSABLE.extend(self._handles)
            self._file = None
        return _disk_full(self.partial, self.expected_bytes)

    def write(
        self,
        features: npt.ArrayLike,
        tissue_fraction: npt.ArrayLike,
        white_fraction: npt.ArrayLike,
    ) -> None:
        """Append the next batch of rows (in coordinate order) and record progress."""
        if self._file is None:
            raise RuntimeError("writer is closed")
        feats = np.asarray(features)
        b = feats.shape[0]
        start, stop = self.n_done, self.n_done + b
        if stop > self.n_total or feats.shape[1:] != (self.dim,):
            raise InvalidInputError(
                f"batch of shape {feats.shape} does not fit rows {start}:{stop} of "
                f"({self.n_total}, {self.dim})"
            )
        f = self._file
        # Dataset handles are held in a list so that none is freed while a write fails: HDF5
        # cannot free a handle of a file it failed to write (see _UNCLOSABLE).
        handles = self._handles = [f["features"], f["tissue_fraction"], f["white_fraction"]]
        try:
            handles[0][start:stop] = feats.astype(self.dtype, copy=False)
            handles[1][start:stop] = np.asarray(tissue_fraction, dtype=np.float32)
            handles[2][start:stop] = np.asarray(white_fraction, dtype=np.float32)
            f.attrs["n_done"] = stop
            f.flush()
        except (OSError, RuntimeError) as err:
            full = self._failed_write(err)
            if full is None:
                raise
            raise full from err
        self.n_done = stop

    def finish(self) -> Path:
        """Mark the file complete and rename it to its final name."""
        if self._file is None:
            raise RuntimeError("writer is closed")
        if self.n_done != self.n_total:
            raise RuntimeError(f"only {self.n_done} of {self.n_total} patches written")
        try:
            self._file.attrs["complete"] = True
            self._file.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            self._file.close()
        except (OSError, RuntimeError) as err:
            full = self._failed_write(err)
            if full is None:
                raise
            raise full from err
        self._file = None
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Close without finishing; the partial file stays for a resume."""
        self._handles = []
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """Close and delete the partial file."""
        self.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_embeddings(
    path: str | os.PathLike[str], emb: Embeddings, *, overwrite: bool = False
) -> Path:
    """Write a complete :class:`Embeddings` atomically (temporary file, then rename)."""
    p = Path(path)
    if p.exists() and not overwrite:
        from histosic.errors import OutputExistsError

        raise OutputExistsError(f"{p} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    n = emb.n_patches
    tissue = emb.tissue_fraction if emb.tissue_fraction is not None else np.ones(n, np.float32)
    white = emb.white_fraction if emb.white_fraction is not None else np.zeros(n, np.float32)
    dtype = "float16" if emb.features.dtype == np.float16 else "float32"
    w = EmbeddingWriter(p, emb.meta, emb.coords, emb.dim, dtype=dtype, resume=False)
    try:
        w.write(emb.features, tissue, white)
        return w.finish()
    except BaseException:
        w.discard()
        raise


def _attr(attrs: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = attrs.get(key, default)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _meta_from_attrs(
    root: Mapping[str, Any],
    coords_attrs: Mapping[str, Any],
    path: Path,
    features_attrs: Mapping[str, Any] | None = None,
    coords: npt.NDArray[Any] | None = None,
) -> EmbeddingMeta:
    if _attr(root, "format") == FORMAT_NAME:
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(EmbeddingMeta):
            if f.name == "extra":
                kwargs["extra"] = json.loads(_attr(root, "extra_json", "{}") or "{}")
            elif f.name in root:
                kwargs[f.name] = _attr(root, f.name)
        if "overlap_fraction" in root:
            # Files written before the fix above stored Trident's pixel overlap over the fraction.
            kwargs["overlap"] = float(_attr(root, "overlap_fraction"))
        return EmbeddingMeta(**kwargs)
    return _foreign_meta(root, coords_attrs, features_attrs or {}, coords, path)


def _stride_from_coords(coords: npt.NDArray[Any] | None) -> int:
    """The grid step of a patch file: the smallest positive gap between x on one row (0: none)."""
    if coords is None or len(coords) < 2:
        return 0
    xy = np.asarray(coords).reshape(-1, 2).astype(np.int64)
    order = np.lexsort((xy[:, 0], xy[:, 1]))
    xy = xy[order]
    same_row = xy[1:, 1] == xy[:-1, 1]
    gaps = (xy[1:, 0] - xy[:-1, 0])[same_row]
    gaps = gaps[gaps > 0]
    return int(gaps.min()) if gaps.size else 0


def _foreign_meta(
    root: Mapping[str, Any],
    coords_attrs: Mapping[str, Any],
    features_attrs: Mapping[str, Any],
    coords: npt.NDArray[Any] | None,
    path: Path,
) -> EmbeddingMeta:
    """What a Trident or CLAM file's attributes (and its coordinates) say.

    Trident: ``patch_size`` (target px), ``patch_size_level0``, ``level0_magnification``,
    ``target_magnification``, ``overlap`` (px) on /coords; ``encoder`` and ``name`` on /features.
    CLAM (``create_patches_fp.py``): ``patch_size`` and ``patch_level`` with ``downsample`` (the
    level's downsample per axis) and ``custom_downsample`` on /coords, so the level-0 side is
    ``patch_size * downsample * custom_downsample``; CLAM writes no overlap, so the step comes
    from the coordinates.
    """
    merged = {**dict(root), **dict(coords_attrs)}
    patch_size = int(_attr(merged, "patch_size", 256))
    level0_mag = float(_attr(merged, "level0_magnification", 0) or 0)
    target_mag = float(_attr(merged, "target_magnification", 0) or 0)
    patch_size_level0 = int(_attr(merged, "patch_size_level0", 0) or 0)
    source = "trident" if patch_size_level0 or "target_magnification" in merged else "clam"
    if not patch_size_level0:
        downsample = merged.get("downsample")
        factor = float(np.asarray(downsample).reshape(-1)[0]) if downsample is not None else 1.0
        factor *= float(_attr(merged, "custom_downsample", 1) or 1)
        patch_size_level0 = int(round(patch_size * factor))
    mpp = float(_attr(merged, "mpp", 0) or 0) or (10.0 / level0_mag if level0_mag else 0.0)
    target_mpp = 10.0 / target_mag if target_mag else mpp * patch_size_level0 / max(patch_size, 1)
    if "overlap" in merged:
        overlap_px = float(_attr(merged, "overlap", 0) or 0)
        overlap = overlap_px / patch_size if overlap_px >= 1 else overlap_px
        stride = max(1, int(round(patch_size_level0 * (1 - overlap))))
    else:
        stride = _stride_from_coords(coords) or patch_size_level0
        overlap = max(0.0, 1.0 - stride / max(patch_size_level0, 1))
    encoder = (
        _attr(features_attrs, "encoder", "")
        or _attr(merged, "encoder", "")
        or _attr(merged, "model", "")
        or "unknown"
    )
    name = _attr(merged, "name", "") or _attr(features_attrs, "name", "") or path.stem
    return EmbeddingMeta(
        slide_path=str(name),
        slide_fingerprint="",
        level0_width=int(_attr(merged, "level0_width", 0) or 0),
        level0_height=int(_attr(merged, "level0_height", 0) or 0),
        mpp=mpp,
        target_mpp=target_mpp,
        patch_size=patch_size,
        patch_size_level0=patch_size_level0,
        stride_level0=stride,
        overlap=overlap,
        model=str(encoder),
        extra={"source_format": source},
    )


def _open_h5(path: str | os.PathLike[str]) -> h5py.File:
    p = Path(path)
    if not p.exists():
        partial = partial_path(p)
        hint = (
            f" (an unfinished {partial.name} exists: the embedding run did not complete)"
            if partial.exists()
            else ""
        )
        raise EmbeddingNotFoundError(f"embedding file {p} does not exist{hint}")
    if p.is_dir():
        raise InvalidInputError(f"{p} is a folder, not an embedding file: give the .h5 file")
    try:
        return h5py.File(p, "r")
    except OSError as err:
        raise CorruptFileError(
            f"{p} is not a readable HDF5 embedding file ({_h5_reason(err)}); re-create it with "
            "`histosic embed`"
        ) from err


def _h5_reason(err: OSError) -> str:
    """The gist of an h5py error, in one line (HDF5's own text spans lines and fields)."""
    text = str(err)
    found = re.search(r"error message = '([^']*)'", text)
    if found:
        return found.group(1)
    return " ".join(text.split())[:200]


def read_meta(path: str | os.PathLike[str]) -> EmbeddingMeta:
    """Read only the metadata of an embedding file (fast; no feature matrix)."""
    with _open_h5(path) as f:
        if "coords" not in f:
            raise CorruptFileError(f"{path} has no 'coords' dataset: not an embedding file")
        foreign = _attr(f.attrs, "format") != FORMAT_NAME
        coords = f["coords"][()] if foreign else None
        feats = f["features"].attrs if "features" in f else None
        return _meta_from_attrs(f.attrs, f["coords"].attrs, Path(path), feats, coords)


def read_embeddings(path: str | os.PathLike[str], *, dtype: str | None = "float32") -> Embeddings:
    """Read an embedding file written by histosic, Trident or CLAM.

    Parameters
    ----------
    path : path-like
    dtype : str or None, default 'float32'
        Cast features to this dtype; None keeps the stored dtype.

    Raises
    ------
    EmbeddingNotFoundError
        The file does not exist.
    CorruptFileError
        The file is not HDF5, lacks ``features``/``coords``, or is an incomplete histosic file.
    """
    p = Path(path)
    with _open_h5(p) as f:
        if "features" not in f or "coords" not in f:
            raise CorruptFileError(
                f"{p} has no 'features' and 'coords' datasets: not an embedding file "
                "(expected histosic, Trident or CLAM layout)"
            )
        if _attr(f.attrs, "format") == FORMAT_NAME and not bool(_attr(f.attrs, "complete", False)):
            raise CorruptFileError(
                f"{p} is an incomplete embedding file; run `histosic embed` again"
            )
        try:
            features = f["features"][()]
            coords = f["coords"][()]
            tissue = f["tissue_fraction"][()] if "tissue_fraction" in f else None
            white = f["white_fraction"][()] if "white_fraction" in f else None
        except (OSError, KeyError) as err:
            raise CorruptFileError(f"{p} is truncated or damaged ({err}); re-create it") from err
        meta = _meta_from_attrs(f.attrs, f["coords"].attrs, p, f["features"].attrs, coords)
    # Trident stores (1, n, dim) in some versions.
    if features.ndim == 3 and features.shape[0] == 1:
        features = features[0]
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if features.ndim != 2 or coords.ndim != 2 or coords.shape[0] != features.shape[0]:
        raise CorruptFileError(
            f"{p}: features {features.shape} and coords {coords.shape} do not match"
        )
    if dtype is not None:
        features = features.astype(dtype, copy=False)
    return Embeddings(
        features=features,
        coords=coords.astype(np.int64, copy=False),
        meta=meta,
        tissue_fraction=None if tissue is None else tissue.astype(np.float32, copy=False),
        white_fraction=None if white is None else white.astype(np.float32, copy=False),
    )
