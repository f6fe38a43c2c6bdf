"""Seeded clustering of patch embeddings: numpy, with scikit-learn only where a step needs it.

The reference is Chelebian et al. 2022 (*Seeded iterative clustering for histology region
identification*), built on Seeded-KMeans and Constrained-KMeans of Basu, Banerjee & Mooney (2002).
DESIGN.md section 3 states what the paper means; this package implements that intent with the
choices made explicit:

* :func:`seeded_clustering` clusters a feature matrix from a few seed patches with the method that
  :class:`ClusterOptions` names. ``method="sic"`` is the paper's algorithm
  (:mod:`histosic.cluster.sic`); the other methods (``"centroid"``, ``"logreg"``, the default,
  ``"spreading"``, ``"seeded-kmeans"``) and the feature preprocessing (:class:`Preprocess`) are
  what our evaluation (``docs/EVALUATION.md``) found to work better on real slides;
  ``method="sic"`` with ``preprocess=PAPER_PREPROCESS`` reproduces the paper exactly.
* :func:`cluster_slide` does the same for a slide: seed points to seed patches, clustering,
  suggestions; it returns a :class:`SlideClustering`.
* :func:`suggest_seeds`: where the clustering is least certain, spread over the slide, so that a
  pathologist knows where to click next.
* ``histosic.cluster.estimator.SeededKMeans`` is Seeded/Constrained-KMeans as a scikit-learn
  estimator; it is not imported here, because scikit-learn's base classes take most of a second
  to import.

Modules: :mod:`~histosic.cluster.validation` (input checks), :mod:`~histosic.cluster.kmeans`
(Lloyd kernels, k-means++, seeded k-means), :mod:`~histosic.cluster.preprocess`,
:mod:`~histosic.cluster.metrics`, :mod:`~histosic.cluster.result`, :mod:`~histosic.cluster.sic`,
:mod:`~histosic.cluster.logreg`, :mod:`~histosic.cluster.methods` (the method table),
:mod:`~histosic.cluster.options`, :mod:`~histosic.cluster.engine` (:func:`seeded_clustering`),
:mod:`~histosic.cluster.suggest`, :mod:`~histosic.cluster.slide` (:func:`cluster_slide`) and
:mod:`~histosic.cluster.estimator`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from histosic.cluster.engine import seeded_clustering
    from histosic.cluster.options import (
        DEFAULT_METHOD,
        METHODS,
        METRICS,
        OUTPUTS,
        PAPER_PREPROCESS,
        STOPS,
        ClusterOptions,
        Preprocess,
    )
    from histosic.cluster.preprocess import grid_pieces, preprocess_features
    from histosic.cluster.result import ClusterResult, Step
    from histosic.cluster.slide import SlideClustering, cluster_slide
    from histosic.cluster.suggest import suggest_seeds

# Each public name and the submodule it lives in, loaded on first use: `histosic.cluster.options`
# (numpy-free) then stays cheap to import for the command line, and this package imports nothing
# that imports it back.
_WHERE = {
    "seeded_clustering": "engine",
    "DEFAULT_METHOD": "options",
    "METHODS": "options",
    "METRICS": "options",
    "OUTPUTS": "options",
    "PAPER_PREPROCESS": "options",
    "STOPS": "options",
    "ClusterOptions": "options",
    "Preprocess": "options",
    "grid_pieces": "preprocess",
    "preprocess_features": "preprocess",
    "ClusterResult": "result",
    "Step": "result",
    "SlideClustering": "slide",
    "cluster_slide": "slide",
    "suggest_seeds": "suggest",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"histosic.cluster.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "METRICS",
    "OUTPUTS",
    "PAPER_PREPROCESS",
    "STOPS",
    "ClusterOptions",
    "ClusterResult",
    "Preprocess",
    "SlideClustering",
    "Step",
    "cluster_slide",
    "grid_pieces",
    "preprocess_features",
    "seeded_clustering",
    "suggest_seeds",
]
