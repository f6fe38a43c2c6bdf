"""Errors of the output modules stay inside histosic.errors (they escaped as ValueError before)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from histosic.errors import InvalidInputError
from histosic.outputs import qupath_classes
from histosic.outputs.geojson import write_geojson
from histosic.outputs.seedfile import read_seeds

PACKAGE = Path(__file__).resolve().parents[1] / "server" / "histosic"


def test_seed_path_with_nul_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="is not a valid path"):
        read_seeds("seeds\x00.geojson")


def test_seed_file_with_an_overlong_integer_is_invalid_input(tmp_path: Path) -> None:
    path = tmp_path / "s.geojson"
    path.write_text('{"type": "Point", "coordinates": [' + "1" * 5000 + ", 2]}")
    with pytest.raises(InvalidInputError, match="is not GeoJSON as QuPath writes it"):
        read_seeds(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1, 2}])
def test_geojson_that_json_cannot_hold_is_invalid_input(tmp_path: Path, bad: object) -> None:
    out = tmp_path / "x.geojson"
    with pytest.raises(InvalidInputError, match=r"cannot write .*x\.geojson as GeoJSON"):
        write_geojson(out, {"type": "FeatureCollection", "features": [{"v": bad}]})
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_java_random_bound_is_invalid_input() -> None:
    rnd = qupath_classes._JavaRandom(42)
    with pytest.raises(InvalidInputError, match="positive bound, got 0"):
        rnd.next_int(0)


FORBIDDEN: tuple[str, ...] = ("torch", "grpc", "paquo", "connectrpc", "histosic.embed")
FORBIDDEN += ("histosic.service", "histosic.commands", "histosic.cli")


@pytest.mark.parametrize(
    "module",
    sorted(p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "outputs").glob("*.py")),
)
def test_outputs_import_nothing_heavy(module: str) -> None:
    # Function-level imports included: the whole module's syntax tree.
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    bad = [n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == [], f"{module} imports {bad}"
