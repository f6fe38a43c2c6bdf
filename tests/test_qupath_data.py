"""Generated embeddings and QuPath-style seed files shared by the qupath/seeds/cluster tests.

A real HDF5 embedding file of a made-up slide: a rectangular patch grid with 50% overlap, a
circular "tumour" whose features are shifted, and a hole of missing (non-tissue) patches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from histosic.store import EmbeddingMeta, Embeddings

__all__ = [
    "PATCH",
    "STRIDE",
    "make_embeddings",
    "qupath_point_feature",
    "seeds_from_truth",
    "write_seed_file",
]

PATCH = 256
STRIDE = 128


def make_embeddings(
    nx: int = 40,
    ny: int = 30,
    dim: int = 16,
    *,
    seed: int = 0,
    hole: bool = True,
    slide_path: str = "/nonexistent/slide.svs",
) -> tuple[Embeddings, npt.NDArray[np.bool_]]:
    """Embeddings on an nx x ny grid (minus a hole) and the per-patch truth (True = tumour)."""
    rng = np.random.default_rng(seed)
    mx, my = np.meshgrid(np.arange(nx), np.arange(ny))
    gx, gy = mx.ravel(), my.ravel()
    keep = np.ones(gx.shape, dtype=bool)
    if hole:
        # A block of background with no patches (off tissue), away from the tumour.
        keep &= ~((gx < nx // 5) & (gy < ny // 5))
    gx, gy = gx[keep], gy[keep]
    truth = (gx - 0.6 * nx) ** 2 + (gy - 0.5 * ny) ** 2 < (0.25 * min(nx, ny)) ** 2
    features = rng.normal(size=(gx.size, dim)).astype(np.float32)
    features[truth, : max(1, dim // 4)] += 2.0
    # Patches start at an offset so that coordinates are not trivially multiples of the stride.
    coords = np.stack([gx * STRIDE + 64, gy * STRIDE + 32], axis=1).astype(np.int64)
    meta = EmbeddingMeta(
        slide_path=slide_path,
        slide_fingerprint="sha256:test",
        level0_width=int(nx * STRIDE + PATCH + 64),
        level0_height=int(ny * STRIDE + PATCH + 32),
        mpp=0.5,
        target_mpp=0.5,
        patch_size=PATCH,
        patch_size_level0=PATCH,
        stride_level0=STRIDE,
        overlap=0.5,
        model="test-random",
        created="2026-01-01T00:00:00Z",
    )
    emb = Embeddings(
        features=features,
        coords=coords,
        meta=meta,
        tissue_fraction=rng.uniform(0.5, 1.0, gx.size).astype(np.float32),
        white_fraction=rng.uniform(0.0, 0.3, gx.size).astype(np.float32),
    )
    return emb, truth


def seeds_from_truth(
    emb: Embeddings,
    truth: npt.NDArray[np.bool_],
    n_per_class: int = 6,
    *,
    positive: str = "Tumor",
    negative: str = "Stroma",
    seed: int = 1,
) -> dict[str, npt.NDArray[np.float64]]:
    """Click positions (level-0 x, y, jittered inside the patch's central cell) per class."""
    rng = np.random.default_rng(seed)
    centres = emb.centers()
    out: dict[str, npt.NDArray[np.float64]] = {}
    for name, mask in ((positive, truth), (negative, ~truth)):
        idx = rng.choice(np.flatnonzero(mask), size=n_per_class, replace=False)
        jitter = rng.uniform(-STRIDE / 2 + 1, STRIDE / 2 - 1, size=(n_per_class, 2))
        out[name] = np.round(centres[idx] + jitter, 2)
    return out


def qupath_point_feature(
    xy: Any, class_name: str | None, *, color: list[int] | None = None
) -> dict[str, Any]:
    """A point annotation exactly as QuPath 0.5/0.6 exports it (PathObjectTypeAdapter.write).

    One point gives a ``Point`` geometry, several a ``MultiPoint`` (a PointsROI).
    """
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2).round(2).tolist()
    geometry: dict[str, Any] = (
        {"type": "Point", "coordinates": pts[0]}
        if len(pts) == 1
        else {"type": "MultiPoint", "coordinates": pts}
    )
    props: dict[str, Any] = {"objectType": "annotation"}
    if class_name is not None:
        props["classification"] = {"name": class_name, "color": color or [200, 0, 0]}
    return {
        "type": "Feature",
        "id": "0b8f3a52-6f0c-4c1e-8a43-7d7a5c7f2e11",
        "geometry": geometry,
        "properties": props,
    }


def write_seed_file(path: Path, features: list[dict[str, Any]], *, collection: bool = True) -> Path:
    data: Any = {"type": "FeatureCollection", "features": features} if collection else features
    path.write_text(json.dumps(data, indent=2))
    return path
