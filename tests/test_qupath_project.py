"""The cluster script headless over a whole QuPath project, as ``QuPath script -p project.qpproj
-s`` runs it, on QuPath's own project classes.

``tests/qupath/run_project.groovy`` builds the project with QuPath's project API
(``Projects.createProject``, ``project.addImage`` with the image's ``ImageServerBuilder``, point
annotations saved through ``entry.saveImageData``), then runs the script on each image entry as
QuPath's script command does (``entry.readImageData``, ``QP.setBatchProjectAndImage(project,
imageData)``, QuPath's default imports, ``args``, ``entry.saveImageData``), and reads the saved
hierarchies back from disk. The ``QuPath`` launcher itself (in QuPath's GUI application) is not
here; its loop is what the runner does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from qupath_jars import ROOT, VERSION_PARAMS, QuPathJars, qupath_jars
from test_qupath_cluster_script import POINTS
from test_service_support import make_embedding, make_slide

from histosic.service import ServerConfig, create_server
from histosic.store import file_fingerprint

SCRIPT = ROOT / "qupath-scripts" / "histosic_cluster.groovy"
RUNNER = ROOT / "tests" / "qupath" / "run_project.groovy"
GROOVY_JAR = Path("/usr/share/java/groovy-all.jar")  # Debian's groovy package

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
    return qupath_jars(request.param)


def _groovy(
    qupath: QuPathJars, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # QuPath's classes on the JVM's own class path, as in QuPath (`groovy -cp` would load them in
    # Groovy's RootLoader, and PathIO's deserialisation filter refuses classes from other loaders).
    java = [str(qupath.java_home / "bin" / "java"), "-XX:TieredStopAtLevel=1", "-Xshare:auto"]
    java += ["-Djava.awt.headless=true", "-cp", f"{qupath.classpath}:{GROOVY_JAR}"]
    return subprocess.run(
        [*java, "groovy.ui.GroovyMain", str(RUNNER), *args],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, **(env or {})},
    )


def test_cluster_script_over_a_project(qupath: QuPathJars, tmp_path: Path) -> None:
    root = tmp_path / "slides"
    root.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    slides = [make_slide(root / f"case{i}.png", seed=i) for i in range(3)]
    for s in slides[:2]:  # the third is not embedded
        make_embedding(store / f"{s.stem}.h5", fingerprint=file_fingerprint(s), slide_path=str(s))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"image": str(s), "points": POINTS, "user": True} for s in slides]))
    project = tmp_path / "project"
    made = _groovy(qupath, "create", str(project), str(spec))
    assert made.returncode == 0, made.stderr
    assert (project / "project.qpproj").is_file()

    server, _ = create_server(
        "127.0.0.1:0", ServerConfig(store=store, slide_roots=(root,), http_address="127.0.0.1:0")
    )
    server.start()
    try:
        env = {"HISTOSIC_URL": f"http://127.0.0.1:{server.http_port}", "HISTOSIC_TOKEN": ""}
        out = tmp_path / "out"
        ran = _groovy(qupath, "script", str(project), str(SCRIPT), str(out), "suggest=3", env=env)
    finally:
        server.stop(grace=1.0)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count("seeds used 4") == 2
    for s in slides[:2]:
        saved = json.loads((out / f"{s.name}.json").read_text())
        assert saved["tiles"] == 1600 and saved["suggested"] == 3
        assert saved["points"] == len(POINTS)  # the seeds are kept
        assert set(saved["classes"]) == {"Tumor", "Stroma"}
    # The image without an embedding: one line for it, and its saved objects untouched.
    errors = json.loads((out / "errors.json").read_text())
    assert list(errors) == ["case2.png"]
    assert "no embedding" in errors["case2.png"] and "histosic_embed.groovy" in errors["case2.png"]
    unembedded = json.loads((out / "case2.png.json").read_text())
    assert unembedded["tiles"] == unembedded["suggested"] == 0 and unembedded["classes"] == {}
    assert unembedded["points"] == len(POINTS) and unembedded["all"] == len(POINTS) + 2
    # The user's annotation and detection stay in every image.
    for s in slides:
        user = json.loads((out / f"{s.name}.json").read_text())["user"]
        assert sorted((c, r) for _, c, r in user) == [
            ("Immune cells", "Ellipse"),
            ("Region*", "Rectangle"),
        ]
