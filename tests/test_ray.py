"""Embedding an archive on a real local Ray cluster (2 CPUs, a 200 MB object store).

The same files as the single-machine pipeline, byte for byte in the features; a corrupt slide
among good ones; an inference actor killed with SIGKILL mid-slide; the driver killed with SIGKILL
and a rerun that resumes; ``histosic embed --ray local`` in a subprocess; server jobs on Ray.
Every test here is ``slow`` (a Ray cluster takes about 10 s to start on the shared test machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import SyntheticSlide

from histosic.embed.pipeline import embed_slide
from histosic.embed.ray_report import ArchiveProgress, format_table
from histosic.embed.ray_run import RayOptions, embed_archive
from histosic.errors import CorruptFileError
from histosic.store import partial_path, read_embeddings

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'histosic[ray]')")

pytestmark = pytest.mark.slow

MODEL = "resnet18-random"
BATCH = 4
# A driver joining a cluster with Ray's token authentication (its default) says so; the token is
# the one ray.init wrote to ~/.ray/auth_token.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HISTOSIC_OFFLINE": "1", "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray of 2 CPUs on loopback for this module; its address for other drivers."""
    ray.init(
        num_cpus=2,
        object_store_memory=200 << 20,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def slides(slide_factory: Callable[..., SyntheticSlide]) -> list[Path]:
    """Three generated slides, two small (a few batches of 4) and one of several batches."""
    a = slide_factory("ray-a.tiff", 1024, 1536, [(200, 150, 900, 700)], seed=11)
    b = slide_factory("ray-b.tiff", 1024, 1536, [(300, 100, 800, 800)], seed=12)
    c = slide_factory(
        "ray-c.tiff", 2048, 3072, [(300, 260, 1100, 900), (1800, 1100, 900, 700)], seed=13
    )
    return [a.path, b.path, c.path]


@pytest.fixture(scope="module")
def jpeg_slide(slide_factory: Callable[..., SyntheticSlide]) -> Path:
    """A slide with JPEG tiles (YCbCr, as most scanners write them)."""
    s = slide_factory(
        "ray-jpeg.tiff", 1024, 1536, [(200, 150, 900, 700)], compression="jpeg", seed=14
    )
    return s.path


@pytest.fixture(scope="module")
def reference(slides: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each slide embedded by the single-machine pipeline (reading in-process)."""
    out = tmp_path_factory.mktemp("single")
    return {
        str(s.resolve()): embed_slide(s, out, model=MODEL, batch_size=BATCH, workers=0)
        for s in slides
    }


@pytest.fixture(scope="module")
def corrupt(slides: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the large slide whose read level has its last row of tiles zeroed.

    Its tissue grid (from level 0) is fine, so it fails mid-slide, in a reading task.
    """
    import tifffile

    data = bytearray(slides[2].read_bytes())
    with tifffile.TiffFile(slides[2]) as tf:
        page = tf.pages[1]  # level 1: 1536 x 1024, 6 x 4 tiles of 256
        for off, n in list(zip(page.dataoffsets, page.databytecounts, strict=True))[18:]:
            data[off : off + n] = bytes(n)
    path = tmp_path_factory.mktemp("bad") / "corrupt.tiff"
    path.write_bytes(bytes(data))
    return path


def _n(path: Path) -> int:
    return read_embeddings(path).n_patches


def _same_file(made: Path, ref: Path) -> None:
    a, b = read_embeddings(made), read_embeddings(ref)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.tissue_fraction, b.tissue_fraction)
    np.testing.assert_array_equal(a.white_fraction, b.white_fraction)
    assert a.meta.settings_key() == b.meta.settings_key()
    assert a.meta.preprocessing == b.meta.preprocessing
    assert {k: v for k, v in a.meta.extra.items()} == b.meta.extra
    assert made.name == ref.name


def test_archive_is_the_single_machine_result_and_corrupt_slide_is_reported(
    cluster: str,
    slides: list[Path],
    reference: dict[str, Path],
    corrupt: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    seen: list[ArchiveProgress] = []
    report_path = tmp_path / "report.json"
    archive = [slides[0], corrupt, slides[1], slides[2]]
    report = embed_archive(
        archive,
        out,
        ray=RayOptions(address=cluster),
        model=MODEL,
        batch_size=BATCH,
        progress=seen.append,
        report=report_path,
    )
    by_slide = {Path(s.slide).name: s for s in report.slides}
    bad = by_slide["corrupt.tiff"]
    assert bad.status == "failed" and bad.error_type == "CorruptFileError"
    assert "corrupt" in (bad.error or "") and "Traceback" not in (bad.error or "")
    assert isinstance(report.exceptions[bad.slide], CorruptFileError)
    for s in slides:
        outcome = report.slides[[Path(o.slide) for o in report.slides].index(s.resolve())]
        assert outcome.status == "done", outcome
        _same_file(Path(outcome.output or ""), reference[str(s.resolve())])
    # Nothing half-written: the three files, and the corrupt slide left no partial file.
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.values())
    doc = json.loads(report_path.read_text())
    assert doc["summary"]["done"] == 3 and doc["summary"]["failed"] == 1
    total = sum(_n(p) for p in reference.values())
    assert doc["summary"]["patches_embedded"] == total
    assert [s["status"] for s in doc["slides"]] == ["done", "failed", "done", "done"]
    # Progress: patches grow to the total, slides finished to all four.
    assert [p.patches_done for p in seen] == sorted(p.patches_done for p in seen)
    assert seen[-1].slides_finished == 4 and seen[-1].patches_done >= total
    assert "corrupt.tiff  failed" in format_table(report)

    # A rerun skips what is done, touches no file and reports the corrupt slide again.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = embed_archive(
        archive, out, ray=RayOptions(address=cluster), model=MODEL, batch_size=BATCH
    )
    assert [s.status for s in again.slides] == ["skipped", "failed", "skipped", "skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    assert again.patches_embedded() == 0


def test_actor_killed_mid_slide_is_redone(
    cluster: str, slides: list[Path], reference: dict[str, Path], tmp_path: Path
) -> None:
    big = slides[2]  # 12 batches
    state: dict[str, Any] = {}

    def on_start(driver: Any) -> None:
        state["driver"] = driver
        state["pid"] = driver.actor_pids[0]

    def progress(p: ArchiveProgress) -> None:
        if "killed" not in state and p.current_done >= 2 * BATCH:
            os.kill(state["pid"], signal.SIGKILL)  # the inference actor's process, mid-slide
            state["killed"] = p.current_done
        elif "killed" in state and "new_pid" not in state and p.current_done >= 5 * BATCH:
            actor = state["driver"].actors[0]
            state["new_pid"] = ray.get(actor.card.remote()).pid

    report = embed_archive(
        [big],
        tmp_path / "out",
        ray=RayOptions(address=cluster, retries=2),
        model=MODEL,
        batch_size=BATCH,
        progress=progress,
        on_start=on_start,
    )
    assert state["killed"] < _n(reference[str(big.resolve())]), "the kill came after the end"
    assert state["new_pid"] != state["pid"], "the actor was not restarted"
    outcome = report.slides[0]
    assert outcome.status == "done", outcome
    _same_file(Path(outcome.output or ""), reference[str(big.resolve())])
    assert [p.name for p in (tmp_path / "out").iterdir()] == [Path(outcome.output or "").name]


def test_jpeg_tiles_decoded_on_the_actors(
    cluster: str, jpeg_slide: Path, slides: list[Path], tmp_path: Path
) -> None:
    # decode='device' sends the compressed tiles to the actors, which decode them with
    # torchvision (nvJPEG on a GPU, libjpeg-turbo here); a zlib slide in the same run is read by
    # the readers. Both files are the single-machine pipeline's.
    ref = embed_slide(jpeg_slide, tmp_path / "ref", model=MODEL, batch_size=BATCH, workers=0)
    report = embed_archive(
        [jpeg_slide, slides[0]],
        tmp_path / "out",
        ray=RayOptions(address=cluster, decode="device"),
        model=MODEL,
        batch_size=BATCH,
    )
    jpeg, zlib = report.slides
    assert (jpeg.status, jpeg.decoded_on) == ("done", "actor")
    assert (zlib.status, zlib.decoded_on) == ("done", "reader")
    _same_file(Path(jpeg.output or ""), ref)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "histosic", "embed", *args]


