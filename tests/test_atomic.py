"""histosic.atomic: a file appears whole or not at all, and an existing one survives a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from histosic.atomic import atomic_output, check_output, write_atomic, write_text_atomic
from histosic.errors import InvalidInputError, OutputExistsError


def test_write_and_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    assert write_atomic(out, b"one") == out
    assert out.read_bytes() == b"one"
    with pytest.raises(OutputExistsError, match=r"a\.json exists; pass --overwrite"):
        write_atomic(out, b"two")
    assert out.read_bytes() == b"one"
    write_text_atomic(out, "zwei ±", overwrite=True)
    assert out.read_text(encoding="utf-8") == "zwei ±"
    assert os.listdir(tmp_path) == ["a.json"]


def test_existing_file_is_kept_when_the_writer_raises(tmp_path: Path) -> None:
    out = tmp_path / "picture.png"
    out.write_bytes(b"old")
    with (
        pytest.raises(RuntimeError, match="writer failed"),
        atomic_output(out, overwrite=True, suffix=".png") as tmp,
    ):
        assert tmp.parent == tmp_path and tmp.name.endswith(".png") and tmp != out
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert out.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["picture.png"]  # no temporary file left behind


def test_interrupt_leaves_no_temp_and_no_output(tmp_path: Path) -> None:
    out = tmp_path / "new.tiff"
    with pytest.raises(KeyboardInterrupt), atomic_output(out, suffix=".tiff") as tmp:
        tmp.write_bytes(b"x")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_output_appears_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "r.bin"
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"123")
        assert not out.exists()
    assert out.read_bytes() == b"123"
    assert os.listdir(tmp_path) == ["r.bin"]


def test_refusals(tmp_path: Path) -> None:
    (tmp_path / "exists").write_bytes(b"")
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite"):
        check_output(tmp_path / "exists")
    assert check_output(tmp_path / "exists", overwrite=True) == tmp_path / "exists"
    with pytest.raises(OutputExistsError, match="is a directory; give a file name"):
        write_atomic(tmp_path, b"{}", overwrite=True)
    with pytest.raises(InvalidInputError, match=r"output folder .*missing does not exist"):
        write_atomic(tmp_path / "missing" / "x.geojson", b"{}")
    with (
        pytest.raises(InvalidInputError, match="does not exist; create it first"),
        atomic_output(tmp_path / "missing" / "x.png", suffix=".png"),
    ):
        pass  # pragma: no cover - never reached
    assert sorted(os.listdir(tmp_path)) == ["exists"]
