"""The colour view: one RGB colour per patch, similar patches similar colours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from histosic.colors import (
    colors_geojson,
    embed_3d,
    patch_colors,
    render_colors,
    scale_to_rgb,
)
from histosic.errors import InvalidInputError
from histosic.store import EmbeddingMeta, Embeddings


def _clusters(n_per: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 64)) * 8
    lab = np.repeat(np.arange(3), n_per)
    return (centres[lab] + rng.normal(size=(lab.size, 64))).astype(np.float32), lab


def _emb(n_side: int, X: np.ndarray) -> Embeddings:
    xs, ys = np.meshgrid(np.arange(n_side) * 64, np.arange(n_side) * 64)
    coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)[: X.shape[0]]
    meta = EmbeddingMeta(
        slide_path="s.tiff",
        slide_fingerprint="x",
        level0_width=n_side * 64 + 64,
        level0_height=n_side * 64 + 64,
        mpp=1.0,
        target_mpp=1.0,
        patch_size=128,
        patch_size_level0=128,
        stride_level0=64,
        overlap=0.5,
        model="test",
    )
    return Embeddings(features=X, coords=coords, meta=meta)


def _separation(rgb: np.ndarray, lab: np.ndarray) -> float:
    """Smallest distance between cluster mean colours over the largest within-cluster spread."""
    c = rgb.astype(np.float64)
    means = np.stack([c[lab == k].mean(0) for k in range(3)])
    between = min(np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i + 1, 3))
    within = max(np.linalg.norm(c[lab == k] - means[k], axis=1).mean() for k in range(3))
    return float(between / max(within, 1e-9))


def test_pca_colors_shape_range_and_structure() -> None:
    X, lab = _clusters(100)
    rgb = patch_colors(X, method="pca")
    assert rgb.shape == (300, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and rgb.max() == 255  # scaled to the full range
    assert _separation(rgb, lab) > 3
    assert np.array_equal(rgb, patch_colors(X, method="pca"))


@pytest.mark.slow
def test_umap_colors_subsample_then_place_the_rest() -> None:
    X, lab = _clusters(400)
    rgb = patch_colors(X, method="umap", max_fit=300, random_state=0)
    assert rgb.shape == (1200, 3) and rgb.dtype == np.uint8
    assert _separation(rgb, lab) > 3  # placed patches land with their own cluster
    again = patch_colors(X, method="umap", max_fit=300, random_state=0)
    assert np.array_equal(rgb, again)  # deterministic for a given random_state
    coords = embed_3d(X[:50], method="umap")  # fewer patches than max_fit: fitted on all
    assert coords.shape == (50, 3) and np.isfinite(coords).all()


def test_colors_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="NaN"):
        patch_colors(np.array([[np.nan, 1.0]] * 5))
    with pytest.raises(InvalidInputError, match="2-D"):
        patch_colors(np.zeros(5))
    with pytest.raises(InvalidInputError, match="colour method"):
        patch_colors(np.zeros((5, 2)), method="tsne")
    with pytest.raises(InvalidInputError, match=r"\(n, 3\)"):
        scale_to_rgb(np.zeros((4, 2)))


def test_tiny_inputs_still_give_colours() -> None:
    rgb = patch_colors(np.arange(12, dtype=np.float32).reshape(6, 2), method="umap")
    assert rgb.shape == (6, 3)


def test_colors_geojson_and_png(tmp_path: Path) -> None:
    X, _ = _clusters(12)
    emb = _emb(6, X)
    rgb = patch_colors(X, method="pca")
    gj = colors_geojson(emb, rgb, method="pca")
    feats = gj["features"]
    assert len(feats) == emb.n_patches
    f0 = feats[0]
    assert f0["properties"]["objectType"] == "detection"
    assert f0["properties"]["color"] == rgb[0].tolist()
    ring = f0["geometry"]["coordinates"][0]
    assert ring[0] == [32.0, 32.0] and ring[2] == [96.0, 96.0]  # central stride cell of patch 0
    json.dumps(gj, allow_nan=False)
    img = render_colors(emb, rgb, max_size=200)
    assert img.shape == (200, 200, 3) and img.dtype == np.uint8
    # the centre of patch 0's cell has patch 0's colour
    s = 200 / emb.meta.level0_width
    assert np.array_equal(img[int(64 * s), int(64 * s)], rgb[0])
    with pytest.raises(InvalidInputError, match="colors must have shape"):
        colors_geojson(emb, rgb[:3])


def test_colors_command_writes_geojson_and_png(tmp_path: Path) -> None:
    from histosic.cli import main
    from histosic.store import write_embeddings

    X, _ = _clusters(12)
    path = write_embeddings(tmp_path / "e.h5", _emb(6, X))
    out, png = tmp_path / "c.geojson", tmp_path / "c.png"
    assert main(["colors", str(path), "--out", str(out), "--png", str(png), "--method", "pca"]) == 0
    assert len(json.loads(out.read_text())["features"]) == 36
    from PIL import Image

    with Image.open(png) as im:
        assert im.mode == "RGB" and max(im.size) <= 2048
    # existing outputs are kept unless --overwrite; nothing to write is an error
    assert main(["colors", str(path), "--out", str(out), "--method", "pca"]) == 1
    assert main(["colors", str(path)]) == 1