def _n_done(partial: Path) -> int:
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return int(f.attrs.get("n_done", 0))
    except (OSError, KeyError):
        return 0


def test_driver_killed_then_rerun_resumes(
    cluster: str, slides: list[Path], reference: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    big = slides[2]
    args = _cli(
        str(slides[0]), str(big), "--out", str(out), "--model", MODEL,
        "--batch-size", str(BATCH), "--ray", cluster,
    )  # fmt: skip
    ref_big = reference[str(big.resolve())]
    partial = partial_path(out / ref_big.name)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while _n_done(partial) < 2 * BATCH:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the Ray driver made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = _n_done(partial)
    total = _n(ref_big)
    assert 2 * BATCH <= done < total and not (out / ref_big.name).exists()

    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "histosic-embed-report.json").read_text())
    first, second = doc["slides"]
    assert first["status"] == "skipped"
    assert second["status"] == "done" and second["resumed_from"] == done
    assert doc["summary"]["patches_embedded"] == total - done
    _same_file(out / ref_big.name, ref_big)
    assert not partial.exists()
    assert "resumed at" in r.stdout


def test_cli_ray_local_with_a_corrupt_slide(
    slides: list[Path], corrupt: Path, reference: dict[str, Path], tmp_path: Path
) -> None:
    # --ray local starts its own Ray (on loopback) in the subprocess and stops it at the end.
    out = tmp_path / "out"
    report = tmp_path / "run.json"
    r = subprocess.run(
        _cli(
            str(slides[1]), str(corrupt), "--out", str(out), "--model", MODEL,
            "--batch-size", str(BATCH), "--ray", "--ray-cpus", "2",
            "--ray-object-store-mb", "200", "--report", str(report),
        ),
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert f"histosic embed: error: {corrupt}" in r.stderr and "Traceback" not in r.stderr
    assert "1 of 2 slides failed" in r.stderr
    assert "2 slides: 1 done, 0 skipped, 1 failed" in r.stdout
    doc = json.loads(report.read_text())
    assert [s["status"] for s in doc["slides"]] == ["done", "failed"]
    assert doc["cluster"]["cpus"] == 2 and doc["cluster"]["actors"] == 1
    _same_file(Path(doc["slides"][0]["output"]), reference[str(slides[1].resolve())])


def test_bad_ray_options_are_refused(cluster: str, slides: list[Path], tmp_path: Path) -> None:
    from histosic.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="need 4 CPUs, but the Ray cluster has 2"):
        embed_archive(slides[:1], tmp_path, ray=RayOptions(address=cluster, actors=3))
    with pytest.raises(InvalidInputError, match="has no GPU"):
        embed_archive(slides[:1], tmp_path, ray=RayOptions(address=cluster), device="cuda")
    with pytest.raises(InvalidInputError, match="actors must be an integer >= 1"):
        RayOptions(actors=0).validate()
    assert list(tmp_path.iterdir()) == []


