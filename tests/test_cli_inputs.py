"""The CLI refuses to write over its own inputs and answers bad values in one line (issue 15,
items 5, 9 and 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_service_support import make_embedding

from histosic.cli import main


def _seed_file(path: Path) -> Path:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [x, y]},
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }
        for x, y, name in [(300, 300, "Tumor"), (400, 2000, "Tumor"), (4500, 300, "Stroma")]
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    emb = tmp_path / "slide.h5"
    make_embedding(emb)
    return emb, _seed_file(tmp_path / "seeds.geojson")


@pytest.mark.parametrize("which", ["embedding", "seeds", "embedding-via-link", "labels-csv"])
def test_output_that_is_an_input_is_refused(
    files: tuple[Path, Path], which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    emb, seeds = files
    before = {p: p.read_bytes() for p in (emb, seeds)}
    out = emb.parent / "result.geojson"
    extra: list[str] = []
    if which == "embedding":
        out = emb
    elif which == "seeds":
        out = seeds
    elif which == "embedding-via-link":
        out = emb.parent / "link.h5"
        out.symlink_to(emb)
    else:
        extra = ["--labels-csv", str(seeds)]
    code = main(
        [
            "cluster",
            str(emb),
            "--seeds",
            str(seeds),
            "--out",
            str(out),
            "--overwrite",
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "is the input file of" in err and len(err.splitlines()) == 1, err
    assert {p: p.read_bytes() for p in (emb, seeds)} == before  # nothing replaced


def test_colors_output_that_is_the_embedding_is_refused(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    emb, _ = files
    before = emb.read_bytes()
    code = main(["colors", str(emb), "--out", str(emb), "--overwrite", "--method", "pca"])
    assert code == 1
    assert "--out" in capsys.readouterr().err and emb.read_bytes() == before


@pytest.mark.parametrize("value", ["-1", "4294967296", "ten"])
@pytest.mark.parametrize("command", ["cluster", "colors"])
def test_random_state_out_of_range_is_a_usage_error(
    files: tuple[Path, Path], command: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    emb, seeds = files
    args = [command, str(emb), "--out", str(emb.parent / "x.geojson"), "--random-state", value]
    if command == "cluster":
        args += ["--seeds", str(seeds)]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --random-state" in err and "Traceback" not in err


def test_folder_as_embedding_file_is_one_line(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, seeds = files
    folder = tmp_path / "folder.h5"
    folder.mkdir()
    code = main(["cluster", str(folder), "--seeds", str(seeds), "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.endswith("is a folder, not an embedding file: give the .h5 file"), err
    assert len(err.splitlines()) == 1


def test_not_hdf5_is_one_line(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, seeds = files
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not HDF5 at all")
    code = main(["cluster", str(bad), "--seeds", str(seeds), "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "is not a readable HDF5 embedding file (" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("command", ["embed", "pretrain"])
def test_embed_and_pretrain_do_not_write_over_their_slide(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_service_support import make_slide

    slide = make_slide(tmp_path / "slide.png", 256)
    before = slide.read_bytes()
    args = [command, str(slide), "--out", str(slide), "--slide-mpp", "0.5"]
    if command == "embed":
        args += ["--overwrite", "--model", "handcrafted"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1 and "is the input file of slide" in err, err
    assert slide.read_bytes() == before
