"""``qupath-scripts/histosic_colors.groovy`` (the colour view as objects), run unchanged on QuPath's
own classes (``tests/qupath/run_script.groovy``) against a real ``histosic serve``: one detection
per patch with the colour and measurements ``histosic colors`` writes, the same cells; a second
run replaces only its own detections."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from qupath_jars import VERSION_PARAMS, QuPathJars, qupath_jars, run_qupath_script
from test_qupath_cluster_script import POINTS, check_user_objects_untouched
from test_service_support import make_embedding, make_slide

from histosic import cli
from histosic.service import ServerConfig, create_server
from histosic.store import file_fingerprint

ROOT = Path(__file__).resolve().parents[1]
COLORS = ROOT / "qupath-scripts" / "histosic_colors.groovy"
AGAIN = ROOT / "tests" / "qupath" / "scenario_run_again.groovy"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.qupath_jars,
    pytest.mark.skipif(
        shutil.which("groovy") is None,
        reason="groovy is not installed (make test installs it on Debian as root)",
    ),
]


@pytest.fixture(scope="module", params=VERSION_PARAMS)
def qupath(request: pytest.FixtureRequest) -> QuPathJars:
    return qupath_jars(request.param)


def test_colour_view_as_objects(qupath: QuPathJars, tmp_path: Path) -> None:
    root = tmp_path / "slides"
    root.mkdir()
    slide = make_slide(root / "colours.png")
    store = tmp_path / "store"
    store.mkdir()
    h5 = store / "colours.h5"
    make_embedding(h5, fingerprint=file_fingerprint(slide), slide_path=str(slide))
    expected_path = tmp_path / "colors.geojson"
    assert cli.main(["colors", str(h5), "--out", str(expected_path), "--method", "pca"]) == 0
    expected = {}
    for f in json.loads(expected_path.read_text())["features"]:
        xs = [p[0] for p in f["geometry"]["coordinates"][0]]
        ys = [p[1] for p in f["geometry"]["coordinates"][0]]
        box = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
        expected[tuple(round(v, 6) for v in box)] = f["properties"]
    server, _ = create_server(
        "127.0.0.1:0", ServerConfig(store=store, slide_roots=(root,), http_address="127.0.0.1:0")
    )
    server.start()
    try:
        out = tmp_path / "out"
        env = {"HISTOSIC_URL": f"http://127.0.0.1:{server.http_port}", "QUPATH_TEST_ARGS": ""}
        proc = run_qupath_script(qupath, COLORS, slide, POINTS, out, env=env, scenario=AGAIN)
    finally:
        server.stop(grace=1.0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "colour view (PCA) of 1600 patches from colours.h5; replaced 0" in proc.stdout
    assert "replaced 1600 of an earlier run" in (out / "again.txt").read_text()
    objects: list[dict[str, Any]] = json.loads((out / "objects.json").read_text())
    views = [o for o in objects if "histosic: PCA R" in o["measurements"]]
    assert len(views) == len(expected) == 1600
    for o in views:
        props = expected[tuple(round(v, 6) for v in o["bounds"])]
        assert o["type"] == "detection" and o.get("cls") is None and o["roi"] == "Rectangle"
        assert o["color"] == props["color"]
        assert o["measurements"] == {k: float(v) for k, v in props["measurements"].items()}
    assert len({tuple(o["color"]) for o in views}) > 100  # a real colour view, not one colour
    check_user_objects_untouched(out)
    # The seeds and the user's objects are all still there.
    assert sum(o["roi"] == "Points" for o in objects) == len(POINTS)
