"""``histosic batch`` through paquo, for real, on QuPath projects made with QuPath's project API.

paquo 0.9 starts QuPath's real classes (the jars of ``../shared/qupath/<version>/`` laid out as a
QuPath installation: ``lib/app/*.jar`` and ``lib/runtime/lib/server/libjvm.so`` of a system JDK,
``PAQUO_QUPATH_DIR`` pointing at it; see that folder's README). paquo's ``add_image`` needs QuPath's
GUI for the thumbnail, so the projects are made by ``tests/qupath/run_project.groovy`` with
``qupath.lib.projects.Projects`` (an image entry per slide, point annotations saved through
``entry.saveImageData``), and their saved hierarchies are read back by QuPath's own
``ProjectIO.loadProject``. ``histosic batch`` runs as a command, in its own process (one JVM per
process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from qupath_jars import ROOT, VERSION_PARAMS, QuPathJars, qupath_jars
from test_qupath_cluster_script import POINTS
from test_qupath_project import GROOVY_JAR, _groovy
from test_service_support import make_embedding, make_slide

from histosic.store import file_fingerprint

# paquo loads QuPath's logging classes (qupath-gui-fx, logging only), which need JavaFX and logback.
PAQUO_JARS = {
    "javafx-base": "libopenjfx-java",
    "javafx-graphics": "libopenjfx-java",
    "logback-classic": "liblogback-java",
    "logback-core": "liblogback-java",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.qupath_jars,
    pytest.mark.skipif(
        shutil.which("groovy") is None or not GROOVY_JAR.exists(),
        reason="groovy is not installed (make test installs it on Debian as root)",
    ),
]


@pytest.fixture(scope="module", params=VERSION_PARAMS)
def qupath(request: pytest.FixtureRequest) -> QuPathJars:
    pytest.importorskip("paquo", reason="paquo is not installed (pip install histosic[batch])")
    return qupath_jars(request.param)


@pytest.fixture(scope="module")
def paquo_dir(qupath: QuPathJars, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The jars laid out as a QuPath installation for paquo (links, nothing copied)."""
    missing = {j: p for j, p in PAQUO_JARS.items() if not Path(f"/usr/share/java/{j}.jar").exists()}
    if missing:
        pytest.skip(
            f"paquo needs /usr/share/java/{{{','.join(missing)}}}.jar (Debian: "
            f"{' '.join(sorted(set(missing.values())))})"
        )
    d = tmp_path_factory.mktemp(f"QuPath-{qupath.version}")
    app = d / "lib" / "app"
    app.mkdir(parents=True)
    jars = [j for j in qupath.jars if not j.endswith("slf4j-simple.jar")]  # logback binds slf4j
    for jar in [*jars, *(f"/usr/share/java/{j}.jar" for j in PAQUO_JARS)]:
        (app / Path(jar).name).symlink_to(jar)
    server = d / "lib" / "runtime" / "lib" / "server"
    server.mkdir(parents=True)
    (server / "libjvm.so").symlink_to(qupath.java_home / "lib" / "server" / "libjvm.so")
    return d


def _batch(paquo_dir: Path, project: Path, store: Path, *args: str) -> dict[str, object]:
    report = project.parent / "report.json"
    env = {
        **os.environ,
        "PAQUO_QUPATH_DIR": str(paquo_dir),
        "PYTHONPATH": str(ROOT / "server") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [sys.executable, "-m", "histosic", "batch", str(project), "--store", str(store)]
    proc = subprocess.run(
        [*cmd, "--report", str(report), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    out: dict[str, object] = json.loads(report.read_text())
    return out


# The cluster script's seeds without the derived class (that case is its own test, below).
PLAIN = [dict(p, **{"class": "Tumor"}) if p["class"] == "Tumor: Positive" else p for p in POINTS]


def _project(qupath: QuPathJars, tmp_path: Path, n: int, points: list[dict[str, object]]) -> Path:
    """A project of ``n`` slides made with QuPath's project API; all but the last embedded."""
    root = tmp_path / "slides"
    root.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    slides = [make_slide(root / f"case{i}.png", seed=i) for i in range(n)]
    for s in slides[: max(n - 1, 1)]:
        make_embedding(store / f"{s.stem}.h5", fingerprint=file_fingerprint(s), slide_path=str(s))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"image": str(s), "points": points, "user": True} for s in slides]))
    project = tmp_path / "project"
    made = _groovy(qupath, "create", str(project), str(spec))
    assert made.returncode == 0, made.stderr
    return project


def _statuses(report: dict[str, object]) -> dict[str, str]:
    images = report["images"]
    assert isinstance(images, list)
    return {i["image"]: i["status"] for i in images}


