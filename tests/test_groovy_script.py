"""The QuPath Groovy script, run by a real Groovy against a real histosic server.

QuPath itself cannot be installed on the test machines, so the QuPath scripting calls the script
makes (getCurrentServer, getAnnotationObjects, importObjectsFromFile, ...) come from a TEST DOUBLE,
``tests/groovy/qupath_test_double.groovy``; the script file, Gson, java.net.http, the HTTP
requests and the server are all real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_service_support import make_embedding, make_slide

from histosic.service import ServerConfig, create_server
from histosic.store import file_fingerprint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "qupath-scripts" / "histosic_cluster.groovy"
DOUBLE = ROOT / "tests" / "groovy" / "qupath_test_double.groovy"
GSON = Path(os.environ.get("HISTOSIC_GSON_JAR", "/usr/share/java/gson.jar"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("groovy") is None,
        reason="groovy is not installed (make test installs it on Debian as root)",
    ),
    pytest.mark.skipif(
        not GSON.exists(), reason=f"Gson jar not found at {GSON} (Debian: libgoogle-gson-java)"
    ),
]


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    root = tmp_path / "slides"
    root.mkdir()
    slide = make_slide(root / "case 1.png")
    store = tmp_path / "store"
    store.mkdir()
    make_embedding(store / "case1.h5", fingerprint=file_fingerprint(slide), slide_path=str(slide))
    config = ServerConfig(
        store=store, slide_roots=(root,), token="s3cret", http_address="127.0.0.1:0"
    )
    server, _ = create_server("127.0.0.1:0", config)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.http_port}", slide, 40 * 40
    finally:
        server.stop(grace=1.0)


def _run(
    url: str, token: str, slide: Path, points: list[dict[str, Any]], out: Path
) -> subprocess.CompletedProcess[str]:
    pts = out.parent / f"{out.name}-points.json"
    pts.write_text(json.dumps(points))
    env = {**os.environ, "HISTOSIC_URL": url, "HISTOSIC_TOKEN": token}
    return subprocess.run(
        ["groovy", "-cp", str(GSON), str(DOUBLE), str(SCRIPT), slide.as_uri(), str(pts), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


POINTS: list[dict[str, Any]] = [
    {"x": 600.0, "y": 1000.0, "class": "Tumor"},
    {"x": 900.0, "y": 3000.0, "class": "Tumor"},
    {"x": 4000.0, "y": 1000.0, "class": "Stroma"},
    {"x": 4500.0, "y": 4000.0, "class": "Stroma"},
    {"x": 3000.0, "y": 3000.0, "class": None},
]


def test_script_clusters_and_imports_tiles(served: tuple[str, Path, int], tmp_path: Path) -> None:
    url, slide, n_patches = served
    out = tmp_path / "run"
    proc = _run(url, "s3cret", slide, POINTS, out)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "1 point(s) without a class" in proc.stdout
    imported = json.loads((out / "imported.geojson").read_text())
    feats = imported["features"]
    tiles = [f for f in feats if f["properties"]["objectType"] == "tile"]
    # a derived QuPath class: written as names ["histosic", "suggested seed"] (QuPath shows
    # "histosic: suggested seed")
    suggested = [
        f
        for f in feats
        if f["properties"].get("classification", {}).get("names") == ["histosic", "suggested seed"]
    ]
    assert len(tiles) == n_patches
    assert len(suggested) == 5
    # the synthetic 'tumour' is the left half of the 40 x 40 grid (x < 20 * 128)
    left = [t for t in tiles if t["geometry"]["coordinates"][0][0][0] < 20 * 128]
    right = [t for t in tiles if t["geometry"]["coordinates"][0][0][0] >= 20 * 128 + 64]
    assert sum(t["properties"]["classification"]["name"] == "Tumor" for t in left) > 0.95 * len(
        left
    )
    assert sum(t["properties"]["classification"]["name"] == "Stroma" for t in right) > 0.95 * len(
        right
    )
    assert (out / "removed.txt").read_text() == "1"  # the earlier run's object was replaced
    response = json.loads((out / "response.json").read_text())
    assert "Tumor" in str(response)


def test_script_reports_a_wrong_token(served: tuple[str, Path, int], tmp_path: Path) -> None:
    url, slide, _ = served
    proc = _run(url, "wrong", slide, POINTS, tmp_path / "bad")
    assert proc.returncode != 0
    assert "unauthenticated" in (proc.stderr + proc.stdout).lower()
    assert not (tmp_path / "bad" / "imported.geojson").exists()


def test_script_reports_a_slide_outside_the_roots(
    served: tuple[str, Path, int], tmp_path: Path
) -> None:
    url, _, _ = served
    outside = make_slide(tmp_path / "outside.png")
    proc = _run(url, "s3cret", outside, POINTS, tmp_path / "out")
    assert proc.returncode != 0
    assert "permission_denied" in (proc.stderr + proc.stdout).lower()
