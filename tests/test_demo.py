"""The demo in a reduced form: a small generated slide, every output written, F1 printed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from histosic.demo import find_demo_data, make_demo_slide, pick_seed_points, run_demo
from histosic.errors import InvalidInputError


def test_pick_seed_points_are_clear_and_spread() -> None:
    xs, ys = np.meshgrid(np.arange(10.0), np.arange(10.0))
    centres = np.stack([xs.ravel(), ys.ravel()], 1) * 100
    inside = (xs.ravel() < 5).astype(np.float64)  # left half is the lesion
    depth = np.abs(xs.ravel() - 4.5)
    pos, neg = pick_seed_points(centres, inside, depth, n_positive=3, n_negative=2)
    assert len(pos) == 3 and len(neg) == 2
    assert all(inside[i] == 1 for i in pos) and all(inside[i] == 0 for i in neg)
    assert len({tuple(centres[i]) for i in pos}) == 3
    with pytest.raises(InvalidInputError, match="no patch mostly inside"):
        pick_seed_points(centres, np.zeros(100), depth)


def test_find_demo_data_prefers_the_given_folder(tmp_path: Path) -> None:
    d = tmp_path / "digestpath"
    d.mkdir()
    (d / "0.jpg").write_bytes(b"x")
    (d / "0_mask.jpg").write_bytes(b"x")
    assert find_demo_data(tmp_path) == (d / "0.jpg", d / "0_mask.jpg")


@pytest.mark.slow
def test_demo_on_a_small_generated_slide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run_demo(
        tmp_path / "demo", generated=True, generated_size=(2048, 1536), colors_method="pca"
    )
    assert report.source == "generated"
    for name in (
        "seeds",
        "embeddings",
        "geojson",
        "overlay",
        "colors geojson",
        "colors png",
        "report",
    ):
        assert report.outputs[name].is_file(), name
    gj = json.loads(report.outputs["geojson"].read_text())
    names = {f["properties"]["classification"].get("name") for f in gj["features"]}
    assert {"Tumor", "Stroma"} <= names
    seeds = json.loads(report.outputs["seeds"].read_text())
    assert len(seeds["features"]) == 6
    # the generated lesion is easy: the product's method must beat calling everything tumour
    assert report.f1 > report.all_positive_f1 + 0.1
    assert "F1 against the ground truth" in report.text()
    assert json.loads(report.outputs["report"].read_text())["f1"] == pytest.approx(report.f1)


def test_make_demo_slide_rejects_tiny(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="at least 256"):
        make_demo_slide(tmp_path / "s.tiff", size=(100, 100))
