"""``qupath-scripts/histosic_cluster.groovy``, run unchanged by a real Groovy on QuPath's own
classes against a real histosic server.

``tests/qupath/run_script.groovy`` runs the script as QuPath runs it: a real ``ImageData`` from
``ImageServerProvider.buildServer`` on a real PNG, made current with
``QP.setBatchProjectAndImage(null, imageData)``, the script evaluated with a static star import of
``qupath.lib.scripting.QP`` and the imports of ``QP.getCoreClasses()``, its ``args`` bound as
``QuPath script -a`` binds them; the seeds are real point annotations in the real hierarchy, beside
a user's annotation and detection that must never be touched. ``getAnnotationObjects``,
``removeObjects``, ``PathIO`` ... are QuPath's code. Parametrised over every QuPath version folder
in ``../shared/qupath/`` (see ``tests/qupath_jars.py``); QuPath's GUI is the only part left out.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from qupath_jars import VERSION_PARAMS, QuPathJars, qupath_jars, run_qupath_script
from test_service_support import make_embedding, make_slide

from histosic.service import ServerConfig, create_server
from histosic.store import file_fingerprint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "qupath-scripts" / "histosic_cluster.groovy"

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


@dataclass
class Served:
    url: str
    slide: Path
    root: Path
    n_patches: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    d = tmp_path_factory.mktemp("served")
    root = d / "slides"
    root.mkdir()
    slide = make_slide(root / "case 1.png")
    store = d / "store"
    store.mkdir()
    make_embedding(store / "case1.h5", fingerprint=file_fingerprint(slide), slide_path=str(slide))
    config = ServerConfig(
        store=store, slide_roots=(root,), token="s3cret", http_address="127.0.0.1:0"
    )
    server, _ = create_server("127.0.0.1:0", config)
    server.start()
    try:
        yield Served(f"http://127.0.0.1:{server.http_port}", slide, root, 40 * 40)
    finally:
        server.stop(grace=1.0)


def run(
    qupath: QuPathJars,
    url: str,
    token: str,
    slide: Path,
    points: list[dict[str, Any]],
    out: Path,
    *args: str,
) -> subprocess.CompletedProcess[str]:
    env = {"HISTOSIC_URL": url, "HISTOSIC_TOKEN": token}
    return run_qupath_script(qupath, SCRIPT, slide, points, out, args=args, env=env)


POINTS: list[dict[str, Any]] = [
    {"x": 600.0, "y": 1000.0, "class": "Tumor"},
    {"x": 900.0, "y": 3000.0, "class": "Tumor: Positive"},  # a derived class: positive
    {"x": 4000.0, "y": 1000.0, "class": "Stroma"},
    {"x": 4500.0, "y": 4000.0, "class": "Stroma"},
    {"x": 3000.0, "y": 3000.0, "class": None},
]


def features(out: Path) -> list[dict[str, Any]]:
    feats: list[dict[str, Any]] = json.loads((out / "hierarchy.geojson").read_text())["features"]
    return feats


def names(f: dict[str, Any]) -> list[str] | None:
    cls = f["properties"].get("classification")
    if cls is None:
        return None
    return list(cls["names"]) if "names" in cls else [cls["name"]]


def check_user_objects_untouched(out: Path) -> None:
    """The user's rectangle annotation and detection the runner adds are there, unchanged."""
    feats = features(out)
    region = [f for f in feats if f["properties"].get("name") == "user region"]
    assert len(region) == 1 and names(region[0]) == ["Region*"]
    cells = [f for f in feats if names(f) == ["Immune cells"]]
    assert len(cells) == 1 and cells[0]["properties"]["measurements"] == {"Area": 1256.5}


