"""Trident and CLAM feature files in and out, lossless (issue 12).

Files are written here with Trident's and CLAM's own layouts, as their writers lay them out
(Trident ``trident/IO.py``: ``coords_to_h5`` puts ``patch_size``, ``patch_size_level0``,
``level0_magnification``, ``target_magnification``, ``overlap`` (pixels), ``name``,
``savetodir``, ``level0_width``, ``level0_height`` on /coords, and ``save_h5`` writes each
dataset chunked by rows with its attributes; the feature step records the encoder on /features.
CLAM ``create_patches_fp.py``: ``patch_size``, ``patch_level``, ``downsample``,
``downsampled_level_dim``, ``level_dim``, ``name``, ``save_path`` on /coords, no overlap), from
the same patches as histosic's own file of the real DigestPath image. Neither carries tissue or
white fractions; histosic computes them from the slide, and clustering then gives the same labels
as on its own file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image

from histosic.cluster import cluster_slide
from histosic.patches import complete_fractions
from histosic.seeds import SeedPoint
from histosic.store import Embeddings, read_embeddings, read_meta
from histosic.tiling import TilingConfig

pytest.importorskip("torch")  # the embedding pipeline runs on torch

TILING = TilingConfig(target_mpp=1.0, patch_size=128, overlap=0.5, tissue_threshold=0.5)


@pytest.fixture(scope="module")
def ours(digestpath_jpg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """histosic's own file: he-features (128 px input) at 1 um/px, 128 px patches, 50% overlap."""
    from histosic.embed.pipeline import embed_slide

    out = tmp_path_factory.mktemp("ours") / "digestpath.h5"
    return embed_slide(
        digestpath_jpg, out, model="he-features", tiling=TILING, slide_mpp=0.5, workers=0
    )


def _save_h5(path: Path, assets: dict[str, np.ndarray], attrs: dict[str, dict[str, Any]]) -> None:
    """Datasets chunked by rows, attributes per dataset (the layout of Trident's save_h5)."""
    with h5py.File(path, "w") as f:
        for key, val in assets.items():
            dset = f.create_dataset(
                key,
                shape=val.shape,
                maxshape=(None, *val.shape[1:]),
                chunks=(1, *val.shape[1:]),
                dtype=val.dtype,
            )
            dset[:] = val
            for k, v in attrs.get(key, {}).items():
                dset.attrs[k] = "None" if v is None else v


def _trident(path: Path, emb: Embeddings) -> Path:
    m = emb.meta
    coords_attrs = {
        "patch_size": 128,
        "patch_size_level0": 128 * 20 // 10,
        "level0_magnification": 20,
        "target_magnification": 10,
        "overlap": 64,  # pixels at the target magnification
        "name": "0",
        "savetodir": str(path.parent),
        "level0_width": m.level0_width,
        "level0_height": m.level0_height,
    }
    features_attrs = {"name": "0", "savetodir": str(path.parent), "encoder": "he-features"}
    _save_h5(
        path,
        {"features": emb.features.astype(np.float32), "coords": emb.coords.astype(np.int64)},
        {"features": features_attrs, "coords": coords_attrs},
    )
    return path