def test_server_jobs_run_on_ray(
    cluster: str, slides: list[Path], reference: dict[str, Path], tmp_path: Path
) -> None:
    from histosic.embed.ray_run import ray_embed_function
    from histosic.service.jobs import EmbedRequest, JobManager, JobState
    from histosic.tiling import TilingConfig

    jobs = JobManager(("auto",), embed=ray_embed_function(RayOptions(address=cluster)))
    try:
        ok = jobs.submit(
            EmbedRequest("a", slides[0], MODEL, TilingConfig(), tmp_path, batch_size=BATCH)
        )
        bad = jobs.submit(
            EmbedRequest(
                "missing", tmp_path / "missing.tiff", MODEL, TilingConfig(), tmp_path / "b"
            )
        )
        done = jobs.wait(ok.job_id, timeout=240)
        failed = jobs.wait(bad.job_id, timeout=240)
        # A running job cancelled mid-slide stops and leaves no file behind.
        big = jobs.submit(
            EmbedRequest("c", slides[2], MODEL, TilingConfig(), tmp_path / "c", batch_size=BATCH)
        )
        deadline = time.monotonic() + 240
        while jobs.get(big.job_id).patches_done < BATCH:
            assert time.monotonic() < deadline and not jobs.get(big.job_id).state.finished
            time.sleep(0.05)
        cancelled = jobs.cancel(big.job_id, wait=60)
    finally:
        jobs.shutdown()
    assert done.state is JobState.SUCCEEDED, done
    assert done.patches_done == done.patches_total == _n(reference[str(slides[0].resolve())])
    _same_file(Path(str(done.embedding_path)), reference[str(slides[0].resolve())])
    assert failed.state is JobState.FAILED and failed.error_code == "NOT_FOUND", failed
    assert "missing.tiff" in failed.error_message
    assert cancelled.state is JobState.CANCELLED, cancelled
    assert list((tmp_path / "c").iterdir()) == []
