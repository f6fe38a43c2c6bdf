"""Seed points (QuPath point annotations, level-0 pixels) to seeded patch indices for SIC.

A point seeds the tissue patch whose centre is nearest among the patches that contain it. Points
outside the slide, off tissue, without a class or on a patch that is also seeded with another
class are not used; each comes back as an :class:`IgnoredSeed` with the reason, so a user sees why
a click did not count.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from histosic.config import DEFAULT_POSITIVE_CLASS
from histosic.errors import InvalidInputError, shown, shown_list
from histosic.outputs.qupath_classes import split_class_names

if TYPE_CHECKING:
    from histosic.store import Embeddings

__all__ = [
    "IgnoredSeed",
    "SeedMapping",
    "SeedPoint",
    "map_seeds",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedPoint:
    """One seed click: level-0 pixel coordinates and a QuPath class name ("" = unclassified)."""

    x: float
    y: float
    class_name: str


@dataclass(frozen=True)
class IgnoredSeed:
    """A seed point that was not used, and why (a sentence meant for the user).

    Attributes
    ----------
    point : SeedPoint
    reason : str
    index : int
        The point's position in the ``points`` given to :func:`map_seeds` (identical points are
        told apart by it).
    """

    point: SeedPoint
    reason: str
    index: int


@dataclass
class SeedMapping:
    """Seed points mapped onto the patches of one embedding file.

    Attributes
    ----------
    seeds : ndarray of shape (n_patches,), int64
        SIC class id of each patch, -1 where unseeded (the ``seeds`` argument of
        :func:`histosic.cluster.seeded_clustering`).
    class_names : tuple of str
        Class name of each class id (index = id). In binary mode id 1 is the positive class (its
        derived classes included) and id 0 the negative class, which collects every other seed
        class under their common name (``Other`` when they share none).
    positive : int or None
        Id of the positive class in binary mode; None in multi-class mode.
    used : list of SeedPoint
        The points that seed a patch.
    patch_index : ndarray of shape (len(used),), int64
        The patch each used point seeds.
    ignored : list of IgnoredSeed
        Points not used, each with its reason.
    seed_class_names : dict of str to str
        Original seed class name -> the class name it was mapped to (binary mode merges negatives).
    """

    seeds: npt.NDArray[np.int64]
    class_names: tuple[str, ...]
    positive: int | None
    used: list[SeedPoint] = field(default_factory=list)
    patch_index: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ignored: list[IgnoredSeed] = field(default_factory=list)
    seed_class_names: dict[str, str] = field(default_factory=dict)

    @property
    def n_used(self) -> int:
        return len(self.used)

    @property
    def n_ignored(self) -> int:
        return len(self.ignored)

    def seeded_patches_per_class(self) -> dict[str, int]:
        """Number of seeded patches of each class, by class name."""
        counts = np.bincount(self.seeds[self.seeds >= 0], minlength=len(self.class_names))
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}

    def ignored_reasons(self) -> dict[str, int]:
        """How many points were ignored for each kind of reason (the text before the colon)."""
        return dict(Counter(i.reason.split(":", 1)[0] for i in self.ignored))

    def summary(self, max_listed: int = 5) -> str:
        """A few lines for people: points used and ignored, with the reasons.

        The first ``max_listed`` ignored points are listed with their coordinates, so they can be
        found in QuPath.
        """
        per_class = ", ".join(f"{n} {name}" for name, n in self.seeded_patches_per_class().items())
        lines = [
            f"seeds: {self.n_used} used, seeding {per_class} patches; {self.n_ignored} ignored"
        ]
        for reason, n in sorted(self.ignored_reasons().items()):
            lines.append(f"  ignored {n}: {reason}")
        for item in self.ignored[:max_listed]:
            p = item.point
            where = f"({p.x:.0f}, {p.y:.0f}) {p.class_name or '(no class)'}"
            lines.append(f"    {where}: {item.reason}")
        if self.n_ignored > max_listed:
            lines.append(f"    ... and {self.n_ignored - max_listed} more")
        merged: dict[str, list[str]] = {}
        for seed_name, class_name in sorted(self.seed_class_names.items()):
            if seed_name != class_name:
                merged.setdefault(class_name, []).append(seed_name)
        for class_name, seed_names in merged.items():
            lines.append(f"  class {class_name!r} = seed classes {', '.join(seed_names)}")
        if self.positive is not None:
            lines.append(f"  positive class: {self.class_names[self.positive]!r}")
        return "\n".join(lines)


def _resolve_name(name: str, names: Iterable[str]) -> str | None:
    """Exact class name, else a unique case-insensitive match (QuPath names are case-sensitive)."""
    names = list(names)
    if name in names:
        return name
    folded = [n for n in names if n.casefold() == name.casefold()]
    return folded[0] if len(folded) == 1 else None


def _parts(name: str) -> tuple[str, ...]:
    return tuple(split_class_names(name))


def _derives_from(name: str, base: str) -> bool:
    """True when ``name`` is ``base`` or a class derived from it (``Tumor: Positive`` from
    ``Tumor``), as QuPath's ``PathClass.isDerivedFrom`` / ``getParentClass`` chain sees it."""
    b = _parts(base)
    return bool(b) and _parts(name)[: len(b)] == b


