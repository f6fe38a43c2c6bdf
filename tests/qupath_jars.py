"""QuPath's own jars for tests: the version folders in ``../shared/qupath/``, the Java each needs,
the Debian jars they run on, and the class path (see that folder's README). Nothing is copied
into the project; a version is skipped, with the reason, where anything is missing."""

from __future__ import annotations

import re
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
