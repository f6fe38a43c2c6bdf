"""Scores of a labelling: the seed-patch metrics that drive SIC, and the evaluation's F1.

F1 is computed in one place (:func:`f1_from_counts`) for both: the stopping rule scores the seed
patches after every split, and :mod:`histosic.evaluation` scores whole slides against ground truth.
numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from histosic.cluster.options import Metric
from histosic.errors import InvalidInputError

__all__ = [
    "all_positive_f1",
    "binary_scores",
    "f1_from_counts",
    "f1_score",
    "macro_f1",
    "make_metric",
    "mcc",
]


def f1_from_counts(tp: float, fp: float, fn: float) -> float:
    """``2 tp / (2 tp + fp + fn)``, and 0 when there is no true positive."""
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_score(t: npt.NDArray[np.int64], p: npt.NDArray[np.int64], label: int) -> float:
    """F1 of class ``label`` (one-vs-rest) of predictions ``p`` against truth ``t``."""
    tp = float(np.count_nonzero((t == label) & (p == label)))
    fp = float(np.count_nonzero((t != label) & (p == label)))
    fn = float(np.count_nonzero((t == label) & (p != label)))
    return f1_from_counts(tp, fp, fn)


def mcc(t: npt.NDArray[np.int64], p: npt.NDArray[np.int64]) -> float:
    """Matthews correlation coefficient (multi-class form); 0 when undefined."""
    labels = np.union1d(t, p)
    conf = np.zeros((labels.size, labels.size))
    np.add.at(conf, (np.searchsorted(labels, t), np.searchsorted(labels, p)), 1)
    n = conf.sum()
    tk, pk = conf.sum(axis=1), conf.sum(axis=0)
    cov_tp = np.trace(conf) * n - tk @ pk
    denom = np.sqrt((n * n - tk @ tk) * (n * n - pk @ pk))
    return float(cov_tp / denom) if denom > 0 else 0.0


def make_metric(metric: str | Metric, positive: int | None, classes: Sequence[int]) -> Metric:
    """The score function on the seed patches (numpy only: the metric runs after every split).

    Parameters
    ----------
    metric : {"f1", "accuracy", "balanced_accuracy", "mcc"} or callable
        ``"f1"`` is the positive class's F1 in binary problems and macro F1 otherwise. A callable
        is returned as it is.
    positive : int or None
        The positive class id (binary), or None (multi-class).
    classes : sequence of int
        The seeded class ids.

    Raises
    ------
    InvalidInputError
        An unknown metric name.
    """
    if callable(metric):
        return metric
    labels = list(classes)
    if metric == "f1":
        if positive is not None:
            pos = int(positive)
            return lambda t, p: f1_score(t, p, pos)
        return lambda t, p: float(np.mean([f1_score(t, p, c) for c in labels]))
    if metric == "accuracy":
        return lambda t, p: float(np.mean(t == p))
    if metric == "balanced_accuracy":
        return lambda t, p: float(
            np.mean([np.mean(p[t == c] == c) for c in labels if np.any(t == c)])
        )
    if metric == "mcc":
        return mcc
    raise InvalidInputError(
        f"unknown metric {metric!r}; use 'f1', 'accuracy', 'balanced_accuracy', 'mcc' or a callable"
    )


def binary_scores(truth: npt.ArrayLike, pred: npt.ArrayLike) -> dict[str, float]:
    """F1, precision, recall of the positive class (1) and the predicted positive fraction."""
    t = np.asarray(truth).astype(bool)
    p = np.asarray(pred).astype(bool)
    tp = float(np.sum(t & p))
    fp = float(np.sum(~t & p))
    fn = float(np.sum(t & ~p))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "f1": f1_from_counts(tp, fp, fn),
        "precision": precision,
        "recall": recall,
        "predicted_positive": float(p.mean()) if p.size else 0.0,
    }


def macro_f1(truth: npt.ArrayLike, pred: npt.ArrayLike, classes: Iterable[int]) -> float:
    """Mean over ``classes`` of the one-vs-rest F1."""
    t = np.asarray(truth)
    p = np.asarray(pred)
    return float(np.mean([binary_scores(t == c, p == c)["f1"] for c in classes]))


def all_positive_f1(positive_ratio: float) -> float:
    """F1 of labelling every patch positive: 2p / (1 + p)."""
    return 2 * positive_ratio / (1 + positive_ratio) if positive_ratio > 0 else 0.0
