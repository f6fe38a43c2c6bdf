"""``histosic cluster`` end to end: real HDF5 embedding files, QuPath seed files, real outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image
from test_qupath_data import (
    STRIDE,
    make_embeddings,
    qupath_point_feature,
    seeds_from_truth,
    write_seed_file,
)

from histosic import cli
from histosic.cluster import SlideClustering, cluster_slide
from histosic.outputs.overlay import render_overlay
from histosic.outputs.qupath_classes import class_color
from histosic.outputs.seedfile import read_seeds
from histosic.store import Embeddings, read_embeddings, write_embeddings


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("cluster")
    emb, truth = make_embeddings(nx=40, ny=30)
    h5 = d / "slide.h5"
    write_embeddings(h5, emb)
    clicks = seeds_from_truth(emb, truth, 6)
    feats = [qupath_point_feature(xy, name) for name, xy in clicks.items()]
    seeds = write_seed_file(d / "seeds.geojson", feats)
    return {"dir": d, "h5": h5, "seeds": seeds, "emb": emb, "truth": truth, "clicks": clicks}


def _run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cluster_writes_qupath_tiles_and_prints_summary(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.geojson"
    rc, stdout, stderr = _run(
        capsys, "cluster", files["h5"], "--seeds", files["seeds"], "--out", out, "--suggest", "3"
    )
    assert rc == 0, stderr
    coll = json.loads(out.read_text())
    emb: Embeddings = files["emb"]
    tiles = [f for f in coll["features"] if f["properties"]["objectType"] == "tile"]
    points = [f for f in coll["features"] if f["geometry"]["type"] == "Point"]
    assert len(tiles) == emb.n_patches and len(points) == 3
    # The clustering finds the planted tumour (well separated features).
    is_tumour = np.array([f["properties"]["classification"]["name"] == "Tumor" for f in tiles])
    assert (is_tumour == files["truth"]).mean() > 0.95
    for text in ("12 seed points", "12 used", "0 ignored", "patches: ", "Tumor", "Stroma"):
        assert text in stdout
    assert "score on the seed patches" in stdout and "total" in stdout
    assert f"wrote {out}" in stdout


@pytest.mark.parametrize("kind", ["tiles", "detections", "regions", "both"])
def test_output_kinds(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    out = tmp_path / "r.geojson"
    rc, _, err = _run(
        capsys, "cluster", files["h5"], "--seeds", files["seeds"], "--out", out, "--output", kind
    )
    assert rc == 0, err
    types = {f["properties"]["objectType"] for f in json.loads(out.read_text())["features"]}
    expected = {
        "tiles": {"tile"},
        "detections": {"detection"},
        "regions": {"annotation"},
        "both": {"tile", "annotation"},
    }
    assert types == expected[kind]


def test_labels_csv_overlay_and_methods(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, csv_path, png = tmp_path / "r.geojson", tmp_path / "labels.csv", tmp_path / "o.png"
    rc, stdout, err = _run(
        capsys,
        "cluster",
        files["h5"],
        "--seeds",
        files["seeds"],
        "--out",
        out,
        "--labels-csv",
        csv_path,
        "--overlay",
        png,
        "--method",
        "sic",
        "--raw-features",
    )
    assert rc == 0, err
    assert "method: sic" in stdout
    emb: Embeddings = files["emb"]
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == emb.n_patches and list(rows[0]) == ["x", "y", "class", "confidence"]
    assert np.allclose([[float(r["x"]), float(r["y"])] for r in rows], emb.centers())
    tiles = json.loads(out.read_text())["features"]
    assert [r["class"] for r in rows] == [f["properties"]["classification"]["name"] for f in tiles]
    with Image.open(png) as im:
        w, h = im.size
        assert im.format == "PNG" and max(w, h) <= 2048
        assert abs(w / h - emb.meta.level0_width / emb.meta.level0_height) < 0.01
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    # The slide file does not exist: white canvas, classes blended in at 40 %.
    assert (pixels == 255).all(axis=1).any()
    tumour = np.array(class_color("Tumor"), dtype=float)
    blended = np.round(0.6 * 255 + 0.4 * tumour)
    assert (np.abs(pixels - blended).max(axis=1) <= 2).any()
    rc, _, err = _run(
        capsys, "cluster", files["h5"], "--seeds", files["seeds"], "--out", tmp_path / "x.json",
        "--method", "magic",
    )  # fmt: skip
    assert rc == 1 and "unknown method 'magic'" in err


def test_same_inputs_same_labels(files: dict[str, Any]) -> None:
    emb: Embeddings = files["emb"]
    points = read_seeds(files["seeds"]).points
    a = cluster_slide(emb, points, method="sic", random_state=0)
    b = cluster_slide(emb, points, method="sic", random_state=0)
    assert np.array_equal(a.labels, b.labels)


def test_multiclass_from_the_command_line(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clicks = files["clicks"]
    feats = [
        qupath_point_feature(clicks["Tumor"], "Tumor"),
        qupath_point_feature(clicks["Stroma"][:3], "Stroma"),
        qupath_point_feature(clicks["Stroma"][3:], "Immune cells"),
    ]
    seeds = write_seed_file(tmp_path / "s.geojson", feats)
    out = tmp_path / "r.geojson"
    rc, stdout, err = _run(
        capsys, "cluster", files["h5"], "--seeds", seeds, "--out", out, "--multiclass"
    )
    assert rc == 0, err
    names = {
        f["properties"]["classification"]["name"] for f in json.loads(out.read_text())["features"]
    }
    assert names <= {"Tumor", "Stroma", "Immune cells"} and "Tumor" in names
    rc, stdout, err = _run(
        capsys, "cluster", files["h5"], "--seeds", seeds, "--out", tmp_path / "b.geojson"
    )
    assert rc == 0 and "Other" in stdout  # binary: Stroma and Immune cells merge into "Other"


# --------------------------------------------------------------------------------------------------
# Bad input: a precise message, exit status 1, no output written


def _expect_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, h5: Path, seeds: Path, match: str
) -> None:
    out = tmp_path / "never.geojson"
    rc, _, err = _run(capsys, "cluster", h5, "--seeds", seeds, "--out", out)
    assert rc == 1
    assert err.startswith("histosic cluster: error: ")
    assert match in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_seeds_not_geojson(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "seeds.csv"
    bad.write_text("x,y,class\n1,2,Tumor\n")
    _expect_error(capsys, tmp_path, files["h5"], bad, "is not GeoJSON")


def test_points_without_class(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = write_seed_file(
        tmp_path / "s.geojson", [qupath_point_feature(files["clicks"]["Tumor"], None)]
    )
    _expect_error(capsys, tmp_path, files["h5"], seeds, "has a classification")


def test_only_one_class(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = write_seed_file(
        tmp_path / "s.geojson", [qupath_point_feature(files["clicks"]["Tumor"], "Tumor")]
    )
    _expect_error(capsys, tmp_path, files["h5"], seeds, "needs seeds of at least one other class")


def test_positive_class_absent(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clicks = files["clicks"]
    feats = [
        qupath_point_feature(clicks["Tumor"], "Lesion"),
        qupath_point_feature(clicks["Stroma"], "Stroma"),
    ]
    seeds = write_seed_file(tmp_path / "s.geojson", feats)
    _expect_error(capsys, tmp_path, files["h5"], seeds, "--positive NAME")


def test_all_seeds_off_tissue(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The top-left block has no patches (background), and one point lies outside the slide.
    feats = [
        qupath_point_feature([[64 + STRIDE, 32 + STRIDE], [70 + STRIDE, 40 + STRIDE]], "Tumor"),
        qupath_point_feature([[-100, 50]], "Stroma"),
    ]
    seeds = write_seed_file(tmp_path / "s.geojson", feats)
    _expect_error(capsys, tmp_path, files["h5"], seeds, "none of the 3 seed points can be used")


def test_embedding_file_not_ours(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("images", data=np.zeros((4, 4)))
    _expect_error(capsys, tmp_path, other, files["seeds"], "not an embedding file")
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    _expect_error(capsys, tmp_path, text, files["seeds"], "not a readable HDF5 embedding file")
    _expect_error(capsys, tmp_path, tmp_path / "missing.h5", files["seeds"], "does not exist")


def test_embedding_file_truncated(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = files["h5"].read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    rc, _, err = _run(capsys, "cluster", cut, "--seeds", files["seeds"], "--out", tmp_path / "o")
    assert rc == 1 and "histosic cluster: error:" in err
    assert "cut.h5" in err and ("truncated" in err or "not a readable HDF5" in err)
    assert not (tmp_path / "o").exists()


def test_existing_output_is_refused_unless_overwrite(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.geojson"
    out.write_text("keep me")
    png = tmp_path / "o.png"
    base = ["cluster", files["h5"], "--seeds", files["seeds"], "--out", out]
    rc, _, err = _run(capsys, *base)
    assert rc == 1 and "exists" in err and "--overwrite" in err
    assert out.read_text() == "keep me"
    # Also when only a secondary output exists: nothing is written at all.
    out.unlink()
    png.write_bytes(b"old")
    rc, _, err = _run(capsys, *base, "--overlay", png)
    assert rc == 1 and str(png) in err and not out.exists()
    rc, _, err = _run(capsys, *base, "--overlay", png, "--overwrite")
    assert rc == 0, err
    assert json.loads(out.read_text())["type"] == "FeatureCollection"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png", "r.geojson"]


def test_server_option_without_reachable_server(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.geojson"
    rc, _, err = _run(
        capsys,
        "cluster",
        files["h5"].name,
        "--seeds",
        files["seeds"],
        "--out",
        out,
        "--server",
        "127.0.0.1:1",
    )
    assert rc == 1 and "histosic cluster: error:" in err
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# Real data: the DigestPath image, embedded with the handcrafted backbone


@pytest.fixture(scope="session")
def digestpath(
    digestpath_jpg: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    """The DigestPath image, its lesion mask and its embedding file (computed once)."""
    image, mask = digestpath_jpg, digestpath_jpg.parent / "0_mask.jpg"
    if not mask.is_file():
        pytest.skip(f"DigestPath mask {mask} is absent (set HISTOSIC_DATA)")
    try:
        import torch

        from histosic.embed.pipeline import embed_slide
    except ImportError as err:
        pytest.skip(f"embedding needs the embed extra (torch): {err}")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("digestpath") / "0.h5"
    h5 = embed_slide(image, out, model="handcrafted", slide_mpp=0.5, workers=0, device="cpu")
    return image, mask, Path(h5)


def _mask_truth(mask_path: Path, emb: Embeddings) -> np.ndarray:
    """Per patch: is the patch's central cell mostly lesion (mask > 127)?"""
    with Image.open(mask_path) as im:
        mask = np.asarray(im.convert("L")) > 127
    half = emb.meta.stride_level0 // 2
    out = np.zeros(emb.n_patches, dtype=bool)
    for i, (cx, cy) in enumerate(emb.centers().astype(int)):
        cell = mask[max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half]
        out[i] = cell.size > 0 and cell.mean() > 0.5
    return out


