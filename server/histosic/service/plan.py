"""StartEmbedding's checks before a job exists: the resolution range, the patch count against the
server's limit, and the embedding's identity (what makes two embeddings the same) and file name.

Everything here is decided on the request thread from the slide's header (size and resolution),
without reading pixels or loading a model, so a request that would block the queue for hours is
refused in milliseconds with the numbers that decide it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histosic.config import MPP_RANGE
from histosic.errors import InvalidInputError, ResourceExhaustedError
from histosic.store import EmbeddingMeta
from histosic.tiling import TilingConfig, patch_size_level0, stride_level0

__all__ = ["EmbeddingPlan", "check_mpp", "plan_embedding"]


def check_mpp(name: str, value: float, *, hint: str = "") -> float:
    """``value`` as a float when it is a resolution histosic accepts (``config.MPP_RANGE``)."""
    lo, hi = MPP_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InvalidInputError(
            f"{name} must be between {lo:g} and {hi:g} microns per pixel, got {value!r} "
            f"(0.25 = 40x, 0.5 = 20x){hint}"
        )
    return float(value)


@dataclass(frozen=True)
class EmbeddingPlan:
    """What a StartEmbedding request will make, known before the job starts.

    ``identity`` holds every value that changes the patches or their features: the slide's content
    fingerprint, its level-0 resolution as used, the tiling, the model and its weights. Two
    requests with equal identities make the same file; jobs are merged only then.
    """

    slide_fingerprint: str
    slide_mpp: float  # level-0 microns per pixel, as the job will use it
    width: int
    height: int
    n_candidates: int  # grid patches before the tissue filter: an upper bound of the job's size
    identity: tuple[tuple[str, Any], ...]

    def file_name(self, base: str) -> str:
        """``base`` (``<stem>.<model>.<tiling>.h5``) with a short hash of the identity, so that
        slides with the same name in two folders, or one slide at two resolutions, never share a
        file."""
        digest = hashlib.sha256(json.dumps(self.identity).encode()).hexdigest()[:10]
        stem = base[:-3] if base.endswith(".h5") else base
        return f"{stem}.{digest}.h5"

    def matches(self, meta: EmbeddingMeta) -> bool:
        """True when a stored embedding has this plan's identity (older files: no weights id)."""
        mine = dict(self.identity)
        theirs = identity_of(meta)
        if not meta.weights_hash:
            mine.pop("weights", None)
            theirs.pop("weights", None)
        return mine == theirs


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def identity(
    fingerprint: str, slide_mpp: float, model: str, weights: str, tiling: TilingConfig
) -> tuple[tuple[str, Any], ...]:
    return (
        ("slide_fingerprint", fingerprint),
        ("slide_mpp", _round(slide_mpp)),
        ("model", model),
        ("weights", weights),
        ("target_mpp", _round(tiling.target_mpp)),
        ("patch_size", int(tiling.patch_size)),
        ("overlap", _round(tiling.overlap)),
        ("tissue_threshold", _round(tiling.tissue_threshold)),
    )


def identity_of(meta: EmbeddingMeta) -> dict[str, Any]:
    """The identity a stored embedding records, in the form of :attr:`EmbeddingPlan.identity`."""
    tiling = TilingConfig(
        target_mpp=meta.target_mpp,
        patch_size=meta.patch_size,
        overlap=meta.overlap,
        tissue_threshold=meta.tissue_threshold,
    )
    return dict(identity(meta.slide_fingerprint, meta.mpp, meta.model, meta.weights_hash, tiling))


def plan_embedding(
    slide: Path,
    slide_ref: str,
    *,
    fingerprint: str,
    model: str,
    weights: str,
    tiling: TilingConfig,
    slide_mpp: float | None,
    max_patches: int,
) -> EmbeddingPlan:
    """Open the slide's header, check its resolution and the grid size, and name the result.

    Raises
    ------
    InvalidInputError
        A resolution outside ``config.MPP_RANGE`` (given, or read from the slide's metadata).
    ResourceExhaustedError
        The patch grid has more than ``max_patches`` patches (the message says how many).
    """
    from histosic.slides import open_slide

    with open_slide(slide, mpp=slide_mpp) as s:
        width, height = s.dimensions
        mpp, source = s.mpp, s.mpp_source
    if slide_mpp is None:
        check_mpp(
            f"the resolution of slide {slide_ref!r} ({source})",
            mpp,
            hint="; give slide_mpp to override it",
        )
    size = patch_size_level0(tiling, mpp)
    stride = stride_level0(tiling, mpp)
    nx = (width - size) // stride + 1 if width >= size else 0
    ny = (height - size) // stride + 1 if height >= size else 0
    n = nx * ny
    if n > max_patches:
        raise ResourceExhaustedError(
            f"slide {slide_ref!r} ({width} x {height} px at {mpp:g} um/px) cut at "
            f"{tiling.target_mpp:g} um/px into {tiling.patch_size} px patches with overlap "
            f"{tiling.overlap:g} is a grid of {n:,} patches; this server embeds at most "
            f"{max_patches:,} per job: ask a larger target_mpp or patch_size, or a smaller overlap"
        )
    return EmbeddingPlan(
        slide_fingerprint=fingerprint,
        slide_mpp=mpp,
        width=width,
        height=height,
        n_candidates=n,
        identity=identity(fingerprint, mpp, model, weights, tiling),
    )