def test_batch_through_paquo_on_a_qupath_project(
    qupath: QuPathJars, paquo_dir: Path, tmp_path: Path
) -> None:
    project = _project(qupath, tmp_path, 3, PLAIN)
    store = tmp_path / "store"
    slides = sorted((tmp_path / "slides").iterdir())

    first = _batch(paquo_dir, project, store)
    assert _statuses(first) == {
        "case0.png": "clustered",
        "case1.png": "clustered",
        "case2.png": "no embedding",
    }
    read = _groovy(qupath, "read", str(project), str(tmp_path / "read1"))
    assert read.returncode == 0, read.stderr
    for s in slides:
        saved = json.loads((tmp_path / "read1" / f"{s.name}.json").read_text())
        mapped = s is not slides[2]
        assert saved["tiles"] == (1600 if mapped else 0), s.name
        assert saved["suggested"] == 0
        assert saved["points"] == len(PLAIN)  # the seeds are kept
        if mapped:
            assert set(saved["classes"]) == {"Tumor", "Stroma"}
        # The user's annotation and detection are untouched.
        assert sorted((c, r) for _, c, r in saved["user"]) == [
            ("Immune cells", "Ellipse"),
            ("Region*", "Rectangle"),
        ]

    # Nothing changed: both mapped images are skipped.
    again = _batch(paquo_dir, project, store)
    assert _statuses(again) == {
        "case0.png": "skipped",
        "case1.png": "skipped",
        "case2.png": "no embedding",
    }

    # A new seed on one image: that image is clustered again, the other skipped.
    edit = tmp_path / "edit.json"
    edit.write_text(
        json.dumps(
            [{"imageName": "case1.png", "points": [{"x": 4300, "y": 2500, "class": "Stroma"}]}]
        )
    )
    edited = _groovy(qupath, "edit", str(project), str(edit))
    assert edited.returncode == 0, edited.stderr
    third = _batch(paquo_dir, project, store)
    assert _statuses(third) == {
        "case0.png": "skipped",
        "case1.png": "clustered",
        "case2.png": "no embedding",
    }
    read = _groovy(qupath, "read", str(project), str(tmp_path / "read3"))
    assert read.returncode == 0, read.stderr
    case1 = json.loads((tmp_path / "read3" / "case1.png.json").read_text())
    assert case1["tiles"] == 1600 and case1["points"] == len(PLAIN) + 1
    assert case1["all"] == len(PLAIN) + 1 + 2 + 1600  # seeds, the user's two objects, the new map


def test_batch_through_paquo_does_not_take_its_suggestions_for_seeds(
    qupath: QuPathJars, paquo_dir: Path, tmp_path: Path
) -> None:
    project = _project(qupath, tmp_path, 1, PLAIN)
    first = _batch(paquo_dir, project, tmp_path / "store", "--suggest", "3")
    assert _statuses(first) == {"case0.png": "clustered"}
    # Nothing the user did: the second run must skip, not cluster with the suggestions as seeds.
    again = _batch(paquo_dir, project, tmp_path / "store", "--suggest", "3")
    assert _statuses(again) == {"case0.png": "skipped"}, again["images"]


def test_batch_through_paquo_counts_a_derived_class_as_positive(
    qupath: QuPathJars, paquo_dir: Path, tmp_path: Path
) -> None:
    project = _project(qupath, tmp_path, 1, POINTS)  # "Tumor: Positive" among the seeds
    report = _batch(paquo_dir, project, tmp_path / "store")
    assert _statuses(report) == {"case0.png": "clustered"}
    read = _groovy(qupath, "read", str(project), str(tmp_path / "read"))
    assert read.returncode == 0, read.stderr
    saved = json.loads((tmp_path / "read" / "case0.png.json").read_text())
    assert set(saved["classes"]) == {"Tumor", "Stroma"}  # as the script and the server give


ACCEPT = """
import sys
from paquo.classes import QuPathPathClass
from paquo.projects import QuPathProject

with QuPathProject(sys.argv[1], mode="r+") as qp:
    image = qp.images[0]
    for a in image.hierarchy.annotations:
        if a.path_class is not None and a.path_class.id == "histosic: suggested seed":
            a.update_path_class(QuPathPathClass("Tumor"))  # the pathologist accepts it
            break
    else:
        raise SystemExit("no suggestion to accept")
    qp.save()
"""


def test_batch_through_paquo_keeps_an_accepted_suggestion_as_a_seed(
    qupath: QuPathJars, paquo_dir: Path, tmp_path: Path
) -> None:
    project = _project(qupath, tmp_path, 1, PLAIN)
    first = _batch(paquo_dir, project, tmp_path / "store", "--suggest", "3")
    assert _statuses(first) == {"case0.png": "clustered"}
    env = {**os.environ, "PAQUO_QUPATH_DIR": str(paquo_dir)}
    accepted = subprocess.run(
        [sys.executable, "-c", ACCEPT, str(project)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr[-4000:]
    # A new seed: clustered again, and the accepted point stays, one more seed than before.
    again = _batch(paquo_dir, project, tmp_path / "store", "--suggest", "3")
    assert _statuses(again) == {"case0.png": "clustered"}, again["images"]
    read = _groovy(qupath, "read", str(project), str(tmp_path / "read"))
    assert read.returncode == 0, read.stderr
    saved = json.loads((tmp_path / "read" / "case0.png.json").read_text())
    assert saved["points"] == len(PLAIN) + 1
    assert saved["suggested"] == 3
