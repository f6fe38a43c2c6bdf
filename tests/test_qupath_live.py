"""Live mode of ``qupath-scripts/histosic_cluster.groovy`` on a real ``PathObjectHierarchy``.

The script runs unchanged on QuPath's own classes (``tests/qupath/run_script.groovy``) with
``live=true`` against a real ``histosic serve``; then ``tests/qupath/scenario_live.groovy`` makes
the changes a pathologist makes, through QuPath's own hierarchy methods, which fire QuPath's real
hierarchy events: add, move, reclassify (accept a suggested seed), remove a seed point, five quick
clicks, a change while an answer is on its way, a user annotation; then a re-run and a closed
image. Between the script and the server sits a small forwarding proxy (a test tool: real HTTP on
both sides) that holds back one answer, so that a newer change overtakes an older request.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from qupath_jars import (
    VERSION_PARAMS,
    QuPathJars,
    forwarding_proxy,
    qupath_jars,
    run_qupath_script,
)
from test_qupath_cluster_script import POINTS, SCRIPT, check_user_objects_untouched
from test_service_support import make_embedding, make_slide

from histosic.service import ServerConfig, create_server
from histosic.store import file_fingerprint

SCENARIO = Path(__file__).resolve().parent / "qupath" / "scenario_live.groovy"
DEBOUNCE_MS = 300
HOLD_S = 1.5

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


def _hold(body: bytes) -> float:
    """Hold back the answer to the request whose seeds hold the scenario's 'late' point
    (4900, 300) but not yet its 'later' one (4900, 700)."""
    xy = {(s["x"], s["y"]) for s in json.loads(body).get("seeds", [])}
    return HOLD_S if (4900.0, 300.0) in xy and (4900.0, 700.0) not in xy else 0.0


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path, list[float]]]:
    root = tmp_path / "slides"
    root.mkdir()
    slide = make_slide(root / "live.png")
    store = tmp_path / "store"
    store.mkdir()
    make_embedding(store / "live.h5", fingerprint=file_fingerprint(slide), slide_path=str(slide))
    config = ServerConfig(store=store, slide_roots=(root,), http_address="127.0.0.1:0")
    server, _ = create_server("127.0.0.1:0", config)
    server.start()
    held: list[float] = []

    def hold(body: bytes) -> float:
        seconds = _hold(body)
        if seconds:
            held.append(seconds)
        return seconds

    proxy = forwarding_proxy(f"http://127.0.0.1:{server.http_port}", hold=hold)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", slide, held
    finally:
        proxy.shutdown()
        server.stop(grace=1.0)


def test_live_mode_follows_the_seeds(
    qupath: QuPathJars, served: tuple[str, Path, list[float]], tmp_path: Path
) -> None:
    url, slide, held = served
    out = tmp_path / "live"
    env = {
        "HISTOSIC_URL": url,
        "QUPATH_TEST_N": "1600",
        "QUPATH_TEST_DEBOUNCE": str(DEBOUNCE_MS),
    }
    args = ["live=true", f"debounceMs={DEBOUNCE_MS}"]
    proc = run_qupath_script(
        qupath, SCRIPT, slide, POINTS, out, args=args, env=env, scenario=SCENARIO, timeout=400
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "live mode on" in proc.stdout
    s = json.loads((out / "scenario.json").read_text())
    # The first run's own objects trigger nothing; one live session runs.
    assert s["idle"]["updates"] == 0 and s["idle"]["threads"] == 1
    assert s["idle"]["seedsBefore"] == 4
    # Each seed change re-clusters once; the seed patches follow (histosic: seed on the tiles).
    for step, seeds in (("add", 5), ("move", 5), ("accept", 6), ("remove", 5)):
        assert s[step]["updates"] == 1 and s[step]["seeds"] == seeds, (step, s[step])
    # About a second from the click to the new map (debounce + clustering + import, shared CPU).
    assert 0 < s["add"]["firstMs"] < 3000, s["add"]
    # An accepted suggestion stays, as a seed, and is no longer suggested.
    assert s["accept"]["kept"] and not s["accept"]["stillSuggested"]
    # Five quick clicks: one re-cluster with all five.
    assert s["burst"]["updates"] == 1 and s["burst"]["seeds"] == 10, s["burst"]
    # The held-back answer was overtaken by the newer change: never shown, only the newer one.
    assert len(held) == 1
    assert s["overtaken"]["updates"] == 1 and s["overtaken"]["seeds"] == 12, s["overtaken"]
    assert "a newer change came in" in proc.stderr
    # Other objects' changes do nothing.
    assert s["userAnnotation"]["updates"] == 0
    # Running the script again detaches it.
    assert "live mode of the earlier run detached" in s["rerunPrinted"]
    assert s["threadsAfterRerun"] == 0 and s["afterRerun"]["updates"] == 0
    # Another image current (this one closed): the next event detaches it.
    assert s["threadsLiveAgain"] == 1
    assert s["afterClose"]["updates"] == 0 and s["threadsAfterClose"] == 0
    # The user's annotation and detection were never touched.
    check_user_objects_untouched(out)
