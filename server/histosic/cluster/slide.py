"""One call from an embedding file's contents and seed points to a slide's clustering.

The CLI (``histosic cluster``), the gRPC/Connect server, the batch mode and the demo all call
:func:`cluster_slide`, so they apply the same seed mapping, preprocessing and method choice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Unpack

import numpy as np
import numpy.typing as npt

from histosic.cluster.engine import seeded_clustering
from histosic.cluster.options import ClusterOptions, ClusterOverrides, check_seed_count
from histosic.cluster.result import ClusterResult
from histosic.cluster.suggest import suggest_seeds
from histosic.seeds import SeedMapping, SeedPoint, map_seeds

if TYPE_CHECKING:
    from histosic.store import Embeddings

__all__ = ["SlideClustering", "cluster_slide"]

log = logging.getLogger(__name__)


@dataclass
class SlideClustering:
    """The clustering of one slide's patches from seed points.

    Attributes
    ----------
    result : ClusterResult
        Labels (class ids), confidence, history and score from :func:`seeded_clustering`.
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
    options: ClusterOptions | None = None,
    **overrides: Unpack[ClusterOverrides],
) -> SlideClustering:
    """Map seed points to patches, cluster them from the seeds and suggest new seeds.

    Parameters
    ----------
    emb : Embeddings
        Features (n_patches, dim), coordinates and per-patch tissue statistics of one slide.
    points : sequence of SeedPoint
        Seed clicks in level-0 pixels with QuPath class names.
    options : ClusterOptions, optional
        Everything about the clustering (None = the defaults). This function reads
        ``positive_class``, ``multiclass`` (the seed mapping) and ``suggest``; the rest goes to
        :func:`seeded_clustering`, with the embedding's nuisance statistics and patch grid, so the
        default preprocessing applies. ``output`` is for the caller that writes the GeoJSON.
    **overrides
        :class:`ClusterOptions` fields that replace those of ``options``.

    Returns
    -------
    SlideClustering

    Raises
    ------
    InvalidInputError
        No usable seed, fewer than two or more than ``MAX_CLASSES`` classes, unknown method, bad
        features.
    ResourceExhaustedError
        More than ``MAX_SEEDS`` points, or a ``logreg`` problem over ``MAX_LOGREG_SIZE``.
    """
    opts = ClusterOptions() if options is None else options
    if overrides:
        opts = dataclasses.replace(opts, **overrides)
    check_seed_count(len(points))
    start = time.perf_counter()
    mapping = map_seeds(emb, points, positive=opts.positive_class, multiclass=opts.multiclass)
    grid = emb.grid_index()
    result = seeded_clustering(
        emb.features,
        mapping.seeds,
        opts,
        # A multi-class mapping has no positive class; the engine ignores `positive` there.
        positive=1 if mapping.positive is None else mapping.positive,
        nuisance=emb.nuisance(),
        grid=grid,
    )
    suggested = np.zeros(0, dtype=np.int64)
    if opts.suggest > 0:
        suggested = np.asarray(suggest_seeds(result, opts.suggest, grid=grid), dtype=np.int64)
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
