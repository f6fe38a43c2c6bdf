"""``qupath-scripts/histosic_embed.groovy``, run unchanged by a real Groovy on QuPath's own classes
(``tests/qupath/run_script.groovy``: a real ``ImageData`` on a real PNG, ``QP`` statics as QuPath
imports them) against a real ``histosic serve`` that really embeds (``he-features``; a
``resnet18-random`` job on a larger image to stop). Then the cluster script clusters what it made.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qupath_jars import VERSION_PARAMS, QuPathJars, qupath_jars, run_qupath_script
from test_service_support import connect_call, make_slide

from histosic.service import ServerConfig, create_server

ROOT = Path(__file__).resolve().parents[1]
EMBED = ROOT / "qupath-scripts" / "histosic_embed.groovy"
CLUSTER = ROOT / "qupath-scripts" / "histosic_cluster.groovy"
STOP = ROOT / "tests" / "qupath" / "scenario_stop_embedding.groovy"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.qupath_jars,
    pytest.mark.skipif(
        shutil.which("groovy") is None,
        reason="groovy is not installed (make test installs it on Debian as root)",
    ),
]
# A plain PNG records no pixel size: the script passes slideMpp; small patches keep it quick.
FAST = ["slideMpp=0.5", "targetMpp=1.0", "patchSize=64", "pollSeconds=1"]


@pytest.fixture(scope="module", params=VERSION_PARAMS)
def qupath(request: pytest.FixtureRequest) -> QuPathJars:
    return qupath_jars(request.param)


@dataclass
class Served:
    url: str
    port: int
    root: Path
    store: Path


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "slides"
    root.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    config = ServerConfig(store=store, slide_roots=(root,), http_address="127.0.0.1:0")
    server, _ = create_server("127.0.0.1:0", config)
    server.start()
    try:
        port = server.http_port
        yield Served(f"http://127.0.0.1:{port}", port, root, store)
    finally:
        server.stop(grace=1.0)


def test_embed_then_reuse_then_cluster(qupath: QuPathJars, served: Served, tmp_path: Path) -> None:
    slide = make_slide(served.root / "case 2.png")
    env = {"HISTOSIC_URL": served.url}
    proc = run_qupath_script(qupath, EMBED, slide, [], tmp_path / "embed", args=FAST, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("histosic:")]
    assert lines[0].startswith("histosic: embedding case 2.png with he-features (job ")
    assert lines[-1].startswith("histosic: done: ") and "run histosic_cluster.groovy" in lines[-1]
    job = json.loads((tmp_path / "embed" / "response.json").read_text())
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["patchesDone"] == job["patchesTotal"] > 0
    embedding_id = job["embeddingId"]
    assert (served.store / embedding_id).is_file()
    # Nothing was added to or removed from the hierarchy.
    ids = tmp_path / "embed"
    assert (ids / "ids-after.txt").read_text() == (ids / "ids-before.txt").read_text()

    # Again: the embedding exists, said at once (no polling).
    again = run_qupath_script(qupath, EMBED, slide, [], tmp_path / "again", args=FAST, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    said = [ln for ln in again.stdout.splitlines() if ln.startswith("histosic:")]
    assert said == [
        f"histosic: case 2.png is embedded already with he-features: {embedding_id}; "
        "run histosic_cluster.groovy"
    ]

    # The cluster script then clusters the embedding just made, by the image's URI.
    points = [
        {"x": 300.0, "y": 512.0, "class": "Tumor"},  # the purple half of the disc
        {"x": 560.0, "y": 512.0, "class": "Stroma"},
    ]
    out = tmp_path / "cluster"
    clustered = run_qupath_script(
        qupath, CLUSTER, slide, points, out, args=["compact=false", "suggest=0"], env=env
    )
    assert clustered.returncode == 0, clustered.stdout + clustered.stderr
    assert "seeds used 2" in clustered.stdout
    feats = json.loads((out / "hierarchy.geojson").read_text())["features"]
    assert sum(f["properties"]["objectType"] == "tile" for f in feats) > 50


@pytest.mark.parametrize("case", ["outside the slide roots", "unknown model", "server down"])
def test_embed_errors(qupath: QuPathJars, served: Served, tmp_path: Path, case: str) -> None:
    slide = make_slide(served.root / "s.png")
    args, url = list(FAST), served.url
    if case == "outside the slide roots":
        slide = make_slide(tmp_path / "outside.png")
        expected = ["permission_denied", "outside"]
    elif case == "unknown model":
        args.append("model=no-such-model")
        expected = ["invalid_argument", "no-such-model"]
    else:
        url = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback
        expected = ["cannot reach the server at http://127.0.0.1:9", "histosic serve"]
    out = tmp_path / "out"
    env = {"HISTOSIC_URL": url}
    proc = run_qupath_script(qupath, EMBED, slide, [], out, args=args, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    message = (out / "error.txt").read_text()
    assert "\n" not in message and message.startswith("histosic: ")
    for text in expected:
        assert text in message, message
    assert list(served.store.iterdir()) == []


def test_embed_can_be_stopped(qupath: QuPathJars, served: Served, tmp_path: Path) -> None:
    """Run > Kill running script (a thread interrupt) cancels the server's job: no file left."""
    slide = make_slide(served.root / "big.png", size=3072)
    args = FAST + ["model=resnet18-random", "batchSize=1"]
    out = tmp_path / "stop"
    env = {
        "HISTOSIC_URL": served.url,
        "QUPATH_TEST_SKIP_FIRST": "1",
        "QUPATH_TEST_ARGS": " ".join(args),
    }
    proc = run_qupath_script(qupath, EMBED, slide, [], out, env=env, scenario=STOP)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcome = json.loads((out / "scenario.json").read_text())
    assert not outcome["alive"] and "error" not in outcome, outcome
    printed = outcome["printed"]
    assert "stop with Run > Kill running script" in printed
    stopped = [ln for ln in printed.splitlines() if ln.startswith("histosic: stopped; job ")]
    assert len(stopped) == 1 and "cancelled at" in stopped[0], printed
    job_id = stopped[0].split()[3]
    status, body = connect_call(served.port, "EmbeddingService", "GetJob", {"jobId": job_id})
    assert status == 200 and body["job"]["state"] == "JOB_STATE_CANCELLED", body
    assert 0 < body["job"]["patchesDone"] < body["job"]["patchesTotal"]
    assert [p.name for p in served.store.iterdir()] == []  # no embedding, no partial file
