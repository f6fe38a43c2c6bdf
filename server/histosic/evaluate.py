"""The paper's evaluation protocol: simulated seeds, SIC variants, F1 against ground truth.

Chelebian et al. (2022) draw k seed patches per class at random inside and outside the positive
region (k in {1, 3, 5}), repeat R = 5 times, and report the best F1 of the R runs. This module
reproduces that number and, beside it, the mean and spread over repetitions (the honest number),
precision, recall, the predicted positive fraction and the all-positive baseline.

Ground truth comes from a mask image (greyscale thresholded, or a label image) or from QuPath
GeoJSON polygons of the positive class. A patch is positive when at least half its area lies in the
positive region (the paper's rule). Every variant and model sees the same seed draws (paired
comparison): draws depend only on the slide's truth, k, the repetition and ``random_state``.

Core functions work on plain arrays (:func:`patch_fractions`, :func:`sample_seeds`,
:func:`run_protocol`, :func:`summarize`); :func:`evaluate_cases` adds slides, cached embeddings,
and the output files (JSON, Markdown, plot, overlays).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from histosic.cluster.metrics import all_positive_f1, binary_scores, macro_f1
from histosic.errors import InvalidInputError, SlideNotFoundError

if TYPE_CHECKING:
    from histosic.cluster import ClusterResult, Preprocess
    from histosic.store import Embeddings

__all__ = [
    "PREPROCESS_PRESETS",
    "SEED_DRAWS",
    "Case",
    "RunRecord",
    "Summary",
    "Truth",
    "Variant",
    "cache_path",
    "default_cache_dir",
    "evaluate_cases",
    "load_truth",
    "paired_comparison",
    "parse_variant",
    "patch_fractions",
    "run_protocol",
    "sample_seeds",
    "seed_candidates",
    "summarize",
    "write_markdown",
]

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where evaluation embeddings are cached: ``$HISTOSIC_CACHE``, else the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``) under ``histosic/eval``."""
    if os.environ.get("HISTOSIC_CACHE"):
        return Path(os.environ["HISTOSIC_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "histosic" / "eval"


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

NEGATIVE = 0
POSITIVE = 1


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
# Ground truth
# --------------------------------------------------------------------------------------------


@dataclass
class Truth:
    """Per-class area fraction of each patch, and the patch labels that follow from it.

    ``fractions[:, c]`` is the fraction of patch area in class ``c``; class 0 is the rest (negative
    or background). ``labels`` is the binary truth (1 = at least ``threshold`` of the patch in the
    positive class). ``classes`` is the multi-class truth (majority tissue class, 0 = none) or None.
    """

    fractions: FloatArray  # (n, n_classes)
    labels: IntArray  # (n,) 0/1
    classes: IntArray | None = None  # (n,) 1..C, 0 = no tissue class
    class_names: tuple[str, ...] = ("negative", "positive")
    #: The positive share each label was decided on (``labels = share >= threshold``).
    share: FloatArray | None = None
    threshold: float = 0.5

    @property
    def positive_ratio(self) -> float:
        return float(self.labels.mean()) if self.labels.size else 0.0


def patch_fractions(
    region: npt.NDArray[Any],
    coords: npt.ArrayLike,
    patch_size_level0: float,
    scale: tuple[float, float] = (1.0, 1.0),
) -> FloatArray:
    """Fraction of each patch's area where ``region`` is true.

    Parameters
    ----------
    region : ndarray of bool of shape (H, W)
        The region at mask resolution.
    coords : array-like of shape (n, 2)
        Level-0 top-left x, y of each patch.
    patch_size_level0 : float
        Patch side in level-0 pixels.
    scale : (float, float)
        Level-0 pixels per mask pixel in x and y.

    Returns
    -------
    ndarray of shape (n,), values in [0, 1]
    """
    m = np.asarray(region, dtype=bool)
    if m.ndim != 2:
        raise InvalidInputError(f"region must be a 2-D mask, got shape {m.shape}")
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    h, w = m.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = m.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    sx, sy = scale
    x0 = np.clip(np.rint(xy[:, 0] / sx), 0, w).astype(np.int64)
    x1 = np.clip(np.rint((xy[:, 0] + patch_size_level0) / sx), 0, w).astype(np.int64)
    y0 = np.clip(np.rint(xy[:, 1] / sy), 0, h).astype(np.int64)
    y1 = np.clip(np.rint((xy[:, 1] + patch_size_level0) / sy), 0, h).astype(np.int64)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = max((patch_size_level0 / sx) * (patch_size_level0 / sy), 1e-9)
    return np.clip(inside / area, 0.0, 1.0)


def _geojson_region(
    path: Path, width: int, height: int, positive: str | None, max_side: int = 4096
) -> tuple[npt.NDArray[np.bool_], tuple[float, float]]:
    """Rasterise the polygons of a GeoJSON file (of class ``positive`` if given)."""
    from PIL import Image, ImageDraw

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidInputError(f"cannot read GeoJSON ground truth {path}: {err}") from err
    feats = data.get("features", [data] if data.get("type") == "Feature" else [])
    if isinstance(data, list):
        feats = data
    down = max(1.0, max(width, height) / max_side)
    mw, mh = max(1, math.ceil(width / down)), max(1, math.ceil(height / down))
    img = Image.new("1", (mw, mh), 0)
    draw = ImageDraw.Draw(img)
    n_used = 0
    for f in feats:
        props = f.get("properties") or {}
        cls = (props.get("classification") or {}).get("name")
        if positive is not None and cls is not None and cls.casefold() != positive.casefold():
            continue
        geom = f.get("geometry") or {}
        polys = (
            [geom.get("coordinates", [])]
            if geom.get("type") == "Polygon"
            else geom.get("coordinates", [])
            if geom.get("type") == "MultiPolygon"
            else []
        )
        for poly in polys:
            for ring_i, ring in enumerate(poly):
                pts = [(float(x) / down, float(y) / down) for x, y, *_ in ring]
                if len(pts) >= 3:
                    draw.polygon(pts, fill=0 if ring_i else 1)  # later rings are holes
                    n_used += ring_i == 0
    if n_used == 0:
        raise InvalidInputError(
            f"{path} holds no polygon"
            + (f" of class {positive!r}" if positive else "")
            + "; export the positive-class annotations from QuPath as GeoJSON"
        )
    return np.asarray(img, dtype=bool), (width / mw, height / mh)


def load_truth(
    path: str | os.PathLike[str],
    coords: npt.ArrayLike,
    patch_size_level0: float,
    *,
    slide_size: tuple[int, int],
    positive: str | None = None,
    threshold: float = 0.5,
    labels: bool = False,
    label_names: Mapping[int, str] | None = None,
    positive_label: int = 1,
    relative_to_tissue: bool = True,
) -> Truth:
    """Patch ground truth from a mask image or a QuPath GeoJSON file.

    Parameters
    ----------
    path : path-like
        A mask image (any size; scaled to the slide), or ``.geojson``/``.json`` polygons.
        Greyscale masks are positive where the value is above 127 (DigestPath's JPEG masks).
    coords : array-like of shape (n, 2)
        Level-0 top-left x, y of each patch.
    patch_size_level0 : float
    slide_size : (width, height)
        Level-0 size of the slide, to scale the mask.
    positive : str, optional
        GeoJSON: the class name of the positive polygons (default: every polygon).
    threshold : float, default 0.5
        Positive when at least this fraction of the patch lies in the positive region.
    labels : bool, default False
        The image is a label image (0 none, 1..C classes, as ``histosic mosaic`` writes); class
        ``positive_label`` is the positive class and the multi-class truth is filled in. A patch
        is then positive when the positive class covers at least ``threshold`` of the labelled
        tissue in it (label images leave lumen and gaps unlabelled), and its multi-class label
        is its majority tissue class.
    relative_to_tissue : bool, default True
        Label images only: False applies the plain area rule (``threshold`` of the patch area).
    """
    p = Path(path)
    if not p.is_file():
        raise SlideNotFoundError(f"ground-truth file {p} does not exist")
    width, height = slide_size
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if p.suffix.lower() in (".geojson", ".json"):
        region, scale = _geojson_region(p, width, height, positive)
        pos = patch_fractions(region, xy, patch_size_level0, scale)
        fr = np.stack([1.0 - pos, pos], axis=1)
        return Truth(
            fractions=fr,
            labels=(pos >= threshold).astype(np.int64),
            share=pos,
            threshold=threshold,
        )
    from PIL import Image

    try:
        with Image.open(p) as im:
            arr = np.asarray(im if im.mode in ("P", "L", "I", "I;16") else im.convert("L"))
    except OSError as err:
        raise InvalidInputError(f"cannot read mask image {p}: {err}") from err
    if arr.ndim != 2:
        raise InvalidInputError(f"mask {p} must be single-channel, got shape {arr.shape}")
    scale = (width / arr.shape[1], height / arr.shape[0])
    if not labels:
        pos = patch_fractions(arr > 127, xy, patch_size_level0, scale)
        fr = np.stack([1.0 - pos, pos], axis=1)
        return Truth(
            fractions=fr,
            labels=(pos >= threshold).astype(np.int64),
            share=pos,
            threshold=threshold,
        )
    n_cls = int(arr.max())
    if positive_label < 1 or positive_label > n_cls:
        raise InvalidInputError(
            f"positive label {positive_label} not in label image {p} (1..{n_cls})"
        )
    fr = np.stack(
        [patch_fractions(arr == c, xy, patch_size_level0, scale) for c in range(n_cls + 1)], 1
    )
    tissue = fr[:, 1:]
    cls = np.where(tissue.max(axis=1) > 0, tissue.argmax(axis=1) + 1, 0).astype(np.int64)
    names = tuple((label_names or {}).get(c, f"class{c}") for c in range(n_cls + 1))
    # A label image marks tissue exactly (lumen and white gaps are label 0), so the rule is taken
    # relative to the labelled tissue in the patch: positive when the positive class covers at
    # least `threshold` of it. A lesion mask drawn by a pathologist includes such gaps, hence the
    # plain area rule above.
    labelled = tissue.sum(axis=1) if relative_to_tissue else np.ones(fr.shape[0])
    pos_share = np.where(labelled > 0, fr[:, positive_label] / np.maximum(labelled, 1e-12), 0.0)
    return Truth(
        fractions=fr,
        labels=(pos_share >= threshold).astype(np.int64),
        classes=cls,
        class_names=names,
        share=pos_share,
        threshold=threshold,
    )


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


@dataclass
class Summary:
    """Runs of one (slide, model, variant, k) over the repetitions."""

    slide: str
    model: str
    variant: str
    k: int
    n: int
    best_f1: float  # the paper's number: best of R
    mean_f1: float
    std_f1: float
    min_f1: float
    precision: float
    recall: float
    predicted_positive: float
    positive_ratio: float
    all_positive_f1: float
    macro_f1: float | None = None


def summarize(records: Sequence[RunRecord], positive_ratio: Mapping[str, float]) -> list[Summary]:
    """Group runs by (slide, model, variant, k) and reduce over repetitions."""
    groups: dict[tuple[str, str, str, int], list[RunRecord]] = {}
    for rec in records:
        groups.setdefault((rec.slide, rec.model, rec.variant, rec.k), []).append(rec)
    out: list[Summary] = []
    for (slide, model, variant, k), rs in groups.items():
        f1 = np.array([r.f1 for r in rs])
        mf = [r.macro_f1 for r in rs if r.macro_f1 is not None]
        pr = positive_ratio.get(slide, float("nan"))
        out.append(
            Summary(
                slide=slide,
                model=model,
                variant=variant,
                k=k,
                n=len(rs),
                best_f1=float(f1.max()),
                mean_f1=float(f1.mean()),
                std_f1=float(f1.std()),
                min_f1=float(f1.min()),
                precision=float(np.mean([r.precision for r in rs])),
                recall=float(np.mean([r.recall for r in rs])),
                predicted_positive=float(np.mean([r.predicted_positive for r in rs])),
                positive_ratio=pr,
                all_positive_f1=all_positive_f1(pr),
                macro_f1=float(np.mean(mf)) if mf else None,
            )
        )
    return out


def paired_comparison(records: Sequence[RunRecord], reference: str) -> list[dict[str, Any]]:
    """Each variant against ``reference`` on the same seed draws (same slide, model, k, rep).

    Returns one row per (model, variant, k) with the number of draws where the variant's F1 is
    higher (``wins``), equal within 0.005 (``ties``) or lower (``losses``) than the reference's,
    the mean difference, and the worst one (most negative).
    """
    ref = {(r.slide, r.model, r.k, r.rep): r.f1 for r in records if r.variant == reference}
    rows: dict[tuple[str, str, int], list[float]] = {}
    for r in records:
        key = (r.slide, r.model, r.k, r.rep)
        if r.variant != reference and key in ref:
            rows.setdefault((r.model, r.variant, r.k), []).append(r.f1 - ref[key])
    out: list[dict[str, Any]] = []
    for (model, variant, k), diffs in rows.items():
        d = np.asarray(diffs)
        out.append(
            {
                "model": model,
                "variant": variant,
                "k": k,
                "reference": reference,
                "wins": int(np.sum(d > 0.005)),
                "ties": int(np.sum(np.abs(d) <= 0.005)),
                "losses": int(np.sum(d < -0.005)),
                "mean_diff": float(d.mean()),
                "worst_diff": float(d.min()),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _pm(values: Sequence[float]) -> str:
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.3f} ± {a.std():.3f}" if a.size > 1 else f"{a.mean():.3f}"


def write_markdown(
    summaries: Sequence[Summary],
    path: str | os.PathLike[str] | None = None,
    *,
    paired: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Markdown tables: per (model, variant, k) over slides, then per slide.

    The first table's "mean F1" is the mean over slides of each slide's mean over repetitions
    (± the spread over slides); "best-of-R" is the mean over slides of the paper's number.
    """
    lines = [
        "| model | variant | k | mean F1 (± over slides) | best-of-R F1 | min F1 | precision "
        "| recall | pred. pos. | all-positive F1 | macro F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys: dict[tuple[str, str, int], list[Summary]] = {}
    for s in summaries:
        keys.setdefault((s.model, s.variant, s.k), []).append(s)
    for (model, variant, k), ss in keys.items():
        mf = [s.macro_f1 for s in ss if s.macro_f1 is not None]
        lines.append(
            f"| {model} | {variant} | {k} | {_pm([s.mean_f1 for s in ss])} | "
            f"{_pm([s.best_f1 for s in ss])} | {np.mean([s.min_f1 for s in ss]):.3f} | "
            f"{np.mean([s.precision for s in ss]):.3f} | {np.mean([s.recall for s in ss]):.3f} | "
            f"{np.mean([s.predicted_positive for s in ss]):.3f} | "
            f"{np.mean([s.all_positive_f1 for s in ss]):.3f} | "
            f"{(f'{np.mean(mf):.3f}' if mf else '')} |"
        )
    lines += [
        "",
        "| slide | model | variant | k | mean F1 ± std over R | best-of-R | positive ratio "
        "| all-positive F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.slide} | {s.model} | {s.variant} | {s.k} | {s.mean_f1:.3f} ± {s.std_f1:.3f} | "
            f"{s.best_f1:.3f} | {s.positive_ratio:.3f} | {s.all_positive_f1:.3f} |"
        )
    if paired:
        lines += [
            "",
            f"Paired with `{paired[0]['reference']}` on the same seed draws (F1 difference):",
            "",
            "| model | variant | k | wins | ties | losses | mean diff | worst diff |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in paired:
            lines.append(
                f"| {p['model']} | {p['variant']} | {p['k']} | {p['wins']} | {p['ties']} | "
                f"{p['losses']} | {p['mean_diff']:+.3f} | {p['worst_diff']:+.3f} |"
            )
    text = "\n".join(lines) + "\n"
    if path is not None:
        _atomic_write(Path(path), text)
    return text


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot_f1(summaries: Sequence[Summary], path: str | os.PathLike[str]) -> Path:
    """F1 (mean over slides of the mean over repetitions, bars = spread) vs seeds, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({s.model for s in summaries})
    variants = list(dict.fromkeys(s.variant for s in summaries))
    all_ks = sorted({s.k for s in summaries})
    # Up to 20 distinguishable colours, then line styles: evaluations compare many variants.
    cmap = plt.get_cmap("tab20")
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(
        1, len(models), figsize=(4.8 * len(models) + 3.5, 4.4), squeeze=False, sharey=True
    )
    for ax, model in zip(axes[0], models, strict=True):
        for i, v in enumerate(variants):
            ss = [s for s in summaries if s.model == model and s.variant == v]
            ks = sorted({s.k for s in ss})
            if not ks:
                continue
            mean = [np.mean([s.mean_f1 for s in ss if s.k == k]) for k in ks]
            std = [np.mean([s.std_f1 for s in ss if s.k == k]) for k in ks]
            ax.errorbar(
                ks,
                mean,
                yerr=std,
                marker="o",
                ms=4,
                capsize=2,
                lw=1.2,
                label=v,
                color=cmap(i % 20),
                ls=styles[(i // 20) % len(styles)],
            )
        base = [s.all_positive_f1 for s in summaries if s.model == model]
        if base:
            ax.axhline(float(np.mean(base)), color="black", ls="--", lw=1, label="all positive")
        ax.set_title(model)
        ax.set_xlabel("seed patches per class")
        ax.set_xticks(all_ks)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("F1 (mean over repetitions and slides)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right", frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 3.3 / (4.8 * len(models) + 3.5), 1))
    out = Path(path)
    tmp = out.with_name(out.name + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def draw_overlay(
    thumbnail: npt.NDArray[np.uint8],
    emb: Embeddings,
    pred: npt.ArrayLike,
    seeds: npt.ArrayLike,
    truth_region: npt.NDArray[np.bool_] | None,
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """Thumbnail with predicted positive patches (red tint), truth outline (yellow), seeds.

    Each patch is drawn as its central stride x stride cell so overlapping patches do not stack.
    Seeds: green dots positive, blue dots negative.
    """
    from PIL import Image, ImageDraw

    th, tw = thumbnail.shape[:2]
    meta = emb.meta
    fx, fy = tw / meta.level0_width, th / meta.level0_height
    base = Image.fromarray(thumbnail).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    p = np.asarray(pred)
    s = np.asarray(seeds)
    ctr = emb.centers()
    half = max(meta.stride_level0, 1) / 2.0
    for i in range(emb.n_patches):
        cx, cy = ctr[i]
        box = ((cx - half) * fx, (cy - half) * fy, (cx + half) * fx, (cy + half) * fy)
        draw.rectangle(box, fill=(230, 30, 30, 110) if p[i] == 1 else (40, 90, 230, 45))
    img = Image.alpha_composite(base, layer)
    if truth_region is not None:
        reg = Image.fromarray(truth_region.astype(np.uint8) * 255).resize(
            (tw, th), Image.Resampling.NEAREST
        )
        r = np.asarray(reg) > 0
        edge = r & ~(np.roll(r, 1, 0) & np.roll(r, -1, 0) & np.roll(r, 1, 1) & np.roll(r, -1, 1))
        arr = np.asarray(img).copy()
        edge = edge | np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
        arr[edge] = (255, 220, 0, 255)
        img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    rad = max(3, int(min(tw, th) / 150))
    for i in np.flatnonzero(s >= 0).tolist():
        cx, cy = ctr[i][0] * fx, ctr[i][1] * fy
        colour = (0, 200, 0, 255) if s[i] == 1 else (0, 60, 255, 255)
        draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=colour, outline=(0, 0, 0, 255))
    if title:
        draw.text((5, 5), title, fill=(0, 0, 0, 255))
    out = Path(path)
    tmp = out.with_name(out.name + ".partial.png")
    img.convert("RGB").save(tmp)
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------------
# Slides, cached embeddings, the whole run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One slide with its ground truth.

    ``truth`` is a mask image, a label image (``labels=True``, e.g. ``*_labels.png`` of
    ``histosic mosaic``) or QuPath GeoJSON; ``mpp`` is needed for plain images without
    resolution metadata (DigestPath: 0.5).
    """

    slide: Path
    truth: Path
    mpp: float | None = None
    labels: bool = False
    positive: str | None = None
    name: str = ""
    relative_to_tissue: bool = True  # label images: 50% of the tissue (True) or of the area

    @property
    def label(self) -> str:
        return self.name or self.slide.stem


@dataclass
class EvalConfig:
    """Settings of :func:`evaluate_cases` (tiling, protocol, outputs)."""

    models: tuple[str, ...] = ("he-features",)
    variants: tuple[Variant, ...] = (Variant(preprocess="none"), Variant())
    ks: tuple[int, ...] = (1, 3, 5)
    repeats: int = 5
    target_mpp: float = 0.5
    patch_size: int = 256
    overlap: float = 0.5
    tissue_threshold: float = 0.5
    random_state: int = 0
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    overlay_variant: int = -1  # index into variants of the run drawn in the overlays
    overlay_k: int = 3
    batch_size: int = 32
    device: str = "cpu"
    seed_draw: str = "random"


def cache_path(case: Case, model: str, cfg: EvalConfig) -> Path:
    """Where :func:`embed_cached` keeps the embedding of ``case`` by ``model`` under ``cfg``.

    The name holds a digest of the slide's fingerprint, the model and the tiling, so a changed
    slide or setting gets a new file. An embedding made elsewhere (another backbone, another
    machine) can be evaluated by placing it under this name.
    """
    from histosic.store import file_fingerprint

    if not case.slide.is_file():
        raise SlideNotFoundError(f"slide {case.slide} does not exist")
    key = json.dumps(
        [
            file_fingerprint(case.slide),
            model,
            cfg.target_mpp,
            cfg.patch_size,
            cfg.overlap,
            cfg.tissue_threshold,
            case.mpp,
        ],
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
    return cfg.cache_dir / f"{case.slide.stem}-{safe}-{cfg.patch_size}px-{digest}.h5"


def embed_cached(case: Case, model: str, cfg: EvalConfig) -> Path:
    """Embed a slide once per (slide, model, tiling) into ``cfg.cache_dir``; reuse the file."""
    from histosic.embed import embed_slide
    from histosic.tiling import TilingConfig

    out = cache_path(case, model, cfg)
    if out.is_file():
        return out
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    tiling = TilingConfig(
        target_mpp=cfg.target_mpp,
        patch_size=cfg.patch_size,
        overlap=cfg.overlap,
        tissue_threshold=cfg.tissue_threshold,
    )
    t0 = time.perf_counter()
    embed_slide(
        case.slide,
        out,
        model=model,
        tiling=tiling,
        slide_mpp=case.mpp,
        batch_size=cfg.batch_size,
        device=cfg.device,
        workers=0,
    )
    log.info(
        "embedded %s with %s in %.1f s -> %s", case.slide, model, time.perf_counter() - t0, out
    )
    return out


def _thumbnail(case: Case, max_size: int = 1024) -> npt.NDArray[np.uint8]:
    from histosic.slides import open_slide

    slide = open_slide(case.slide, mpp=case.mpp)
    try:
        thumb = slide.get_thumbnail(max_size)
    finally:
        close = getattr(slide, "close", None)
        if callable(close):
            close()
    return np.asarray(thumb.convert("RGB") if hasattr(thumb, "convert") else thumb, dtype=np.uint8)


def _truth_region(case: Case) -> npt.NDArray[np.bool_] | None:
    """The positive region at mask resolution (for the overlay outline); None for GeoJSON."""
    if case.truth.suffix.lower() in (".geojson", ".json"):
        return None
    from PIL import Image

    with Image.open(case.truth) as im:
        arr = np.asarray(im if im.mode in ("P", "L") else im.convert("L"))
    return np.asarray(arr == 1 if case.labels else arr > 127, dtype=bool)


def evaluate_cases(
    cases: Sequence[Case],
    cfg: EvalConfig,
    out_dir: str | os.PathLike[str],
    *,
    label_names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Embed (cached), run the protocol for every model and variant, write the reports.

    Writes into ``out_dir``: ``results.json`` (settings, every run, summaries), ``results.md``
    (tables), ``f1_vs_seeds.png`` and ``overlay-<slide>-<model>.png`` per slide and model.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    from histosic.store import read_embeddings

    if not cases:
        raise InvalidInputError("no slides to evaluate; give at least one slide with its truth")
    if cfg.seed_draw not in SEED_DRAWS:
        raise InvalidInputError(
            f"seed draw must be one of {', '.join(SEED_DRAWS)}, got {cfg.seed_draw!r}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[RunRecord] = []
    ratios: dict[str, float] = {}
    slides_info: list[dict[str, Any]] = []
    ov_idx = cfg.overlay_variant % len(cfg.variants)
    for case in cases:
        for model in cfg.models:
            t0 = time.perf_counter()
            path = embed_cached(case, model, cfg)
            emb = read_embeddings(path)
            truth = load_truth(
                case.truth,
                emb.coords,
                emb.meta.patch_size_level0,
                slide_size=(emb.meta.level0_width, emb.meta.level0_height),
                positive=case.positive,
                labels=case.labels,
                label_names=label_names,
                relative_to_tissue=case.relative_to_tissue,
            )
            ratios[case.label] = truth.positive_ratio
            kept: dict[str, Any] = {}

            def keep(
                v: Variant,
                k: int,
                rep: int,
                res: ClusterResult | IntArray,
                seeds: IntArray,
                _kept: dict[str, Any] = kept,
            ) -> None:
                if v == cfg.variants[ov_idx] and k == cfg.overlay_k and rep == 0:
                    labels = res if isinstance(res, np.ndarray) else res.labels
                    _kept["pred"] = (np.asarray(labels) == 1).astype(np.int64)
                    _kept["seeds"] = seeds

            recs = run_protocol(
                emb.features,
                truth,
                cfg.variants,
                ks=cfg.ks,
                repeats=cfg.repeats,
                nuisance=emb.nuisance(),
                grid=emb.grid_index(),
                slide=case.label,
                model=model,
                random_state=cfg.random_state,
                keep=keep,
                seed_draw=cfg.seed_draw,
            )
            records.extend(recs)
            slides_info.append(
                {
                    "slide": str(case.slide),
                    "label": case.label,
                    "truth": str(case.truth),
                    "model": model,
                    "embedding": str(path),
                    "n_patches": emb.n_patches,
                    "positive_ratio": truth.positive_ratio,
                    "seconds": time.perf_counter() - t0,
                }
            )
            log.info(
                "%s / %s: %d patches, positive ratio %.2f, %d runs in %.1f s",
                case.label,
                model,
                emb.n_patches,
                truth.positive_ratio,
                len(recs),
                time.perf_counter() - t0,
            )
            if "pred" in kept:
                try:
                    draw_overlay(
                        _thumbnail(case),
                        emb,
                        kept["pred"],
                        kept["seeds"],
                        _truth_region(case),
                        out / f"overlay-{case.label}-{model}.png",
                        title=f"{case.label} {model} {cfg.variants[ov_idx].name} k={cfg.overlay_k}",
                    )
                except (ImportError, OSError) as err:
                    log.warning("no overlay for %s: %s", case.label, err)
    summaries = summarize(records, ratios)
    paired = paired_comparison(records, cfg.variants[0].name) if len(cfg.variants) > 1 else []
    result: dict[str, Any] = {
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "variants": [v.name for v in cfg.variants],
        },
        "slides": slides_info,
        "summaries": [asdict(s) for s in summaries],
        "paired": paired,
        "runs": [asdict(r) for r in records],
    }
    _atomic_write(out / "results.json", json.dumps(result, indent=1))
    write_markdown(summaries, out / "results.md", paired=paired)
    try:
        plot_f1(summaries, out / "f1_vs_seeds.png")
    except ImportError as err:
        log.warning("no plot (matplotlib missing: %s)", err)
    return result
