"""The paper's evaluation protocol on one embedding: variants, simulated seeds, scores, runs.

Chelebian et al. (2022) draw k seed patches per class at random inside and outside the positive
region (k in {1, 3, 5}), repeat R = 5 times, and report the best F1 of the R runs. Every variant and
model sees the same seed draws (paired comparison): draws depend only on the slide's truth, k, the
repetition and ``random_state``. Works on plain arrays; :mod:`histosic.evaluation.runner` adds
slides and cached embeddings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from histosic.cluster.metrics import binary_scores, macro_f1
from histosic.errors import InvalidInputError
from histosic.evaluation.truth import POSITIVE, Truth

if TYPE_CHECKING:
    from histosic.cluster import ClusterResult, Preprocess

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Named feature preprocessing settings (``pre=NAME`` in a variant spec), as
#: ``(regress_nuisance, smooth_radius, l2_normalize, pca_components)``.
PREPROCESS_PRESETS: dict[str, tuple[bool, int, bool, int | None]] = {
    "none": (False, 0, False, None),  # the paper: raw features
    "nuisance": (True, 0, False, None),
    "smooth": (False, 1, False, None),
    "both": (True, 1, False, None),
    "smooth2": (False, 2, False, None),
    "both2": (True, 2, False, None),
    "l2": (False, 0, True, None),
    "pca": (False, 0, False, 32),
    "both+l2": (True, 1, True, None),
    "both+pca": (True, 1, False, 32),
}


def _preprocess(name: str) -> Preprocess | None:
    from histosic.cluster import Preprocess

    if name == "default":
        return None
    # NAME+center: the same, with each tissue piece's mean feature subtracted
    center = name.endswith("+center")
    r, s, l2, pca = PREPROCESS_PRESETS[name.removesuffix("+center")]
    return Preprocess(
        regress_nuisance=r,
        smooth_radius=s,
        l2_normalize=l2,
        pca_components=pca,
        center_pieces=center,
    )


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One algorithm setting to evaluate.

    ``mode`` is ``"binary"`` (positive vs everything else), ``"multiclass"`` (one class per truth
    label, needs a label image with three or more tissue classes) or ``"ovr"`` (one binary run per
    class, combined by confidence). Multi-class and one-vs-rest runs are scored on the positive
    class too, so every mode is comparable on F1.
    """

    method: str = "sic"
    stop: str = "drop"
    constrained: bool = False
    preprocess: str = "default"  # a key of PREPROCESS_PRESETS, or "default" (the product's)
    mode: str = "binary"

    @property
    def name(self) -> str:
        parts = [self.method, f"pre={self.preprocess}"]
        if self.stop != "drop":
            parts.append(f"stop={self.stop}")
        if self.constrained:
            parts.append("constrained")
        if self.mode != "binary":
            parts.append(self.mode)
        return ":".join(parts)


def parse_variant(spec: str) -> Variant:
    """Parse ``METHOD[:pre=NAME][:stop=drop|strict][:constrained][:multiclass|:ovr]``.

    Examples: ``sic:pre=none`` (the paper), ``logreg:pre=both``, ``sic:pre=none:stop=strict``.
    """
    from histosic.cluster import METHODS

    parts = [p.strip() for p in spec.split(":") if p.strip()]
    if not parts or parts[0] not in METHODS:
        raise InvalidInputError(
            f"variant {spec!r} must start with a method, one of {', '.join(METHODS)}"
        )
    kw: dict[str, Any] = {"method": parts[0]}
    for p in parts[1:]:
        if p == "constrained":
            kw["constrained"] = True
        elif p in ("multiclass", "ovr", "binary"):
            kw["mode"] = p
        elif p.startswith("pre="):
            name = p[4:]
            if name != "default" and name.removesuffix("+center") not in PREPROCESS_PRESETS:
                raise InvalidInputError(
                    f"unknown preprocessing {name!r} in {spec!r}; choose default or one of "
                    f"{', '.join(PREPROCESS_PRESETS)}"
                )
            kw["preprocess"] = name
        elif p.startswith("stop="):
            if p[5:] not in ("drop", "strict"):
                raise InvalidInputError(f"stop must be drop or strict in {spec!r}")
            kw["stop"] = p[5:]
        else:
            raise InvalidInputError(
                f"cannot read {p!r} in variant {spec!r}; expected pre=NAME, stop=drop|strict, "
                "constrained, multiclass or ovr"
            )
    return Variant(**kw)


# --------------------------------------------------------------------------------------------
# Seeds and scores
# --------------------------------------------------------------------------------------------


