"""The one GeoJSON encoder against the bytes the encoders before the re-layout wrote.

``tests/golden/<case>-<kind>.geojson.gz`` were written by ``histosic.qupath.to_geojson_bytes`` at
commit 0c1ecbc from the inputs of ``tests/geojson_cases.py`` (ids replaced by ``id-<n>``); the old
dict encoder ``to_geojson`` parsed to the same objects (``test_qupath.py`` checked that then).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from geojson_cases import CASES, KINDS, case_inputs, normalise_ids

from histosic.errors import InvalidInputError
from histosic.outputs.geojson import to_geojson, to_geojson_bytes, write_geojson

GOLDEN = Path(__file__).parent / "golden"


def _golden(case: str, kind: str) -> bytes:
    return gzip.decompress((GOLDEN / f"{case}-{kind}.geojson.gz").read_bytes())


def _without_ids(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_ids(v) for k, v in obj.items() if k != "id"}
    if isinstance(obj, list):
        return [_without_ids(v) for v in obj]
    return obj


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_bytes_equal_the_old_encoder(case: str, kind: str) -> None:
    emb, clustering, suggest = case_inputs(case)
    data = to_geojson_bytes(emb, clustering, kind, suggest_points=suggest)
    assert normalise_ids(data) == _golden(case, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_dicts_equal_the_old_encoder(case: str, kind: str) -> None:
    emb, clustering, suggest = case_inputs(case)
    got = to_geojson(emb, clustering, kind, suggest_points=suggest)
    assert _without_ids(got) == _without_ids(json.loads(_golden(case, kind)))
    ids = [f["id"] for f in got["features"]]
    assert len(set(ids)) == len(ids)


def test_dicts_write_the_same_bytes(tmp_path: Path) -> None:
    emb, clustering, _ = case_inputs("multiclass")
    out = write_geojson(tmp_path / "x.geojson", to_geojson(emb, clustering, "both"))
    assert normalise_ids(out.read_bytes()) == _golden("multiclass", "both")


def test_non_finite_tissue_fraction_stays_valid_json() -> None:
    # The old text encoder wrote a NaN tissue fraction as ``nan`` (not JSON).
    emb, clustering, _ = case_inputs("binary")
    assert emb.tissue_fraction is not None
    emb.tissue_fraction[[0, 1]] = [np.nan, np.inf]
    feats = json.loads(to_geojson_bytes(emb, clustering, "tiles"))["features"]
    values = [f["properties"]["measurements"]["histosic: tissue fraction"] for f in feats[:3]]
    assert values[:2] == ["NaN", "Infinity"] and math.isfinite(values[2])


def test_labels_outside_the_classes_are_refused() -> None:
    # The old encoder gave label -1 the last class's colour without a word.
    emb, clustering, _ = case_inputs("binary")
    clustering.result.labels[4] = -1
    with pytest.raises(InvalidInputError, match="labels run from -1 to 1 but it names 2"):
        to_geojson_bytes(emb, clustering, "tiles")