def _ancestors(names: Iterable[str]) -> list[str]:
    """Every name and every class it derives from (``Tumor: Positive`` -> ``Tumor``)."""
    out: set[str] = set()
    for n in names:
        parts = _parts(n)
        out.update(": ".join(parts[:k]) for k in range(1, len(parts) + 1))
    return sorted(out)


def _negative_name(negatives: Sequence[str], pos: str) -> str:
    """One name for the negative seed classes: their own when they agree (``Stroma`` and
    ``Stroma: Negative`` give ``Stroma``), else QuPath's catch-all ``Other``."""
    parts = [_parts(n) for n in negatives]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if common:
        return ": ".join(common)
    return "Other" if pos != "Other" else "Negative"


def _class_ids(
    names_used: Sequence[str], positive: str, multiclass: bool
) -> tuple[tuple[str, ...], int | None, dict[str, str]]:
    """Class names per id, the positive id, and seed name -> class name.

    Names are QuPath's full class strings; a derived class (``Tumor: Positive``) is its own class
    in multi-class mode, and counts as its base class in binary mode.
    """
    distinct = sorted(set(names_used))
    if multiclass and len(distinct) >= 2:
        # Two classes are a binary problem for SIC; its positive class must be one of them.
        pos_id: int | None = None
        if len(distinct) == 2:
            pos_mc = _resolve_name(positive, distinct)
            if pos_mc is None:
                derived = [n for n in distinct if _derives_from(n, positive)]
                pos_mc = derived[0] if len(derived) == 1 else None
            pos_id = distinct.index(pos_mc) if pos_mc else 1
        return tuple(distinct), pos_id, {n: n for n in distinct}
    if multiclass:
        raise InvalidInputError(
            f"all usable seeds have the class {shown(distinct[0])}; clustering needs seeds of at "
            "least "
            "two classes: add points on tissue of another class"
        )
    # The positive class may be named by a seed class or a class a seed class derives from.
    pos = _resolve_name(positive, _ancestors(distinct))
    if pos is None:
        raise InvalidInputError(
            f"no usable seed has the positive class {shown(positive)} (or a class derived from "
            f"it); the seed classes are {shown_list(distinct)}. Pass the positive class with "
            "--positive NAME (positive=...), or ask for multi-class clustering with --multiclass"
        )
    negatives = [n for n in distinct if not _derives_from(n, pos)]
    if not negatives:
        raise InvalidInputError(
            f"all usable seeds have the class {shown(pos)} (or a class derived from it: "
            f"{shown_list(distinct)}); binary clustering needs seeds of at least one other class "
            f"too (e.g. 'Stroma' or 'Other'): add a few points on tissue that is not {shown(pos)}"
        )
    negative_name = _negative_name(negatives, pos)
    mapping = {n: (pos if _derives_from(n, pos) else negative_name) for n in distinct}
    return (negative_name, pos), 1, mapping