def sample_seeds(
    truth: npt.ArrayLike, k: int, rng: np.random.Generator, *, classes: Sequence[int] | None = None
) -> IntArray:
    """Draw ``k`` seed patches of each class at random (the paper's simulated pathologist).

    Parameters
    ----------
    truth : array-like of int of shape (n,)
        True class of each patch; negative values are never drawn.
    k : int
        Seeds per class (fewer when a class has fewer patches).
    rng : numpy Generator
    classes : sequence of int, optional
        The classes to seed (default: every class present in ``truth``).

    Returns
    -------
    ndarray of int64 of shape (n,)
        The class id at each seed patch, -1 elsewhere.
    """
    t = np.asarray(truth, dtype=np.int64)
    if k < 1:
        raise InvalidInputError(f"seeds per class must be >= 1, got {k}")
    wanted = sorted(set(int(c) for c in t[t >= 0])) if classes is None else list(classes)
    seeds = np.full(t.shape[0], -1, dtype=np.int64)
    for c in wanted:
        pool = np.flatnonzero(t == c)
        if pool.size == 0:
            raise InvalidInputError(f"no patch of class {c} to draw seeds from")
        pick = rng.choice(pool, size=min(k, pool.size), replace=False)
        seeds[pick] = c
    return seeds


#: Where the simulated pathologist clicks: ``random`` (the paper: anywhere inside / outside the
#: positive region), ``pure`` (patches at least 90% one side) or ``boundary`` (mixed patches within
#: 0.3 of the threshold on their side, as clicks near a tumour border give).
SEED_DRAWS = ("random", "pure", "boundary")


def seed_candidates(truth: Truth, draw: str, k: int) -> IntArray:
    """The binary truth with patches a ``draw`` may not click set to -1 (for :func:`sample_seeds`).

    A class with fewer than ``k`` eligible patches keeps all its patches (the draw falls back to
    ``random`` for that class), so every draw has ``k`` seeds per class when the slide allows it.
    """
    if draw not in SEED_DRAWS:
        raise InvalidInputError(f"seed draw must be one of {', '.join(SEED_DRAWS)}, got {draw!r}")
    y = truth.labels
    if draw == "random" or truth.share is None:
        return y
    share, t = truth.share, truth.threshold
    if draw == "pure":
        ok_pos, ok_neg = share >= 0.9, share <= 0.1
    else:
        ok_pos = (share >= t) & (share < t + 0.3)
        ok_neg = (share < t) & (share > t - 0.3)
    out = y.copy()
    for cls, ok in ((1, ok_pos), (0, ok_neg)):
        members = y == cls
        if int(np.sum(members & ok)) >= k:
            out[members & ~ok] = -1
    return out


# --------------------------------------------------------------------------------------------
# The protocol on one embedding
# --------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One clustering run: a slide, a model, a variant, k seeds per class, one repetition."""

    slide: str
    model: str
    variant: str
    k: int
    rep: int
    f1: float
    precision: float
    recall: float
    predicted_positive: float
    seed_score: float
    depth: int
    seconds: float
    macro_f1: float | None = None


def _cluster(
    X: npt.NDArray[np.floating[Any]],
    seeds: IntArray,
    v: Variant,
    *,
    nuisance: FloatArray | None,
    grid: IntArray | None,
    positive: int | None,
    random_state: int,
) -> ClusterResult:
    from histosic.cluster import ClusterOptions, seeded_clustering

    options = ClusterOptions(
        method=v.method, stop=v.stop, constrained=v.constrained, random_state=random_state
    )
    preprocess = _preprocess(v.preprocess)
    if preprocess is not None:  # None: the product's default preprocessing
        options = replace(options, preprocess=preprocess)
    return seeded_clustering(X, seeds, options, positive=positive, nuisance=nuisance, grid=grid)


def _ovr(
    X: npt.NDArray[np.floating[Any]],
    seeds: IntArray,
    v: Variant,
    classes: Sequence[int],
    **kw: Any,
) -> IntArray:
    """One binary run per class (class vs the other seeds); each patch takes its surest class."""
    score = np.full((X.shape[0], len(classes)), -np.inf)
    for j, c in enumerate(classes):
        s = np.where(seeds < 0, -1, (seeds == c).astype(np.int64))
        res = _cluster(X, s, v, positive=1, **kw)
        conf = np.clip(res.confidence, 0.0, 1.0)
        score[:, j] = np.where(res.labels == 1, conf, 1.0 - conf)
    return np.asarray(np.asarray(classes)[score.argmax(axis=1)], dtype=np.int64)


