"""What a clustering returns: the labels with their confidence, and the steps that led there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histosic.cluster.options import Preprocess
from histosic.cluster.validation import FloatArray, IntArray

__all__ = ["ClusterResult", "Step"]


@dataclass
class Step:
    """One step of the iterative refinement (or the single step of a one-shot method)."""

    depth: int
    branch: str  # "seeded-kmeans", "constrained-kmeans", "kmeans", "logreg", ...
    score: float  # metric on the seed patches after this step
    sizes: tuple[int, ...]  # patches per class after this step, in ``classes`` order
    accepted: bool


@dataclass
class ClusterResult:
    """What :func:`histosic.cluster.seeded_clustering` returns.

    Attributes
    ----------
    labels : ndarray of shape (n_patches,)
        Class id per patch (one of ``classes``).
    confidence : ndarray of shape (n_patches,)
        In [0, 1]; 1 = certain. For k-means methods ``d_other / (d_own + d_other)`` with distances
        to the final class centroids; for classifiers the predicted probability of the label.
    classes : tuple of int
        The seeded class ids, sorted.
    positive : int or None
        Binary: the positive class id. Multi-class: None.
    history : list of Step
    seeds : ndarray of shape (n_patches,)
        The seeds used (-1 = unlabelled).
    method : str
    score : float
        The metric on the seed patches for the final labelling.
    preprocess : Preprocess or None
        The preprocessing applied (None = raw features).
    """

    labels: IntArray
    confidence: FloatArray
    classes: tuple[int, ...]
    positive: int | None
    history: list[Step]
    seeds: IntArray
    method: str
    score: float
    preprocess: Preprocess | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_patches(self) -> int:
        return int(self.labels.shape[0])

    def counts(self) -> dict[int, int]:
        """Patches per class."""
        return {c: int(np.count_nonzero(self.labels == c)) for c in self.classes}
