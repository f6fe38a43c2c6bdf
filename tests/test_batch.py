"""The paquo batch mode. Its QuPath-free parts run everywhere; the full run needs QuPath."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from shapely.geometry import MultiPoint, Point, Polygon

from histosic.batch import path_from_uri, run_signature, seeds_from_geometries
from histosic.cluster import PAPER_PREPROCESS, ClusterOptions
from histosic.seeds import SeedPoint


def test_path_from_qupath_uris() -> None:
    assert path_from_uri("file:/home/user/slides/a%20b.svs") == Path("/home/user/slides/a b.svs")
    assert path_from_uri("file:///data/x.tif") == Path("/data/x.tif")
    assert str(path_from_uri("file:/C:/Slides/x.svs")).replace("\\", "/") == "C:/Slides/x.svs"
    assert path_from_uri("/plain/path.svs") == Path("/plain/path.svs")


def test_seeds_from_hierarchy_geometries() -> None:
    objects = [
        (Point(10, 20), "Tumor"),
        (MultiPoint([(1, 2), (3, 4)]), "Stroma"),
        (Point(5, 5), None),  # unclassified: reported, not used
        (Polygon([(0, 0), (1, 0), (1, 1)]), "Tumor"),  # not a point: not a seed
        (Point(7, 7), "histosic: suggested seed"),  # our own suggestion: not a seed
    ]
    seeds, unclassified = seeds_from_geometries(objects)
    assert seeds == [
        SeedPoint(10.0, 20.0, "Tumor"),
        SeedPoint(1.0, 2.0, "Stroma"),
        SeedPoint(3.0, 4.0, "Stroma"),
    ]
    assert unclassified == 1


def test_run_signature_depends_on_seeds_and_options_only() -> None:
    a = [SeedPoint(1, 2, "Tumor"), SeedPoint(3, 4, "Stroma")]
    b = list(reversed(a))
    opts = ClusterOptions()
    assert run_signature(a, "e.h5", opts) == run_signature(b, "e.h5", opts)
    assert run_signature(a, "e.h5", opts) != run_signature(a[:1], "e.h5", opts)
    assert run_signature(a, "e.h5", opts) != run_signature(a, "e.h5", replace(opts, suggest=3))
    assert run_signature(a, "e.h5", opts) != run_signature(
        a, "e.h5", replace(opts, preprocess=PAPER_PREPROCESS)
    )
    assert run_signature(a, "e.h5", opts) != run_signature(a, "e.h5", opts, model="other")
    assert run_signature(a, "e.h5", opts) != run_signature(a, "f.h5", opts)


def _has_qupath() -> bool:
    return bool(os.environ.get("PAQUO_QUPATH_DIR") or os.environ.get("QUPATH_DIR"))


@pytest.mark.skipif(_has_qupath(), reason="checks the message shown when QuPath is missing")
def test_batch_without_qupath_says_what_to_install(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "histosic", "batch", str(project), "--store", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "PAQUO_QUPATH_DIR" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.qupath
@pytest.mark.skipif(
    not _has_qupath(), reason="needs a QuPath installation (set PAQUO_QUPATH_DIR or QUPATH_DIR)"
)
def test_batch_on_a_real_qupath_project(tmp_path: Path) -> None:  # pragma: no cover - needs QuPath
    import numpy as np
    from paquo.classes import QuPathPathClass
    from paquo.images import QuPathImageType
    from paquo.projects import QuPathProject
    from PIL import Image

    from histosic.batch import run_batch
    from histosic.embed.pipeline import embed_slide
    from histosic.tiling import TilingConfig

    if not os.environ.get("PAQUO_QUPATH_DIR"):
        os.environ["PAQUO_QUPATH_DIR"] = os.environ["QUPATH_DIR"]
    rng = np.random.default_rng(0)
    img = np.full((1024, 1024, 3), 235, np.uint8)
    img[:, :512] = (rng.normal(0, 10, (1024, 512, 3)) + [150, 60, 140]).clip(0, 255)
    img[:, 512:] = (rng.normal(0, 10, (1024, 512, 3)) + [220, 150, 190]).clip(0, 255)
    slide = tmp_path / "slide.tif"
    Image.fromarray(img).save(slide)
    store = tmp_path / "store"
    embed_slide(
        slide,
        store / "slide.h5",
        model="handcrafted",
        slide_mpp=0.5,
        tiling=TilingConfig(tissue_threshold=0.1),
    )
    proj_dir = tmp_path / "project"
    with QuPathProject(proj_dir, mode="x") as qp:
        entry = qp.add_image(slide, image_type=QuPathImageType.BRIGHTFIELD_H_E)
        tumor = QuPathPathClass("Tumor")
        stroma = QuPathPathClass("Stroma")
        entry.hierarchy.add_annotation(roi=Point(200, 500), path_class=tumor)
        entry.hierarchy.add_annotation(roi=Point(800, 500), path_class=stroma)
    report = run_batch(proj_dir, store=store)
    assert report.counts() == {"clustered": 1}
    with QuPathProject(proj_dir, mode="r") as qp:
        n = len(qp.images[0].hierarchy.detections)
    assert n == report.images[0].n_patches
    again = run_batch(proj_dir, store=store)
    assert again.counts() == {"skipped": 1}