def run_protocol(
    X: npt.ArrayLike,
    truth: Truth,
    variants: Sequence[Variant],
    *,
    ks: Sequence[int] = (1, 3, 5),
    repeats: int = 5,
    nuisance: npt.ArrayLike | None = None,
    grid: npt.ArrayLike | None = None,
    slide: str = "slide",
    model: str = "model",
    random_state: int = 0,
    keep: Callable[[Variant, int, int, ClusterResult | IntArray, IntArray], None] | None = None,
    seed_draw: str = "random",
) -> list[RunRecord]:
    """Run every variant on the same seed draws and score each against the truth.

    Parameters
    ----------
    X : array-like of shape (n_patches, dim)
    truth : Truth
    variants : sequence of Variant
    ks : sequence of int, default (1, 3, 5)
        Seed patches per class.
    repeats : int, default 5
        Seed draws per k (R in the paper).
    nuisance, grid : optional
        Passed to :func:`histosic.cluster.seeded_clustering` (tissue/white fractions, grid).
    slide, model : str
        Names recorded in each :class:`RunRecord`.
    random_state : int, default 0
        Seeds the draws: draw ``r`` at ``k`` uses ``default_rng((random_state, k, r))``, so every
        variant and model of a slide sees the same seeds.
    keep : callable, optional
        Called as ``keep(variant, k, rep, result_or_labels, seeds)`` after each run (overlays).
    seed_draw : {"random", "pure", "boundary"}, default "random"
        Where binary seeds are drawn (:func:`seed_candidates`); multi-class seeds are random.

    Returns
    -------
    list of RunRecord
    """
    # float32 as the embedding store holds it, so runs match what `histosic cluster` does
    Xa = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    Z = None if nuisance is None else np.asarray(nuisance, dtype=np.float64)
    G = None if grid is None else np.asarray(grid, dtype=np.int64)
    y = truth.labels
    if y.shape[0] != Xa.shape[0]:
        raise InvalidInputError(f"truth has {y.shape[0]} patches, features {Xa.shape[0]}")
    if y.min(initial=1) == 1 or y.max(initial=0) == 0:
        raise InvalidInputError(
            f"slide {slide!r} needs both positive and negative patches; it has "
            f"{int(y.sum())} positive of {y.size}"
        )
    multi = truth.classes
    mc_classes: list[int] = []
    if multi is not None:
        mc_classes = [c for c in range(1, len(truth.class_names)) if np.any(multi == c)]
    records: list[RunRecord] = []
    for k in ks:
        for r in range(repeats):
            rng = np.random.default_rng((random_state, k, r))
            bin_seeds = sample_seeds(seed_candidates(truth, seed_draw, k), k, rng)
            mc_seeds: IntArray | None = None
            if multi is not None and len(mc_classes) >= 3:
                mc_seeds = sample_seeds(
                    np.where(multi > 0, multi, -1),
                    k,
                    np.random.default_rng((random_state, k, r, 1)),
                )
            for v in variants:
                kw: dict[str, Any] = {"nuisance": Z, "grid": G, "random_state": r}
                t0 = time.perf_counter()
                if v.mode == "binary":
                    res = _cluster(Xa, bin_seeds, v, positive=POSITIVE, **kw)
                    pred = (res.labels == POSITIVE).astype(np.int64)
                    seed_score, depth = res.score, sum(s.accepted for s in res.history)
                    mf1 = None
                    kept: ClusterResult | IntArray = res
                    seeds_used = bin_seeds
                else:
                    if mc_seeds is None or multi is None:
                        if multi is None:
                            raise InvalidInputError(
                                f"variant {v.name} needs a label image as ground truth (--labels)"
                            )
                        if k == ks[0] and r == 0:
                            log.warning(
                                "slide %s has %d tissue classes; multi-class variant %s needs "
                                "three or more and is skipped there",
                                slide,
                                len(mc_classes),
                                v.name,
                            )
                        continue
                    if v.mode == "multiclass":
                        mres = _cluster(Xa, mc_seeds, v, positive=None, **kw)
                        labels = mres.labels
                        seed_score, depth = mres.score, sum(s.accepted for s in mres.history)
                    else:
                        labels = _ovr(Xa, mc_seeds, v, mc_classes, **kw)
                        seeded = mc_seeds >= 0
                        seed_score = macro_f1(mc_seeds[seeded], labels[seeded], mc_classes)
                        depth = 0
                    pred = (labels == 1).astype(np.int64)  # label 1 = the positive class
                    mf1 = macro_f1(multi[multi > 0], labels[multi > 0], mc_classes)
                    kept = labels
                    seeds_used = mc_seeds
                dt = time.perf_counter() - t0
                sc = binary_scores(y, pred)
                records.append(
                    RunRecord(
                        slide=slide,
                        model=model,
                        variant=v.name,
                        k=k,
                        rep=r,
                        f1=sc["f1"],
                        precision=sc["precision"],
                        recall=sc["recall"],
                        predicted_positive=sc["predicted_positive"],
                        seed_score=float(seed_score),
                        depth=int(depth),
                        seconds=dt,
                        macro_f1=mf1,
                    )
                )
                if keep is not None:
                    keep(v, k, r, kept, seeds_used)
    return records
