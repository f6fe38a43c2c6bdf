"""The embedding store folder: find embeddings by id, slide path or slide fingerprint, and keep
recently used ones in memory (bounded by bytes) so repeated clustering does not reread files.
Used by the server and the paquo batch; no grpc here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from histosic.errors import (
    CorruptFileError,
    EmbeddingNotFoundError,
    InvalidInputError,
    PermissionDeniedError,
    check_name_lengths,
    shown,
)
from histosic.store import EmbeddingMeta, Embeddings, file_fingerprint, read_embeddings, read_meta

__all__ = ["EmbeddingCache", "EmbeddingCatalog", "StoredEmbedding"]

log = logging.getLogger(__name__)

_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class StoredEmbedding:
    """One complete embedding file in the store."""

    embedding_id: str  # path relative to the store, POSIX separators
    path: Path
    meta: EmbeddingMeta
    n_patches: int
    dim: int
    dtype: str
    file_size: int
    mtime_ns: int


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


class EmbeddingCatalog:
    """Index of the embedding files under ``store`` (rescanned on demand, metadata cached).

    Parameters
    ----------
    store : path-like
        The folder embeddings are written to and read from (created when missing).
    """

    def __init__(self, store: str | os.PathLike[str]) -> None:
        self.store = Path(store).expanduser()
        self.store.mkdir(parents=True, exist_ok=True)
        self.store = self.store.resolve()
        self._lock = threading.Lock()
        self._entries: dict[Path, tuple[tuple[int, int], StoredEmbedding | None]] = {}
        self._fingerprints: dict[Path, tuple[tuple[int, int], str]] = {}

    # -- slides -------------------------------------------------------------------------------
    def fingerprint(self, slide: Path) -> str:
        """The slide's content fingerprint, cached by modification time and size."""
        key = _stat_key(slide)
        with self._lock:
            hit = self._fingerprints.get(slide)
        if hit is not None and hit[0] == key:
            return hit[1]
        fp = file_fingerprint(slide)
        with self._lock:
            self._fingerprints[slide] = (key, fp)
        return fp

    # -- store --------------------------------------------------------------------------------
    def _load(self, path: Path) -> StoredEmbedding | None:
        try:
            key = _stat_key(path)
        except OSError:
            return None
        with self._lock:
            hit = self._entries.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        entry: StoredEmbedding | None
        try:
            import h5py  # the store's own dependency; shapes without reading the matrix

            meta = read_meta(path)
            with h5py.File(path, "r") as f:
                shape = f["features"].shape
                dtype = str(f["features"].dtype)
                complete = f.attrs.get("complete", True)
            if shape[0] == 1 and len(shape) == 3:  # Trident's (1, n, dim)
                shape = shape[1:]
            if not bool(complete):
                entry = None
            else:
                entry = StoredEmbedding(
                    embedding_id=path.relative_to(self.store).as_posix(),
                    path=path,
                    meta=meta,
                    n_patches=int(shape[0]),
                    dim=int(shape[1]),
                    dtype=dtype,
                    file_size=key[1],
                    mtime_ns=key[0],
                )
        except (OSError, KeyError, ValueError, IndexError, CorruptFileError) as err:
            log.warning("skipping %s in the store: %s", path, err)
            entry = None
        with self._lock:
            self._entries[path] = (key, entry)
        return entry

    def scan(self) -> list[StoredEmbedding]:
        """All complete embedding files in the store, sorted by id (``.partial`` files skipped)."""
        found = []
        for path in sorted(self.store.rglob("*")):
            if path.suffix in _SUFFIXES and path.is_file():
                entry = self._load(path)
                if entry is not None:
                    found.append(entry)
        return found

    def by_id(self, embedding_id: str) -> StoredEmbedding:
        """The embedding with this id (its path relative to the store)."""
        if not embedding_id or "\x00" in embedding_id:
            raise InvalidInputError(f"embedding id {shown(embedding_id)} is empty or malformed")
        rel = PurePosixPath(embedding_id.replace("\\", "/"))
        check_name_lengths(f"embedding id {shown(embedding_id)}", rel.parts)
        if rel.is_absolute() or ".." in rel.parts:
            raise PermissionDeniedError(
                f"embedding id {shown(embedding_id)} is not a name inside the store; use an id "
                "from ListEmbeddings"
            )
        path = (self.store / rel).resolve()
        if self.store not in path.parents:
            raise PermissionDeniedError(
                f"embedding id {shown(embedding_id)} points outside the store"
            )
        entry = self._load(path) if path.is_file() else None
        if entry is None:
            raise EmbeddingNotFoundError(
                f"no embedding {shown(embedding_id)} in the server's store; ListEmbeddings shows "
                "what there is, StartEmbedding makes one"
            )
        return entry

    def find(
        self, *, fingerprint: str = "", slide_path: str = "", model: str = ""
    ) -> list[StoredEmbedding]:
        """Embeddings of a slide, by fingerprint (preferred) or by the slide path they record;
        newest first."""
        out = []
        for e in self.scan():
            if model and e.meta.model != model:
                continue
            by_fingerprint = bool(fingerprint) and e.meta.slide_fingerprint == fingerprint
            by_path = not fingerprint and bool(slide_path) and e.meta.slide_path == slide_path
            if by_fingerprint or by_path:
                out.append(e)
        out.sort(key=lambda e: e.mtime_ns, reverse=True)
        return out

    def __iter__(self) -> Iterator[StoredEmbedding]:
        return iter(self.scan())


class EmbeddingCache:
    """Least-recently-used embeddings in memory, bounded by the bytes of their arrays.

    Concurrent requests for the same file read it once. An embedding larger than the whole budget
    is returned without being kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._items: OrderedDict[Path, tuple[int, Embeddings, int]] = OrderedDict()
        self._loading: dict[Path, threading.Lock] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _nbytes(emb: Embeddings) -> int:
        n = emb.features.nbytes + emb.coords.nbytes
        for arr in (emb.tissue_fraction, emb.white_fraction):
            if arr is not None:
                n += arr.nbytes
        return int(n)

    def get(self, entry: StoredEmbedding) -> Embeddings:
        """The embedding's arrays, from memory when the file has not changed."""
        path = entry.path
        with self._lock:
            hit = self._items.get(path)
            if hit is not None and hit[0] == entry.mtime_ns:
                self._items.move_to_end(path)
                self.hits += 1
                return hit[1]
            loader = self._loading.setdefault(path, threading.Lock())
        with loader:  # one reader per file; the others wait and then hit
            with self._lock:
                hit = self._items.get(path)
                if hit is not None and hit[0] == entry.mtime_ns:
                    self._items.move_to_end(path)
                    self.hits += 1
                    return hit[1]
            emb = read_embeddings(path)
            size = self._nbytes(emb)
            with self._lock:
                self.misses += 1
                old = self._items.pop(path, None)
                if old is not None:
                    self.bytes -= old[2]
                if size <= self.max_bytes:
                    self._items[path] = (entry.mtime_ns, emb, size)
                    self.bytes += size
                    while self.bytes > self.max_bytes and self._items:
                        _, (_, _, freed) = self._items.popitem(last=False)
                        self.bytes -= freed
                else:
                    log.info("%s (%d bytes) exceeds the cache budget; not kept", path, size)
                self._loading.pop(path, None)
            return emb
