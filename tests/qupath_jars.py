"""QuPath's own jars for tests: the version folders in ``../shared/qupath/``, the Java each needs,
the Debian jars they run on, and the class path (see that folder's README). Nothing is copied
into the project; a version is skipped, with the reason, where anything is missing."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUPATH = ROOT.parent / "shared" / "qupath"
DEBIAN_JARS = {
    "gson": "libgoogle-gson-java",
    "guava": "libguava-java",
    "commons-math3": "libcommons-math3-java",
    "picocli": "libpicocli-java",
    "slf4j-api": "libslf4j-java",
    "slf4j-simple": "libslf4j-java",
    "snakeyaml": "libyaml-snake-java",
}
# QuPath 0.5 uses Debian's JTS and ImageJ; 0.6 and 0.7 carry their own builds.
DEBIAN_JARS_05 = {"jts-core": "libjts-java", "ij": "libij-java"}
# The Java each QuPath line needs (its build's --release).
JAVA_NEEDED = {"0.5": 17, "0.6": 21, "0.7": 25}


def versions() -> list[str]:
    """The QuPath version folders present, oldest first."""
    if not QUPATH.is_dir():
        return []
    found = [
        d.name
        for d in QUPATH.iterdir()
        if re.fullmatch(r"\d+\.\d+\.\d+", d.name) and list(d.glob("qupath-core-*.jar"))
    ]
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def java_homes() -> list[tuple[int, Path]]:
    """(major version, home) of every JDK with javac under /usr/lib/jvm, smallest first."""
    homes: dict[Path, int] = {}
    for release in Path("/usr/lib/jvm").glob("*/release"):
        home = release.parent.resolve()
        m = re.search(r'JAVA_VERSION="(\d+)', release.read_text(errors="replace"))
        if m and (home / "bin" / "javac").exists():
            homes[home] = int(m.group(1))
    return sorted((v, h) for h, v in homes.items())


#: One pytest parameter per version folder (a skipped one when there is none).
VERSION_PARAMS: list[Any] = [pytest.param(v, id=v) for v in versions()] or [
    pytest.param("none", marks=pytest.mark.skip(reason=f"no QuPath jars in {QUPATH}"))
]


@dataclass(frozen=True)
class QuPathJars:
    version: str
    java_home: Path
    jars: tuple[str, ...]

    @property
    def classpath(self) -> str:
        return ":".join(self.jars)


def qupath_jars(version: str) -> QuPathJars:
    """The Java and class path for one QuPath version; ``pytest.skip`` with the reason if absent."""
    needed = JAVA_NEEDED.get(".".join(version.split(".")[:2]), 25)
    homes = [h for v, h in java_homes() if v >= needed]
    if not homes:
        pytest.skip(
            f"QuPath {version} needs Java {needed} or newer (e.g. "
            "/usr/lib/jvm/temurin-25-jdk-amd64); none is installed"
        )
    wanted = dict(DEBIAN_JARS, **(DEBIAN_JARS_05 if version.startswith("0.5.") else {}))
    missing = {j: p for j, p in wanted.items() if not Path(f"/usr/share/java/{j}.jar").exists()}
    if missing:
        pytest.skip(
            f"QuPath {version} needs /usr/share/java/{{{','.join(missing)}}}.jar (Debian: "
            f"{' '.join(sorted(set(missing.values())))}; make test installs them as root)"
        )
    jars = sorted(str(j) for j in (QUPATH / version).glob("*.jar"))
    jars += [f"/usr/share/java/{j}.jar" for j in wanted]
    return QuPathJars(version, homes[0], tuple(jars))


RUNNER = ROOT / "tests" / "qupath" / "run_script.groovy"


def run_qupath_script(
    qupath: QuPathJars,
    script: Path,
    image: Path,
    points: list[dict[str, Any]],
    out: Path,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    scenario: Path | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    """Run a QuPath script file unchanged on QuPath's own classes (``qupath/run_script.groovy``): a
    real ``ImageData`` on ``image``, ``points`` as real point annotations, ``args`` as the
    script's ``args`` (as ``QuPath script -a`` gives them), then the optional ``scenario``."""
    out.mkdir(parents=True, exist_ok=True)
    pts = out.parent / f"{out.name}-points.json"
    pts.write_text(json.dumps(points))
    full_env = {
        **os.environ,
        "JAVA_HOME": str(qupath.java_home),
        # A short run: the client compiler only and the shared class archive start the JVM in
        # about two thirds of the time (the scripts' behaviour does not depend on the JIT).
        "JAVA_OPTS": "-XX:TieredStopAtLevel=1 -Xshare:auto -Djava.awt.headless=true",
        **(env or {}),
    }
    full_env.pop("QUPATH_TEST_SCENARIO", None)
    if scenario is not None:
        full_env["QUPATH_TEST_SCENARIO"] = str(scenario)
    return subprocess.run(
        ["groovy", "-cp", qupath.classpath, str(RUNNER)]
        + [str(script), str(image), str(pts), str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def forwarding_proxy(
    target: str,
    *,
    hold: Callable[[bytes], float] | None = None,
) -> http.server.ThreadingHTTPServer:
    """A small HTTP proxy on a free loopback port that forwards every POST to ``target`` (a test
    tool: real HTTP on both sides). ``hold(body)`` gives seconds to hold the answer back. Run
    ``serve_forever`` in a thread; ``shutdown`` ends it."""

    class Forward(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if hold is not None:
                time.sleep(hold(body))
            req = urllib.request.Request(
                target + self.path, data=body, headers=dict(self.headers), method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    status, data = resp.status, resp.read()
            except urllib.error.HTTPError as err:
                status, data = err.code, err.read()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
