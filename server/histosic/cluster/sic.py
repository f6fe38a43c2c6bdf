"""The paper's seeded iterative clustering (Chelebian et al. 2022).

A seeded k-means split with one cluster per seeded class, then the target cluster is split again
and again (seeded 2-means when both seed classes fall inside it, plain 2-means otherwise) while the
score on the seed patches does not drop. DESIGN.md section 3 states what the paper means; the
choices this implementation makes are in :func:`sic`'s docstring and in its comments.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from histosic.cluster.kmeans import seeded_kmeans, seeded_split
from histosic.cluster.options import Metric
from histosic.cluster.result import Step
from histosic.cluster.validation import UNLABELLED, FloatArray, IntArray

__all__ = ["sic"]


def sic(
    X: FloatArray,
    s: IntArray,
    classes: tuple[int, ...],
    positive: int | None,
    score_fn: Metric,
    *,
    stop: str,
    constrained: bool,
    max_depth: int,
    min_cluster_size: int,
    max_iter: int,
    rng: np.random.RandomState,
    norms: FloatArray,
    total: npt.NDArray[np.float64] | None = None,
) -> tuple[IntArray, list[Step]]:
    """The paper's SIC: a seeded split, then repeated re-splits of each target cluster.

    Binary: the target is the positive cluster. Multi-class: every class in turn is treated as the
    positive of a one-vs-rest refinement; patches removed from its cluster go to the nearest other
    class centroid. ``norms`` are the row norms of ``X``, ``total`` its column sums (computed
    here when not given).
    """
    seeded = np.flatnonzero(s >= 0)
    branch0 = "constrained-kmeans" if constrained else "seeded-kmeans"
    labels = seeded_split(X, s, classes, constrained, max_iter, norms, total)
    score = score_fn(s[seeded], labels[seeded])
    history = [Step(0, branch0, score, tuple(int(np.sum(labels == c)) for c in classes), True)]
    targets = [positive] if positive is not None else list(classes)
    depth = 0
    for target in targets:
        for _ in range(max_depth):
            member = np.flatnonzero(labels == target)
            if member.size < 2 * min_cluster_size:
                break
            s_sub = s[member]
            has_pos = np.any(s_sub == target)
            has_neg = np.any((s_sub >= 0) & (s_sub != target))
            if not has_pos:
                break
            Xs = X[member]
            if has_neg:
                binary = np.where(s_sub == target, 1, np.where(s_sub >= 0, 0, UNLABELLED))
                sub_labels, _, _, _ = seeded_kmeans(
                    Xs,
                    binary,
                    2,
                    constrained=constrained,
                    max_iter=max_iter,
                    rng=rng,
                    norms=norms[member],
                )
                keep = sub_labels == 1
                branch = branch0
            else:
                unseeded = np.full(member.size, UNLABELLED, dtype=np.int64)
                sub_labels, _, _, _ = seeded_kmeans(
                    Xs,
                    unseeded,
                    2,
                    constrained=False,
                    max_iter=max_iter,
                    rng=rng,
                    norms=norms[member],
                )
                pos_votes = np.bincount(sub_labels[s_sub == target], minlength=2)
                keep = sub_labels == int(np.argmax(pos_votes))
                branch = "kmeans"
            n_keep = int(keep.sum())
            depth += 1
            if n_keep < min_cluster_size or member.size - n_keep < min_cluster_size:
                history.append(
                    Step(depth, branch, float("nan"), (n_keep, member.size - n_keep), False)
                )
                break
            new = labels.copy()
            removed = member[~keep]
            if positive is not None:
                (other,) = [c for c in classes if c != positive]
                new[removed] = other
            else:
                others = [c for c in classes if c != target and np.any(labels == c)]
                if not others:
                    break
                C = np.stack([X[labels == c].mean(axis=0) for c in others]).astype(X.dtype)
                Xr = X[removed]
                near = np.argmax(Xr @ C.T - 0.5 * np.einsum("ij,ij->i", C, C), axis=1)
                new[removed] = np.asarray(others, dtype=np.int64)[near]
            new_score = score_fn(s[seeded], new[seeded])
            worse = new_score < score if stop == "drop" else new_score <= score
            sizes = tuple(int(np.sum(new == c)) for c in classes)
            history.append(Step(depth, branch, new_score, sizes, not worse))
            if worse:
                break
            labels, score = new, new_score
    return labels, history