def containing_patches(
    centres: npt.NDArray[np.float64], xy: npt.NDArray[np.float64], half: float
) -> npt.NDArray[np.int64]:
    """For each point, the patch that contains it and whose centre is nearest; -1 for none.

    A patch contains a point when the point is within ``half`` (half the patch side) of its
    centre on both axes. Ties in distance go to the lower patch index. Centres are binned into
    cells one patch side wide, so only the 3 x 3 cells around a point can hold a patch that
    contains it: no tree is built (and scipy.spatial, 0.3 s to import, is not needed).
    """
    m = xy.shape[0]
    best = np.full(m, -1, dtype=np.int64)
    if m == 0 or centres.shape[0] == 0:
        return best
    side = max(2.0 * half, 1e-9)
    origin = centres.min(axis=0)
    cells = np.floor((centres - origin) / side).astype(np.int64)
    width = int(cells[:, 0].max()) + 3  # room for the neighbours of every point's cell
    key = (cells[:, 1] + 1) * width + (cells[:, 0] + 1)
    order = np.argsort(key, kind="stable")  # within a cell: ascending patch index
    sorted_key = key[order]
    pcell = np.floor((xy - origin) / side).astype(np.int64)
    height = int(cells[:, 1].max()) + 3
    best_d = np.full(m, np.inf)
    tol = half + 1e-9
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            cx, cy = pcell[:, 0] + 1 + dx, pcell[:, 1] + 1 + dy
            inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
            k = np.where(inside, cy * width + cx, -1)
            lo = np.searchsorted(sorted_key, k, side="left")  # every key > 0: -1 finds none
            hi = np.searchsorted(sorted_key, k, side="right")
            for j in range(int((hi - lo).max(initial=0))):
                rows = np.flatnonzero(lo + j < hi)
                idx = order[lo[rows] + j]
                delta = np.abs(centres[idx] - xy[rows])
                ok = (delta[:, 0] <= tol) & (delta[:, 1] <= tol)
                rows, idx, d = rows[ok], idx[ok], np.hypot(delta[ok, 0], delta[ok, 1])
                better = (d < best_d[rows]) | ((d == best_d[rows]) & (idx < best[rows]))
                best[rows[better]] = idx[better]
                best_d[rows[better]] = d[better]
    return best