@pytest.mark.slow
def test_digestpath_round_trip(
    digestpath: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask_path, h5 = digestpath
    emb = read_embeddings(h5)
    truth = _mask_truth(mask_path, emb)
    assert 0.1 < truth.mean() < 0.9, "the mask must hold lesion and non-lesion tissue"
    # A pathologist's clicks: 8 points per class at patch centres, as QuPath exports them.
    rng = np.random.default_rng(0)
    centres = emb.centers()
    clicks = {
        "Tumor": centres[rng.choice(np.flatnonzero(truth), 8, replace=False)],
        "Stroma": centres[rng.choice(np.flatnonzero(~truth), 8, replace=False)],
    }
    feats = [qupath_point_feature(xy, name) for name, xy in clicks.items()]
    # Off-tissue clicks in the white corner are reported, not fatal.
    feats.append(qupath_point_feature([[5, 5]], "Stroma"))
    seeds = write_seed_file(tmp_path / "seeds.geojson", feats)
    out, png = tmp_path / "result.geojson", tmp_path / "overlay.png"
    rc, stdout, err = _run(
        capsys, "cluster", h5, "--seeds", seeds, "--out", out, "--output", "both",
        "--overlay", png, "--suggest", "4",
    )  # fmt: skip
    assert rc == 0, err
    assert "16 used" in stdout and "1 ignored" in stdout and "off tissue" in stdout
    coll = json.loads(out.read_text())
    tiles = [f for f in coll["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tiles) == emb.n_patches
    pred = np.array([f["properties"]["classification"]["name"] == "Tumor" for f in tiles])
    tp = float((pred & truth).sum())
    f1 = 2 * tp / (pred.sum() + truth.sum())
    everything = 2 * truth.sum() / (emb.n_patches + truth.sum())  # calling every patch tumour
    assert f1 > everything, (f1, everything)
    regions = [f for f in coll["features"] if f["properties"]["objectType"] == "annotation"]
    assert {f["geometry"]["type"] for f in regions} <= {"Polygon", "MultiPolygon", "Point"}
    # The overlay shows the real slide (not a white canvas) under the classes.
    with Image.open(png) as im:
        assert im.size == (emb.meta.level0_width * 2048 // emb.meta.level0_height, 2048) or (
            max(im.size) == 2048
        )
        arr = np.asarray(im.convert("RGB"))
    with Image.open(image) as slide_im:
        thumb = np.asarray(slide_im.convert("RGB").resize(im.size))
    corner = (slice(0, 40), slice(0, 40))
    assert np.abs(arr[corner].astype(int) - thumb[corner].astype(int)).mean() < 10


def test_overlay_without_slide_is_white_canvas(files: dict[str, Any]) -> None:
    emb: Embeddings = files["emb"]
    points = read_seeds(files["seeds"]).points
    clustering: SlideClustering = cluster_slide(emb, points)
    im = render_overlay(emb, clustering, max_size=300)
    assert max(im.size) == 300
    arr = np.asarray(im)
    assert (arr[0, 0] == 255).all()  # top-left: no patch there, no slide


def test_missing_input_is_reported_before_an_existing_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from histosic.cli import main

    out = tmp_path / "result.geojson"
    out.write_text("{}")
    emb = tmp_path / "e.h5"
    code = main(
        ["cluster", str(emb), "--seeds", str(tmp_path / "missing.geojson"), "--out", str(out)]
    )
    assert code == 1
    assert "missing.geojson" in capsys.readouterr().err
    assert out.read_text() == "{}"
