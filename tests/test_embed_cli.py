"""``histosic embed`` and ``histosic models``: exits and messages (in process, through the CLI's
``main``), a real subprocess where the process matters (a second run that skips, kill -9 and
resume)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SyntheticSlide

from histosic.store import partial_path, read_embeddings

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HISTOSIC_OFFLINE": "1"}


def _histosic(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "histosic", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def _main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """``histosic ARGS`` in this process, offline: exit code, stdout, stderr."""
    from histosic.cli import main

    monkeypatch.setenv("HISTOSIC_OFFLINE", "1")
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_usability(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _main(monkeypatch, capsys, "models")
    assert code == 0, err
    # name, dim, input size, training resolution (um/px, "-" where none), usable
    assert re.search(r"resnet18-random\s+512\s+224\s+-\s+yes", out)
    assert re.search(r"handcrafted\s+\d+\s+224\s+-\s+yes", out)
    assert "histossl" in out
    assert re.search(r"\nuni\s+1024\s+224\s+0\.5\s+(yes|no)\s", out)
    assert "licence CC-BY-NC-ND-4.0" in out and "https://huggingface.co/MahmoodLab/UNI" in out


@pytest.mark.slow
def test_embed_then_skip(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    r = _histosic("embed", str(small_slide.path), "--out", str(tmp_path), "--model", "handcrafted")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path.exists() and "patch/s" in r.stderr
    mtime = path.stat().st_mtime_ns
    r2 = _histosic("embed", str(small_slide.path), "--out", str(tmp_path), "--model", "handcrafted")
    assert r2.returncode == 0 and "skipped" in r2.stderr
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        ("missing", [], "does not exist"),
        ("text", [], "not a slide or image"),
        ("jpeg", [], "--slide-mpp"),
        ("blank", [], "no tissue patch"),
        ("ok", ["--model", "resnet19"], "unknown model 'resnet19'"),
        ("ok", ["--model", "resnet50"], "no internet"),
        ("ok", ["--overlap", "1.5"], "overlap must be a fraction"),
    ],
)
def test_bad_input_exits_nonzero_and_leaves_nothing(
    make: str,
    extra: list[str],
    message: str,
    small_slide: SyntheticSlide,
    slide_factory: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    if make == "missing":
        slide = tmp_path / "missing.svs"
    elif make == "text":
        slide = tmp_path / "notes.svs"
        slide.write_text("hello\n")
    elif make == "jpeg":
        slide = tmp_path / "plain.jpg"
        Image.new("RGB", (600, 600), (200, 100, 150)).save(slide)
    elif make == "blank":
        slide = slide_factory("blank-cli.tiff", 1024, 1024, []).path  # type: ignore[operator]
    else:
        slide = small_slide.path
    out = tmp_path / "out"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights
    code, stdout, stderr = _main(
        monkeypatch, capsys, "embed", str(slide), "--out", str(out), *extra
    )
    assert code == 1, (stdout, stderr)
    assert message in stderr
    assert "Traceback" not in stderr
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow
def test_resume_after_kill_9(synthetic_slide: SyntheticSlide, tmp_path: Path) -> None:
    out = tmp_path / "emb.h5"
    args = [
        sys.executable,
        "-m",
        "histosic",
        "embed",
        str(synthetic_slide.path),
        "--out",
        str(out),
        "--model",
        "resnet18-random",
        "--batch-size",
        "2",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    # tqdm reports "done/total" on stderr; kill once a few batches are on disk.
    seen = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        buf = ""
        while True:
            ch = proc.stderr.read(1)
            if not ch:
                return
            buf = (buf + ch)[-200:]
            m = re.findall(r"(\d+)/(\d+) \[", buf)
            if m and int(m[-1][0]) >= 8:
                seen.set()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        assert seen.wait(timeout=180), "embedding made no progress"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and partial_path(out).exists()
    time.sleep(0.5)  # the orphaned DataLoader worker notices its parent is gone
    with h5py.File(partial_path(out), "r") as f:
        done = int(f.attrs["n_done"])
        total = int(f["coords"].shape[0])
    assert 8 <= done < total

    # A rerun resumes at the first unwritten patch and finishes.
    r = _histosic(*args[3:])
    assert r.returncode == 0, r.stderr
    assert (
        "starting at " + str(done) in r.stderr
        or f"resuming {partial_path(out)} at patch {done}" in r.stderr
    )
    assert out.exists() and not partial_path(out).exists()
    resumed = read_embeddings(out)
    assert resumed.n_patches == total

    # The result equals an uninterrupted run.
    fresh = tmp_path / "fresh.h5"
    from histosic.embed.pipeline import embed_slide

    embed_slide(synthetic_slide.path, fresh, model="resnet18-random", batch_size=32, workers=0)
    np.testing.assert_allclose(
        read_embeddings(fresh).features, resumed.features, rtol=1e-3, atol=1e-3
    )


def test_several_slides_go_on_past_a_bad_one(
    small_slide: SyntheticSlide,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "missing.svs"
    out = tmp_path / "out"
    code, _, err = _main(
        monkeypatch,
        capsys,
        "embed",
        str(missing),
        str(small_slide.path),
        "--out",
        str(out),
        "--model",
        "handcrafted",
        "--workers",
        "0",
    )
    assert code == 1
    assert "missing.svs" in err and "1 of 2 slides failed" in err
    made = [p.name for p in out.iterdir()]
    assert len(made) == 1 and made[0].startswith(small_slide.path.stem)
    # A file name as --out only fits a single slide.
    code, _, err = _main(
        monkeypatch,
        capsys,
        "embed",
        str(missing),
        str(small_slide.path),
        "--out",
        str(tmp_path / "x.h5"),
    )
    assert code == 1 and "give a folder" in err