def _nearest_distances(
    centres: npt.NDArray[np.float64], xy: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Distance from each point to the nearest centre (the message of an off-tissue seed)."""
    if xy.shape[0] * centres.shape[0] > 50_000_000:  # many points off tissue: a tree pays
        from scipy.spatial import cKDTree

        d, _ = cKDTree(centres).query(xy, k=1)
        return np.asarray(d, dtype=np.float64)
    out = np.empty(xy.shape[0])
    for i, (x, y) in enumerate(xy):
        out[i] = float(np.sqrt(((centres[:, 0] - x) ** 2 + (centres[:, 1] - y) ** 2).min()))
    return out


def map_seeds(
    emb: Embeddings,
    points: Iterable[SeedPoint],
    *,
    positive: str = DEFAULT_POSITIVE_CLASS,
    multiclass: bool = False,
) -> SeedMapping:
    """Map seed points to the tissue patches that contain them.

    Parameters
    ----------
    emb : Embeddings
        The slide's patches; only their coordinates and metadata are used.
    points : iterable of SeedPoint
        Level-0 pixel coordinates with QuPath class names.
    positive : str, default "Tumor"
        Positive class for binary clustering; a class derived from it (``Tumor: Positive``, as
        QuPath writes ``"names": ["Tumor", "Positive"]``) is positive too. Every other seed class
        becomes one negative class, named as the seeds are when they agree (``Stroma``, or the
        class they all derive from), else ``Other``. Matched exactly, else case-insensitively when
        that is unique.
    multiclass : bool, default False
        Keep every seed class as its own class, a derived class by its full name (needs three or
        more classes; with two classes the result is the same as binary).

    Returns
    -------
    SeedMapping

    Raises
    ------
    InvalidInputError
        No point is usable (all off tissue, outside the slide or unclassified), the positive class
        has no usable seed, or only one class is left.
    """
    pts = list(points)
    meta = emb.meta
    half = meta.patch_size_level0 / 2.0
    width, height = meta.level0_width, meta.level0_height
    n = emb.n_patches
    ignored: list[IgnoredSeed] = []
    # Points travel with their index in `pts`, which every IgnoredSeed records.
    candidates: list[tuple[int, SeedPoint]] = []
    for at, p in enumerate(pts):
        if not p.class_name.strip():
            ignored.append(
                IgnoredSeed(p, "no classification: set a class on the point in QuPath", at)
            )
        elif not (math.isfinite(p.x) and math.isfinite(p.y)):
            ignored.append(IgnoredSeed(p, f"invalid coordinates: ({p.x}, {p.y})", at))
        elif p.x < 0 or p.y < 0 or (width > 0 and p.x >= width) or (height > 0 and p.y >= height):
            ignored.append(
                IgnoredSeed(
                    p,
                    f"outside the slide: ({p.x:.1f}, {p.y:.1f}) is not inside the "
                    f"{width} x {height} px image",
                    at,
                )
            )
        else:
            candidates.append((at, p))

    patch_of: list[int] = []
    located: list[tuple[int, SeedPoint]] = []
    if candidates and n:
        centres = emb.centers()
        xy = np.array([[p.x, p.y] for _, p in candidates], dtype=np.float64)
        chosen = containing_patches(centres, xy, half)
        off = np.flatnonzero(chosen < 0)
        nearest = _nearest_distances(centres, xy[off]) if off.size else np.empty(0)
        far = dict(zip(off.tolist(), nearest.tolist(), strict=True))
        for row, (at, p) in enumerate(candidates):
            if chosen[row] < 0:
                ignored.append(
                    IgnoredSeed(
                        p,
                        "off tissue: no tissue patch contains this point (nearest patch centre "
                        f"{far[row]:.0f} px away)",
                        at,
                    )
                )
            else:
                patch_of.append(int(chosen[row]))
                located.append((at, p))
    else:
        for at, p in candidates:
            ignored.append(IgnoredSeed(p, "off tissue: the embedding file has no patches", at))

    # A patch clicked with two different classes cannot seed either. In binary mode the positive
    # class and its derived classes (``Tumor``, ``Tumor: Positive``) are one class.
    pos_found = (
        None
        if multiclass
        else _resolve_name(positive, _ancestors(p.class_name.strip() for _, p in located))
    )

    def class_key(p: SeedPoint) -> str:
        name = p.class_name.strip()
        return pos_found if pos_found is not None and _derives_from(name, pos_found) else name

    classes_on_patch: dict[int, set[str]] = {}
    for (_, p), i in zip(located, patch_of, strict=True):
        classes_on_patch.setdefault(i, set()).add(class_key(p))
    used: list[SeedPoint] = []
    used_patch: list[int] = []
    for (at, p), i in zip(located, patch_of, strict=True):
        others = classes_on_patch[i] - {class_key(p)}
        if others:
            ignored.append(
                IgnoredSeed(
                    p,
                    f"conflicting classes: patch {i} is also seeded with "
                    f"{shown_list(sorted(others))}",
                    at,
                )
            )
        else:
            used.append(p)
            used_patch.append(i)

    if not used:
        reasons = Counter(i.reason.split(":", 1)[0] for i in ignored)
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "no points given"
        raise InvalidInputError(
            f"none of the {len(pts)} seed points can be used ({detail}); place classified "
            "points on tissue inside the slide that was embedded"
        )

    names_used = [p.class_name.strip() for p in used]
    class_names, positive_id, name_map = _class_ids(names_used, positive, multiclass)
    id_of = {name: i for i, name in enumerate(class_names)}
    seeds = np.full(n, -1, dtype=np.int64)
    patch_index = np.asarray(used_patch, dtype=np.int64)
    seeds[patch_index] = [id_of[name_map[name]] for name in names_used]
    mapping = SeedMapping(
        seeds=seeds,
        class_names=class_names,
        positive=positive_id,
        used=used,
        patch_index=patch_index,
        ignored=ignored,
        seed_class_names=name_map,
    )
    log.debug("%s", mapping.summary())
    return mapping
