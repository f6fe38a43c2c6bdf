"""Fixed inputs of the GeoJSON encoder's byte-for-byte test (tests/test_outputs_geojson.py).

The expected files in ``tests/golden/`` were written by the encoder of ``histosic/qupath.py`` before
the re-layout (commit 0c1ecbc, ``to_geojson_bytes``) from exactly these inputs, with the random
feature ids replaced by ``id-<n>`` in order of appearance. The clustering is a stand-in object with
the attributes the encoder reads, so a change of the clustering does not move the expected bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt
from test_qupath_data import make_embeddings

from histosic.store import Embeddings

if TYPE_CHECKING:
    from histosic.cluster import SlideClustering

__all__ = ["CASES", "KINDS", "case_inputs", "normalise_ids"]

KINDS = ("tiles", "detections", "regions", "both")
#: name -> (class names, tissue fractions kept, suggest points)
CASES: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    "binary": (("Stroma", "Tumor"), True, True),
    "multiclass": (("Tumor", "Immune cells", "Tumor: Positive", "histosic: x"), True, True),
    "no-tissue-no-points": (("Stroma", "Tumor"), False, False),
}


@dataclass
class _Result:
    labels: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float64]
    seeds: npt.NDArray[np.int64]


@dataclass
class _Clustering:
    result: _Result
    class_names: tuple[str, ...]
    suggested: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))


def case_inputs(name: str) -> tuple[Embeddings, SlideClustering, bool]:
    """Embeddings, a stand-in clustering and ``suggest_points`` of one case."""
    class_names, tissue, suggest = CASES[name]
    emb, truth = make_embeddings(nx=12, ny=9, seed=3)
    if not tissue:
        emb.tissue_fraction = None
    n, k = emb.n_patches, len(class_names)
    rng = np.random.default_rng(7)
    labels = np.where(truth, 1, 0).astype(np.int64)
    if k > 2:
        labels[rng.random(n) < 0.3] = 2
        labels[: n // 7] = 3
    confidence = rng.uniform(0.0, 1.0, n)
    confidence[[3, 10, 11]] = [np.nan, np.inf, -np.inf]
    confidence[5] = 1 / 3  # a value with a long repr
    seeds = np.full(n, -1, np.int64)
    seeds[[1, 20, 40]] = labels[[1, 20, 40]]
    clustering = _Clustering(
        _Result(labels, confidence, seeds), class_names, np.array([7, 2, 30], np.int64)
    )
    return emb, cast("SlideClustering", clustering), suggest


_ID = re.compile(rb'"id":"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"')


def normalise_ids(data: bytes) -> bytes:
    """The GeoJSON bytes with each random UUID id replaced by ``id-<n>`` in order."""
    counter = iter(range(1 << 30))
    return _ID.sub(lambda m: b'"id":"id-%d"' % next(counter), data)
