"""The clustering options, in one frozen dataclass that every layer passes on unchanged.

This module imports no numpy: the command line declares its flags, defaults and choices from it
without loading the clustering (``histosic --help`` stays fast).

:class:`ClusterOptions` mirrors the ``histosic.v1.ClusterOptions`` message (protos/histosic/v1/
clustering.proto) plus ``max_iter``; its defaults are the product's and live only here. The command
line builds one from its flags (:mod:`histosic.commands._args`), the server from the request
(:mod:`histosic.service.convert`), the client turns one into the request, and
:func:`histosic.cluster.cluster_slide`, :func:`histosic.cluster.seeded_clustering` and
:func:`histosic.batch.run_batch` read their settings from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from histosic import config
from histosic.errors import InvalidInputError, ResourceExhaustedError, shown

#: A score of predicted against true class ids (higher is better): ``metric(true, pred)``, both
#: int64 arrays of the seed patches (typed loosely here: this module imports no numpy).
Metric = Callable[[Any, Any], float]

__all__ = [
    "DEFAULT_METHOD",
    "MAX_CLASSES",
    "MAX_LOGREG_SIZE",
    "MAX_SEEDS",
    "MAX_SMOOTH_RADIUS",
    "MAX_SUGGEST",
    "METHODS",
    "METRICS",
    "OUTPUTS",
    "PAPER_PREPROCESS",
    "STOPS",
    "ClusterOptions",
    "ClusterOverrides",
    "Metric",
    "Preprocess",
    "check_class_count",
    "check_random_state",
    "check_seed_count",
]

#: The clustering methods (:data:`histosic.cluster.methods.DISPATCH` runs each), in the order the
#: documentation lists them; ``sic`` is the paper's algorithm.
METHODS: tuple[str, ...] = ("sic", "seeded-kmeans", "centroid", "logreg", "spreading")
#: The product default (docs/EVALUATION.md says why).
DEFAULT_METHOD = "logreg"
#: The seed-score metrics (:func:`histosic.cluster.metrics.make_metric` builds each).
METRICS: tuple[str, ...] = ("f1", "accuracy", "balanced_accuracy", "mcc")
#: The most suggested seeds one clustering may ask for.
MAX_SUGGEST = 10_000
#: The most seed points one clustering takes (more: ResourceExhaustedError, RESOURCE_EXHAUSTED).
MAX_SEEDS = 100_000
#: The most seeded classes one clustering takes (more: InvalidInputError, INVALID_ARGUMENT).
MAX_CLASSES = 50
#: The largest ``logreg`` problem: seeded patches x min(seeded patches, features) x classes (1 for
#: two classes), which bounds its memory and its time per step (more: ResourceExhaustedError).
MAX_LOGREG_SIZE = 50_000_000
#: The largest grid smoothing radius (a (2r+1)^2 neighbourhood; larger blurs tissue regions away).
MAX_SMOOTH_RADIUS = 16
#: The stopping rules of SIC.
STOPS: tuple[str, ...] = ("drop", "strict")
#: What the clustering's GeoJSON holds: one of config.OUTPUT_KINDS, or "none" (no GeoJSON).
OUTPUTS: tuple[str, ...] = (*config.OUTPUT_KINDS, "none")
_MAX_SEED = 2**32  # numpy.random.RandomState takes seeds in [0, 2**32)


@dataclass(frozen=True)
class Preprocess:
    """Feature cleaning before clustering.

    Parameters
    ----------
    regress_nuisance : bool, default=True
        Regress the per-patch tissue fraction and white-pixel fraction out of the features (ordinary
        least squares, no labels needed). On real slides the k=2 split of raw embeddings follows
        these fractions more than tumour. Brightness is deliberately *not* regressed: it carries
        tumour signal.
    smooth_radius : int, default=1
        Average each patch's features with its grid neighbours within this Chebyshev radius
        (1 = 3x3 neighbourhood); 0 turns smoothing off. Needs the patch grid.
    l2_normalize : bool, default=False
        Scale each feature vector to unit length (after the steps above).
    pca_components : int or None, default=None
        Keep this many principal components (after the steps above).
    center_pieces : bool, default=False
        Subtract each tissue piece's mean feature vector (pieces = groups of patches connected on
        the patch grid, 8-neighbourhood), after the nuisance regression. Separate pieces (biopsy
        fragments, or tiles from different patients) often differ by staining more than by tissue
        type. Needs the patch grid. Harmful when a piece is all one class.
    """

    regress_nuisance: bool = True
    smooth_radius: int = 1
    l2_normalize: bool = False
    pca_components: int | None = None
    center_pieces: bool = False


#: The paper's setting: raw embeddings.
PAPER_PREPROCESS = Preprocess(regress_nuisance=False, smooth_radius=0)


@dataclass(frozen=True)
class ClusterOptions:
    """How to cluster a slide (or a feature matrix) from its seeds.

    Parameters
    ----------
    method : {"sic", "seeded-kmeans", "centroid", "logreg", "spreading"}, default=DEFAULT_METHOD
        ``"sic"`` is the paper's algorithm (a seeded k-means split, then the positive cluster is
        re-split until the score on the seeds drops). ``"seeded-kmeans"`` is its first step alone.
        ``"centroid"`` is seeded k-means on the projection onto the seed-mean axis (or, multi-class,
        the span of the class means). ``"logreg"`` trains a regularised logistic regression on the
        seed patches. ``"spreading"`` spreads seed labels over a k-NN graph (slow for 100k+
        patches).
    positive_class : str, default=config.DEFAULT_POSITIVE_CLASS ("Tumor")
        Slides, binary clustering: the QuPath class of the positive seeds; every other seed class
        forms the negative class.
    multiclass : bool, default=False
        Slides: keep every seed class as its own class.
    suggest : int, default=0
        Slides: how many next seeds to suggest (least certain patches, spread out), at most
        :data:`MAX_SUGGEST`.
    metric : {"f1", "accuracy", "balanced_accuracy", "mcc"} or callable, default="f1"
        Score on the seed patches that drives SIC's stopping rule. Multi-class "f1" is macro F1.
        A callable ``metric(true, pred) -> float`` works in Python (not over the wire).
    stop : {"drop", "strict"}, default="drop"
        ``"drop"`` (the paper): keep refining while the score does not go down, and keep the last
        labelling before it drops. ``"strict"``: keep refining only while the score improves.
    constrained : bool, default=False
        Constrained-KMeans (seed patches pinned to their class) instead of Seeded-KMeans, in the
        k-means based methods.
    max_depth : int, default=8
        Maximum number of refinement splits per target cluster (SIC).
    min_cluster_size : int, default=2
        A split that would leave a part smaller than this is not made (SIC).
    random_state : int or None, default=0
        Seeds the unseeded k-means splits and the spreading's PCA; the same inputs and value give
        the same labels. None draws fresh randomness.
    preprocess : Preprocess, default=Preprocess()
        Feature cleaning; its steps run only where the nuisance statistics and the patch grid are
        given (a slide always gives them). :data:`~histosic.cluster.PAPER_PREPROCESS` is the
        paper's raw features. ``smooth_radius`` is at most :data:`MAX_SMOOTH_RADIUS`.
    output : {"tiles", "detections", "regions", "both", "none"}, default=config.DEFAULT_OUTPUT
        Slides: what the QuPath GeoJSON holds (``"none"``: no GeoJSON, where a caller may skip it).
    max_iter : int, default=100
        Lloyd iterations per k-means split.

    Limits (module constants, the same for every caller): at most :data:`MAX_SEEDS` seed points,
    :data:`MAX_CLASSES` seeded classes and, for ``logreg``, :data:`MAX_LOGREG_SIZE` (seeded
    patches x min(seeded patches, features) x classes); ``docs/SERVER.md`` lists each with its
    error.

    Raises
    ------
    InvalidInputError
        An unknown method, metric, stop or output, an empty positive class, or a count or bound
        out of range.
    """

    method: str = DEFAULT_METHOD
    positive_class: str = config.DEFAULT_POSITIVE_CLASS
    multiclass: bool = False
    suggest: int = 0
    metric: str | Metric = "f1"
    stop: str = "drop"
    constrained: bool = False
    max_depth: int = 8
    min_cluster_size: int = 2
    random_state: int | None = 0
    preprocess: Preprocess = field(default_factory=Preprocess)
    output: str = config.DEFAULT_OUTPUT
    max_iter: int = 100

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(
                f"unknown method {shown(self.method)}; choose one of {', '.join(METHODS)}"
            )
        if not callable(self.metric) and self.metric not in METRICS:
            raise InvalidInputError(
                f"unknown metric {shown(self.metric)}; use "
                f"{', '.join(repr(m) for m in METRICS)} or a callable"
            )
        if self.stop not in STOPS:
            raise InvalidInputError(f"stop must be 'drop' or 'strict', got {shown(self.stop)}")
        if self.output not in OUTPUTS:
            raise InvalidInputError(
                f"output (geojson in the API) must be one of {', '.join(OUTPUTS)}, got "
                f"{shown(self.output)}"
            )
        if not self.positive_class.strip():
            raise InvalidInputError(
                "positive_class is empty; name the QuPath class of the positive seeds "
                f"(default {config.DEFAULT_POSITIVE_CLASS!r})"
            )
        if not 0 <= self.suggest <= MAX_SUGGEST:
            raise InvalidInputError(
                f"suggest must be in [0, {MAX_SUGGEST}], got {self.suggest}; ask for fewer "
                "suggested seeds"
            )
        if self.max_depth < 0:
            raise InvalidInputError(
                f"max_depth must be >= 0 (0 = no refinement), got {self.max_depth}"
            )
        if self.min_cluster_size < 1:
            raise InvalidInputError(
                f"min_cluster_size must be >= 1 patch, got {self.min_cluster_size}"
            )
        if self.max_iter < 1:
            raise InvalidInputError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.random_state is not None:
            check_random_state(self.random_state)
        p = self.preprocess
        if not 0 <= p.smooth_radius <= MAX_SMOOTH_RADIUS:
            raise InvalidInputError(
                f"smooth_radius must be in [0, {MAX_SMOOTH_RADIUS}], got {p.smooth_radius}; "
                "0 turns smoothing off"
            )
        if p.pca_components is not None and p.pca_components < 1:
            raise InvalidInputError(
                f"pca_components must be >= 1 (or None for no PCA), got {p.pca_components}"
            )


def check_random_state(value: int) -> int:
    """``value`` when it is a seed numpy's RandomState takes (0 to 2**32 - 1), else
    InvalidInputError."""
    if not 0 <= value < _MAX_SEED:
        raise InvalidInputError(
            f"random_state must be in [0, 2**32) or None, got {value}; use a number from 0 to "
            f"{_MAX_SEED - 1}"
        )
    return value


def check_seed_count(n_seeds: int) -> None:
    """Refuse more than :data:`MAX_SEEDS` seed points (ResourceExhaustedError)."""
    if n_seeds > MAX_SEEDS:
        raise ResourceExhaustedError(
            f"{n_seeds} seed points given; at most {MAX_SEEDS} are accepted: send fewer points"
        )


def check_class_count(n_classes: int) -> None:
    """Refuse more than :data:`MAX_CLASSES` seeded classes (InvalidInputError)."""
    if n_classes > MAX_CLASSES:
        raise InvalidInputError(
            f"{n_classes} seeded classes; at most {MAX_CLASSES} are accepted: merge classes or "
            "cluster groups of them separately"
        )


class ClusterOverrides(TypedDict, total=False):
    """Keyword overrides of :class:`ClusterOptions` fields.

    As in ``seeded_clustering(X, seeds, method="sic")`` or ``cluster_slide(emb, pts, suggest=3)``.
    """

    method: str
    positive_class: str
    multiclass: bool
    suggest: int
    metric: str | Metric
    stop: str
    constrained: bool
    max_depth: int
    min_cluster_size: int
    random_state: int | None
    preprocess: Preprocess
    output: str
    max_iter: int
