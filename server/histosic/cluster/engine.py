"""The clustering engine: patch embeddings and a few seed patches in, a class per patch out.

:func:`seeded_clustering` checks the inputs, cleans the features
(:mod:`histosic.cluster.preprocess`) and runs the method that ``options.method`` names
(:mod:`histosic.cluster.methods`); it is numpy only unless the method or the preprocessing asks
for scikit-learn.
"""

from __future__ import annotations

import dataclasses
from typing import Unpack

import numpy as np
import numpy.typing as npt

from histosic.cluster.kmeans import centroid_confidence
from histosic.cluster.methods import DISPATCH, Problem
from histosic.cluster.metrics import make_metric
from histosic.cluster.options import ClusterOptions, ClusterOverrides, check_class_count
from histosic.cluster.preprocess import apply_preprocess
from histosic.cluster.result import ClusterResult, Step
from histosic.cluster.validation import check_features, check_seeds
from histosic.errors import InvalidInputError, shown

__all__ = ["seeded_clustering"]


def seeded_clustering(
    X: npt.ArrayLike,
    seeds: npt.ArrayLike,
    options: ClusterOptions | None = None,
    *,
    positive: int | None = 1,
    nuisance: npt.ArrayLike | None = None,
    grid: npt.ArrayLike | None = None,
    **overrides: Unpack[ClusterOverrides],
) -> ClusterResult:
    """Cluster patch embeddings from a few seed patches.

    Parameters
    ----------
    X : array-like of shape (n_patches, dim)
        Patch embeddings.
    seeds : array-like of int of shape (n_patches,)
        Class id of each seed patch, -1 for unlabelled patches. At least two classes must be
        seeded.
    options : ClusterOptions, optional
        The method and its settings (``method``, ``metric``, ``stop``, ``constrained``,
        ``max_depth``, ``min_cluster_size``, ``max_iter``, ``preprocess``, ``random_state``; the
        slide-level fields are not used here). None = the defaults.
    positive : int or None, default=1
        Binary: the positive class id; it must be one of the two seeded classes. Ignored (and
        reported as None) when three or more classes are seeded.
    nuisance : array-like of shape (n_patches, k), optional
        Per-patch nuisance variables (tissue and white fractions) for the preprocessing.
    grid : array-like of int of shape (n_patches, 2), optional
        Patch positions on the patch grid, for smoothing and per-piece centring.
    **overrides
        :class:`ClusterOptions` fields that replace those of ``options``
        (``seeded_clustering(X, seeds, method="sic", stop="strict")``).

    Returns
    -------
    ClusterResult

    Raises
    ------
    InvalidInputError
        NaN/inf in X, wrong shapes, fewer than two or more than ``MAX_CLASSES`` seeded classes, a
        positive class that is not seeded, fewer patches than clusters, unknown method/metric/stop.
    ResourceExhaustedError
        A ``logreg`` problem over ``MAX_LOGREG_SIZE`` (:mod:`histosic.cluster.options`).

    Notes
    -----
    Multi-class design (three or more seeded classes). ``sic``: one seeded k-means with one
    centre per class, then each class in turn is refined one-vs-rest as in binary SIC (the score
    is macro F1 on the seeds); patches split off a class go to the nearest other class centroid.
    ``centroid``: seeded k-means in the span of the class means. ``logreg``/``spreading``:
    multinomial by construction. The evaluation compares these with one-vs-rest binary runs
    (``docs/EVALUATION.md``).
    """
    opts = ClusterOptions() if options is None else options
    if overrides:
        opts = dataclasses.replace(opts, **overrides)
    Xa = check_features(X)
    n = Xa.shape[0]
    s = check_seeds(seeds, n)
    classes = tuple(int(c) for c in np.unique(s[s >= 0]))
    if len(classes) < 2:
        found = f"only class {classes[0]}" if classes else "no seeds"
        raise InvalidInputError(
            f"at least two seeded classes are needed, found {found}; "
            "place seeds of the positive class and of at least one other class"
        )
    check_class_count(len(classes))
    if n < len(classes):
        raise InvalidInputError(
            f"n_patches={n} is smaller than the number of clusters {len(classes)}"
        )
    if len(classes) == 2:
        if positive is None or positive not in classes:
            raise InvalidInputError(
                f"positive class {shown(positive)} has no seeds; seeded classes are {list(classes)}"
            )
        pos: int | None = int(positive)
    else:
        pos = None
    Xp = apply_preprocess(Xa, nuisance=nuisance, grid=grid, config=opts.preprocess)
    score_fn = make_metric(opts.metric, pos, classes)
    problem = Problem(
        X=Xp,
        seeds=s,
        classes=classes,
        positive=pos,
        score=score_fn,
        settings=opts,
        rng=np.random.RandomState(opts.random_state),
    )
    labels, confidence, history = DISPATCH[opts.method](problem)
    seeded = np.flatnonzero(s >= 0)
    score = score_fn(s[seeded], labels[seeded])
    if not history:
        history = [
            Step(0, opts.method, score, tuple(int(np.sum(labels == c)) for c in classes), True)
        ]
    if confidence is None:
        # sic and seeded-kmeans computed the row norms and column sums already (Problem caches
        # them).
        confidence = centroid_confidence(Xp, labels, classes, problem.sq_norms, problem.col_sums)
    return ClusterResult(
        labels=labels.astype(np.int64),
        confidence=np.asarray(confidence, dtype=np.float64),
        classes=classes,
        positive=pos,
        history=history,
        seeds=s,
        method=opts.method,
        score=float(score),
        preprocess=opts.preprocess,
    )
