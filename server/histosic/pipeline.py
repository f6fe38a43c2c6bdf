"""One call from an embedding file's contents and seed points to a slide's clustering.

The CLI (``histosic cluster``), the gRPC/Connect server and the evaluation all call
:func:`cluster_slide`, so they apply the same seed mapping, preprocessing and method choice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from histosic.seeds import DEFAULT_POSITIVE, SeedMapping, SeedPoint, map_seeds
from histosic.store import Embeddings

if TYPE_CHECKING:
    from histosic.sic import ClusterResult, Preprocess

__all__ = ["SlideClustering", "cluster_slide"]

log = logging.getLogger(__name__)


@dataclass
class SlideClustering:
    """The clustering of one slide's patches from seed points.

    Attributes
    ----------
    result : histosic.sic.ClusterResult
        Labels (class ids), confidence, history and score from the SIC engine.
    class_names : tuple of str
        QuPath class name of each class id (index = id).
    mapping : SeedMapping
        Which points seeded which patches, and which were ignored with their reasons.
    suggested : ndarray of shape (n_suggested,), int64
        Patch indices where a new seed would help most (least certain, spread out).
    elapsed_s : float
        Wall time of seed mapping, clustering and suggestions, in seconds.
    """

    result: ClusterResult
    class_names: tuple[str, ...]
    mapping: SeedMapping
    suggested: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    elapsed_s: float = 0.0

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        return self.result.labels

    @property
    def confidence(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.result.confidence, dtype=np.float64)

    @property
    def positive_name(self) -> str | None:
        pos = self.result.positive
        return None if pos is None else self.class_names[pos]

    def label_names(self) -> list[str]:
        """Class name of each patch, (n_patches,)."""
        names = np.asarray(self.class_names, dtype=object)
        return [str(s) for s in names[self.result.labels]]

    def patches_per_class(self) -> dict[str, int]:
        counts = np.bincount(self.result.labels, minlength=len(self.class_names))
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}

    def summary(self) -> str:
        """A short text for people: seeds used and ignored, patches per class, score, time."""
        n = int(self.result.labels.shape[0])
        per_class = ", ".join(
            f"{name} {count} ({100.0 * count / max(n, 1):.1f}%)"
            for name, count in self.patches_per_class().items()
        )
        method = self.result.method
        if self.result.history:
            depth = max((s.depth for s in self.result.history if s.accepted), default=0)
            method += f", depth {depth}"
        lines = [
            self.mapping.summary(),
            f"patches: {n}: {per_class}",
            f"method: {method}, score on the seed patches {self.result.score:.3f}",
        ]
        if self.suggested.size:
            lines.append(f"suggested seeds: {self.suggested.size}")
        lines.append(f"time: {self.elapsed_s:.3f} s")
        return "\n".join(lines)


def cluster_slide(
    emb: Embeddings,
    points: Sequence[SeedPoint],
    *,
    positive: str = DEFAULT_POSITIVE,
    multiclass: bool = False,
    method: str | None = None,
    suggest: int = 0,
    random_state: int | None = 0,
    metric: str = "f1",
    stop: Literal["drop", "strict"] = "drop",
    constrained: bool = False,
    max_depth: int = 8,
    min_cluster_size: int = 2,
    preprocess: Preprocess | None = None,
) -> SlideClustering:
    """Map seed points to patches, run seeded iterative clustering and suggest new seeds.

    Parameters
    ----------
    emb : Embeddings
        Features (n_patches, dim), coordinates and per-patch tissue statistics of one slide.
    points : sequence of SeedPoint
        Seed clicks in level-0 pixels with QuPath class names.
    positive : str, default "Tumor"
        Positive class for binary clustering (all other seed classes form the negative class).
    multiclass : bool, default False
        Keep every seed class as its own class.
    method : str or None
        One of :data:`histosic.sic.METHODS`; None = :data:`histosic.sic.DEFAULT_METHOD`.
    suggest : int, default 0
        Number of patches to suggest as new seeds.
    random_state : int or None, default 0
        Seed of the clustering's random choices (same inputs + same value = same labels).
    metric, stop, constrained, max_depth, min_cluster_size, preprocess
        Passed to :func:`histosic.sic.seeded_iterative_clustering`. The embedding's nuisance
        statistics and patch grid are always passed, so the default preprocessing applies.

    Returns
    -------
    SlideClustering

    Raises
    ------
    InvalidInputError
        No usable seed, fewer than two classes, unknown method, bad features.
    """
    from histosic import sic  # the engine imports scikit-learn; keep `histosic --help` fast

    start = time.perf_counter()
    mapping = map_seeds(emb, points, positive=positive, multiclass=multiclass)
    kwargs: dict[str, Any] = {
        "metric": metric,
        "stop": stop,
        "constrained": constrained,
        "max_depth": max_depth,
        "min_cluster_size": min_cluster_size,
        "nuisance": emb.nuisance(),
        "grid": emb.grid_index(),
        "preprocess": preprocess,
        "random_state": random_state,
        "method": method if method is not None else sic.DEFAULT_METHOD,
    }
    if mapping.positive is not None:
        kwargs["positive"] = mapping.positive
    result = sic.seeded_iterative_clustering(emb.features, mapping.seeds, **kwargs)
    suggested = np.zeros(0, dtype=np.int64)
    if suggest > 0:
        suggested = np.asarray(
            sic.suggest_seeds(result, int(suggest), grid=emb.grid_index()), dtype=np.int64
        )
    elapsed = time.perf_counter() - start
    clustering = SlideClustering(
        result=result,
        class_names=mapping.class_names,
        mapping=mapping,
        suggested=suggested,
        elapsed_s=elapsed,
    )
    log.debug("clustered %d patches in %.3f s", emb.n_patches, elapsed)
    return clustering