def test_script_clusters_and_imports_tiles(
    qupath: QuPathJars, served: Served, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = run(qupath, served.url, "s3cret", served.slide, POINTS, out, "compact=false")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (out / "version.txt").read_text() == qupath.version
    # QuPath gives the image's URI with one slash and the space encoded; the server resolved it.
    assert (out / "uri.txt").read_text() == "file:" + str(served.slide).replace(" ", "%20")
    assert "1 point(s) without a class" in proc.stdout
    assert "seeds used 4" in proc.stdout
    feats = features(out)
    tiles = [f for f in feats if f["properties"]["objectType"] == "tile"]
    suggested = [f for f in feats if names(f) == ["histosic", "suggested seed"]]
    assert len(tiles) == served.n_patches
    assert len(suggested) == 5
    # The seeds are still there, the derived class as QuPath writes it.
    seeds = [
        f
        for f in feats
        if f["properties"]["objectType"] == "annotation"
        and f["geometry"]["type"] == "Point"
        and f not in suggested
    ]
    assert len(seeds) == len(POINTS)
    assert any(names(f) == ["Tumor", "Positive"] for f in seeds)
    # the synthetic 'tumour' is the left half of the 40 x 40 grid (x < 20 * 128)
    left = [t for t in tiles if t["geometry"]["coordinates"][0][0][0] < 20 * 128]
    right = [t for t in tiles if t["geometry"]["coordinates"][0][0][0] >= 20 * 128 + 64]
    assert sum(names(t) == ["Tumor"] for t in left) > 0.95 * len(left)
    assert sum(names(t) == ["Stroma"] for t in right) > 0.95 * len(right)
    assert (out / "removed.txt").read_text() == "1"  # the earlier run's object was replaced
    assert not any(
        f["properties"].get("measurements", {}).get("histosic: confidence") == 0.9 for f in feats
    )
    check_user_objects_untouched(out)
    assert "added 1605 objects, replaced 1 of an earlier run" in proc.stdout
    response = json.loads((out / "response.json").read_text())
    assert "Tumor" in str(response)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


ONLY_TUMOUR = [
    {"x": 600.0, "y": 1000.0, "class": "Tumor"},
    {"x": 900.0, "y": 3000.0, "class": "Tumor: Positive"},
]


@pytest.mark.parametrize(
    "case",
    [
        "server down",
        "wrong token",
        "outside the slide roots",
        "not embedded",
        "no points",
        "one class only",
        "one class only, multi-class",
        "bad setting",
    ],
)
def test_script_error_paths(qupath: QuPathJars, served: Served, tmp_path: Path, case: str) -> None:
    """Each error: a non-zero exit, one line that says what and what to do, and the hierarchy
    exactly as it was (nothing added, nothing removed)."""
    url, token, slide, points, args = served.url, "s3cret", served.slide, POINTS, ["compact=false"]
    if case == "server down":
        url = f"http://127.0.0.1:{_free_port()}"
        expected = [f"cannot reach the server at {url}", "is `histosic serve` running"]
    elif case == "wrong token":
        token = "wrong"
        expected = ["unauthenticated", "set token in the settings block"]
    elif case == "outside the slide roots":
        slide = make_slide(tmp_path / "outside.png")
        expected = ["permission_denied", "outside"]
    elif case == "not embedded":
        slide = make_slide(served.root / f"new {qupath.version}.png", seed=3)
        expected = ["not_found", "no embedding", "embed it first with histosic_embed.groovy"]
    elif case == "no points":
        points = [{"x": 3000.0, "y": 3000.0, "class": None}]
        expected = ["no classified point annotations", "place points of class Tumor"]
    elif case == "one class only":
        points = ONLY_TUMOUR
        expected = ["every seed is of the positive class Tumor", "at least one other class"]
    elif case == "one class only, multi-class":
        points, args = ONLY_TUMOUR[:1], ["multiclass=true"]
        expected = ["every seed is of class Tumor", "at least two classes"]
    else:
        args = ["output=polygons"]
        expected = ["output must be 'tiles', 'detections', 'regions' or 'both'", "'polygons'"]
    out = tmp_path / "out"
    proc = run(qupath, url, token, slide, points, out, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    message = (out / "error.txt").read_text()
    assert "\n" not in message and message.startswith("histosic: ")
    for text in expected:
        assert text in message
    assert (out / "ids-after.txt").read_text() == (out / "ids-before.txt").read_text()
    assert (out / "removed.txt").read_text() == "0"
    check_user_objects_untouched(out)


def _objects(out: Path) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = json.loads((out / "objects.json").read_text())
    return objs


def _key(o: dict[str, Any]) -> tuple[Any, ...]:
    bounds = tuple(round(b, 6) for b in o["bounds"])
    return (o["type"], o.get("cls") or "", o["roi"], bounds, o.get("parent") or "")


@pytest.mark.parametrize("output", ["tiles", "detections", "both"])
def test_compact_answer_gives_the_same_objects(
    qupath: QuPathJars, served: Served, tmp_path: Path, output: str
) -> None:
    """Tiles built in the script from the compact answer (cells, labels, confidence) are the objects
    QuPath's own GeoJSON reader makes of the GeoJSON answer: types, classes, ROIs, measurements."""
    got = {}
    for compact in ("false", "true"):
        out = tmp_path / f"compact-{compact}"
        proc = run(
            qupath, served.url, "s3cret", served.slide, POINTS, out,
            f"compact={compact}", f"output={output}",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        got[compact] = sorted(_objects(out), key=_key)
    geojson, compact_objs = got["false"], got["true"]
    assert [_key(o) for o in compact_objs] == [_key(o) for o in geojson]
    kind = "detection" if output == "detections" else "tile"
    patches = [
        o for o in compact_objs if o["type"] == kind and "histosic: confidence" in o["measurements"]
    ]
    assert len(patches) == served.n_patches
    assert {o["roi"] for o in patches} == {"Rectangle"}
    assert {o.get("cls") for o in patches} == {"Tumor", "Stroma"}
    differ = 0
    for a, b in zip(geojson, compact_objs, strict=True):
        assert a["measurements"].keys() == b["measurements"].keys()
        for k, v in a["measurements"].items():
            if b["measurements"][k] != pytest.approx(v, rel=1e-6, abs=1e-7):
                # The GeoJSON rounds the server's float64 confidence to 4 decimals, the script the
                # float32 of the compact answer: a value within 1e-8 of a rounding tie can land on
                # either side (2 of 1600 here).
                assert k == "histosic: confidence" and abs(b["measurements"][k] - v) < 1.01e-4
                differ += 1
    assert differ <= 0.01 * len(patches)
    suggested = [o for o in compact_objs if o.get("cls") == "histosic: suggested seed"]
    assert len(suggested) == 5 and {o["roi"] for o in suggested} == {"Points"}
    if output == "both":
        assert sum(o["roi"] in ("Polygon", "Geometry") for o in compact_objs) == 2  # the regions
    assert any(o["measurements"].get("histosic: seed") == 1.0 for o in patches)