def _clam(path: Path, emb: Embeddings) -> Path:
    m = emb.meta
    coords_attrs = {
        "patch_size": 128,  # at patch_level 1, downsample 2: 256 level-0 pixels
        "patch_level": 1,
        "downsample": np.array([2.0, 2.0]),
        "downsampled_level_dim": np.array([m.level0_width // 2, m.level0_height // 2]),
        "level_dim": np.array([m.level0_width // 2, m.level0_height // 2]),
        "name": "0",
        "save_path": str(path.parent),
    }
    _save_h5(
        path,
        {"features": emb.features.astype(np.float32), "coords": emb.coords.astype(np.int64)},
        {"coords": coords_attrs},
    )
    return path


def _seeds(emb: Embeddings, mask_path: Path) -> list[SeedPoint]:
    """3 + 3 seeds at the centres of lesion and of non-lesion patches (the paper's setting)."""
    with Image.open(mask_path) as im:
        mask = np.asarray(im.convert("L")) > 127
    half = emb.meta.patch_size_level0 // 2
    centres = emb.coords + half
    lesion = mask[centres[:, 1], centres[:, 0]]
    rng = np.random.default_rng(0)
    pts = []
    for cls, pick in (("Tumor", lesion), ("Stroma", ~lesion)):
        for i in rng.choice(np.flatnonzero(pick), 3, replace=False):
            pts.append(SeedPoint(float(centres[i, 0]), float(centres[i, 1]), cls))
    return pts


@pytest.mark.parametrize("layout", ["trident", "clam"])
def test_foreign_file_gives_histosic_labels(
    layout: str, ours: Path, digestpath_jpg: Path, tmp_path: Path
) -> None:
    own = read_embeddings(ours)
    path = (_trident if layout == "trident" else _clam)(tmp_path / f"{layout}.h5", own)
    foreign = read_embeddings(path)
    meta = foreign.meta
    # scale and overlap from the file's own attributes (and the coordinates' step for CLAM)
    assert meta.patch_size == 128 and meta.patch_size_level0 == 256
    assert meta.stride_level0 == 128 and meta.overlap == pytest.approx(0.5)
    assert meta.model == ("he-features" if layout == "trident" else "unknown")
    assert meta.extra["source_format"] == layout
    assert foreign.tissue_fraction is None and foreign.white_fraction is None

    filled, note = complete_fractions(foreign, digestpath_jpg, slide_mpp=0.5)
    assert "computed them for" in note and str(digestpath_jpg) in note
    assert own.tissue_fraction is not None and own.white_fraction is not None
    assert filled.tissue_fraction is not None and filled.white_fraction is not None
    np.testing.assert_allclose(filled.tissue_fraction, own.tissue_fraction, atol=1e-6)
    np.testing.assert_allclose(filled.white_fraction, own.white_fraction, atol=1e-6)

    mask = digestpath_jpg.with_name("0_mask.jpg")
    points = _seeds(own, mask)
    a = cluster_slide(own, points, random_state=0)
    b = cluster_slide(filled, points, random_state=0)
    assert np.array_equal(a.labels, b.labels)
    # without the fractions the default preprocessing cannot regress them out: other labels
    c = cluster_slide(foreign, points, random_state=0)
    assert not np.array_equal(a.labels, c.labels)


def test_without_the_slide_the_nuisance_step_is_said_to_be_skipped(
    ours: Path, tmp_path: Path
) -> None:
    foreign = read_embeddings(_trident(tmp_path / "t.h5", read_embeddings(ours)))
    same, note = complete_fractions(foreign, tmp_path / "gone.jpg")
    assert same is foreign
    assert "cannot be opened" in note and "nuisance-regression step is skipped" in note


def test_trident_reads_histosic_files(ours: Path) -> None:
    # What Trident's readers take from a feature file (trident/IO.py read_coords and
    # read_coords_legacy, its slide encoders' loading): /coords with its attributes, /features.
    with h5py.File(ours, "r") as f:
        attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
        feats = f["features"][:]
        encoder = f["features"].attrs["encoder"]
        name = f["features"].attrs["name"]
        legacy = (f["coords"].attrs["patch_size"], f["coords"].attrs["patch_level"])
    assert coords.dtype == np.int64 and coords.shape == (feats.shape[0], 2)
    assert encoder == "he-features" and name == "0"
    assert attrs["patch_size"] == 128 and attrs["patch_size_level0"] == 256
    assert attrs["level0_magnification"] == 20 and attrs["target_magnification"] == 10
    # Trident's own relation between the sizes, and its overlap in target pixels
    assert attrs["patch_size_level0"] == (
        attrs["patch_size"] * attrs["level0_magnification"] // attrs["target_magnification"]
    )
    assert attrs["overlap"] == 64 and legacy == (128, 0)
    # and histosic reads its encoder back where Trident puts it
    assert read_meta(ours).model == "he-features"


def test_cluster_command_computes_the_fractions_and_says_so(
    ours: Path, digestpath_jpg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from test_qupath_data import qupath_point_feature, write_seed_file

    from histosic import cli

    own = read_embeddings(ours)
    trident = _trident(tmp_path / "trident.h5", own)
    points = _seeds(own, digestpath_jpg.with_name("0_mask.jpg"))
    by_class: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        by_class.setdefault(p.class_name, []).append((p.x, p.y))
    seeds = write_seed_file(
        tmp_path / "seeds.geojson", [qupath_point_feature(xy, c) for c, xy in by_class.items()]
    )
    results = {}
    for name, h5, extra in (
        ("ours", ours, []),
        ("trident", trident, ["--slide", str(digestpath_jpg)]),
    ):
        out = tmp_path / f"{name}.geojson"
        rc = cli.main(["cluster", str(h5), "--seeds", str(seeds), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert rc == 0, err
        if name == "trident":
            assert "no tissue and white fractions: computed them for" in err
        else:
            assert "fractions" not in err
        features = json.loads(out.read_text())["features"]
        results[name] = [
            (json.dumps(f["geometry"]), json.dumps(f["properties"].get("classification")))
            for f in features
        ]
    assert len(results["ours"]) > 100 and results["trident"] == results["ours"]
