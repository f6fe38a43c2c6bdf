"""The QuPath Groovy script, run unchanged by a real Groovy on QuPath's own classes against a real
histosic server.

``tests/qupath/run_script.groovy`` runs the script as QuPath runs it: a real ``ImageData`` from
``ImageServerProvider.buildServer`` on a real PNG, made current with
``QP.setBatchProjectAndImage(null, imageData)``, the script evaluated with a static star import of
``qupath.lib.scripting.QP`` and the imports of ``QP.getCoreClasses()``; the seeds are real point
annotations in the real hierarchy, and ``getAnnotationObjects``, ``removeObjects``,
``importObjectsFromFile`` ... are QuPath's code. Parametrised over every QuPath version folder in
``../shared/qupath/`` (see ``tests/qupath_jars.py``); QuPath's GUI is the only part left out.
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
from qupath_jars import VERSION_PARAMS, QuPathJars, qupath_jars
from test_service_support import make_embedding, make_slide

from histosic.service import ServerConfig, create_server
from histosic.store import file_fingerprint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "qupath-scripts" / "histosic_cluster.groovy"
RUNNER = ROOT / "tests" / "qupath" / "run_script.groovy"

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
    qupath: QuPathJars,
    url: str,
    token: str,
    slide: Path,
    points: list[dict[str, Any]],
    out: Path,
) -> subprocess.CompletedProcess[str]:
    pts = out.parent / f"{out.name}-points.json"
    pts.write_text(json.dumps(points))
    env = {
        **os.environ,
        "HISTOSIC_URL": url,
        "HISTOSIC_TOKEN": token,
        "JAVA_HOME": str(qupath.java_home),
        # A short run: the client compiler only and the shared class archive start the JVM in
        # about two thirds of the time (the script's behaviour does not depend on the JIT).
        "JAVA_OPTS": "-XX:TieredStopAtLevel=1 -Xshare:auto",
    }
    return subprocess.run(
        [
            "groovy",
            "-cp",
            qupath.classpath,
            str(RUNNER),
            str(SCRIPT),
            str(slide),
            str(pts),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


POINTS: list[dict[str, Any]] = [
    {"x": 600.0, "y": 1000.0, "class": "Tumor"},
    {"x": 900.0, "y": 3000.0, "class": "Tumor: Positive"},  # a derived class: positive
    {"x": 4000.0, "y": 1000.0, "class": "Stroma"},
    {"x": 4500.0, "y": 4000.0, "class": "Stroma"},
    {"x": 3000.0, "y": 3000.0, "class": None},
]


def test_script_clusters_and_imports_tiles(
    qupath: QuPathJars, served: tuple[str, Path, int], tmp_path: Path
) -> None:
    url, slide, n_patches = served
    out = tmp_path / "run"
    proc = _run(qupath, url, "s3cret", slide, POINTS, out)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (out / "version.txt").read_text() == qupath.version
    # QuPath gives the image's URI with one slash and the space encoded; the server resolved it.
    assert (out / "uri.txt").read_text() == "file:" + str(slide).replace(" ", "%20")
    assert "1 point(s) without a class" in proc.stdout
    assert "seeds used 4" in proc.stdout
    feats = json.loads((out / "hierarchy.geojson").read_text())["features"]
    tiles = [f for f in feats if f["properties"]["objectType"] == "tile"]
    suggested = [
        f
        for f in feats
        if f["properties"].get("classification", {}).get("names") == ["histosic", "suggested seed"]
    ]
    assert len(tiles) == n_patches
    assert len(suggested) == 5
    # The seeds are still there, the derived class as QuPath writes it.
    seeds = [
        f for f in feats if f["properties"]["objectType"] == "annotation" and f not in suggested
    ]
    assert len(seeds) == len(POINTS)
    assert any(
        f["properties"].get("classification", {}).get("names") == ["Tumor", "Positive"]
        for f in seeds
    )
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
    assert not any(
        f["properties"].get("measurements", {}).get("histosic: confidence") == 0.9 for f in feats
    )
    response = json.loads((out / "response.json").read_text())
    assert "Tumor" in str(response)


def test_script_reports_a_wrong_token(
    qupath: QuPathJars, served: tuple[str, Path, int], tmp_path: Path
) -> None:
    url, slide, _ = served
    proc = _run(qupath, url, "wrong", slide, POINTS, tmp_path / "bad")
    assert proc.returncode != 0
    assert "unauthenticated" in (proc.stderr + proc.stdout).lower()
    assert not (tmp_path / "bad" / "hierarchy.geojson").exists()


def test_script_reports_a_slide_outside_the_roots(
    qupath: QuPathJars, served: tuple[str, Path, int], tmp_path: Path
) -> None:
    url, _, _ = served
    outside = make_slide(tmp_path / "outside.png")
    proc = _run(qupath, url, "s3cret", outside, POINTS, tmp_path / "out")
    assert proc.returncode != 0
    assert "permission_denied" in (proc.stderr + proc.stdout).lower()
