"""The Ray run's options, report and CLI errors, without starting Ray (fast).

The runs on a real Ray cluster are in tests/test_ray.py (slow).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import SyntheticSlide

from histosic.embed.ray_report import (
    ArchiveProgress,
    ArchiveReport,
    SlideOutcome,
    format_progress,
    format_table,
)
from histosic.embed.ray_run import RayOptions, embed_archive
from histosic.errors import InvalidInputError, PreconditionError, UnknownModelError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RayOptions(address=""), "Ray address is empty"),
        (RayOptions(num_cpus=0), "num_cpus must be an integer >= 1, got 0"),
        (RayOptions(num_gpus=-1), "num_gpus must be an integer >= 0, got -1"),
        (RayOptions(actors=0), "actors must be an integer >= 1, got 0"),
        (RayOptions(actor_cpus=0), "actor_cpus must be above 0"),
        (RayOptions(retries=-1), "retries must be 0 or more"),
    ],
)
def test_bad_options(options: RayOptions, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        options.validate()


def test_bad_arguments_fail_before_ray_starts(
    small_slide: SyntheticSlide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ray cannot even be imported here: each check comes first.
    monkeypatch.setitem(sys.modules, "ray", None)
    s = small_slide.path
    with pytest.raises(UnknownModelError, match="nope"):
        embed_archive([s], tmp_path, model="nope")
    with pytest.raises(InvalidInputError, match="a slide is given twice"):
        embed_archive([s, s], tmp_path)
    with pytest.raises(InvalidInputError, match="is a file name but 2 slides"):
        embed_archive([s, tmp_path / "other.tiff"], tmp_path / "x.h5")
    with pytest.raises(InvalidInputError, match="batch size must be a positive integer"):
        embed_archive([s], tmp_path, batch_size=0)
    with pytest.raises(PreconditionError, match=r"pip install 'histosic\[ray\]'"):
        embed_archive([s], tmp_path, model="resnet18-random")
    assert list(tmp_path.iterdir()) == []


def test_cli_without_ray_installed(
    small_slide: SyntheticSlide,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from histosic.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setenv("HISTOSIC_OFFLINE", "1")
    out = tmp_path / "out"
    code = main(["embed", str(small_slide.path), "--out", str(out), "--ray", "--ray-actors", "2"])
    err = capsys.readouterr().err
    assert code != 0
    assert "--ray needs the ray package" in err and "Traceback" not in err
    assert not out.exists()
    code = main(["embed", str(small_slide.path), "--out", str(out), "--ray", "--ray-actors", "0"])
    assert code != 0 and "actors must be an integer >= 1, got 0" in capsys.readouterr().err


def test_report_json_and_table(tmp_path: Path) -> None:
    report = ArchiveReport(
        [
            SlideOutcome("/s/a.svs", "done", "/o/a.h5", patches=100, resumed_from=40, seconds=2.0),
            SlideOutcome("/s/b.svs", "skipped", "/o/b.h5", patches=50),
            SlideOutcome(
                "/s/c.svs", "failed", error="corrupt tiles", error_type="CorruptFileError"
            ),
        ],
        seconds=4.0,
    )
    path = report.write(tmp_path / "r.json")
    doc = json.loads(path.read_text())
    assert doc["summary"] == {
        "slides": 3,
        "done": 1,
        "skipped": 1,
        "failed": 1,
        "patches_embedded": 60,
        "seconds": 4.0,
        "patches_per_s": 15.0,
        "slides_per_min": 15.0,
    }
    assert [s["status"] for s in doc["slides"]] == ["done", "skipped", "failed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary file left
    table = format_table(report).splitlines()
    assert table[1].split()[:4] == ["a.svs", "done", "(resumed", "at"]
    assert "corrupt tiles" in table[3]
    assert table[-1].startswith("3 slides: 1 done, 1 skipped, 1 failed; 60 patches in 4.0 s")
    line = format_progress(ArchiveProgress(10, 4, 1, 1200, 300.0, 3725.0))
    assert line == "slides 4/10, 1 failed; 1200 patches, 300.0 patches/s; ETA 01:02:05"


def test_serve_ray_flags_make_a_ray_embed_function(monkeypatch: pytest.MonkeyPatch) -> None:
    from histosic.cli import build_parser
    from histosic.commands.serve import _ray_embed

    monkeypatch.setitem(sys.modules, "ray", None)  # nothing connects before the first job
    args = build_parser().parse_args(
        ["serve", "--store", "s", "--ray", "auto", "--ray-actors", "2"]
    )
    embed = _ray_embed(args)
    assert callable(embed)
    assert _ray_embed(build_parser().parse_args(["serve", "--store", "s"])) is None
    with pytest.raises(InvalidInputError, match="decode must be"):
        RayOptions(decode="gpu").validate()
