"""The job manager on its own: queueing, cancel, failures, shutdown.

The embedding function here is a TEST DOUBLE of :func:`histosic.embed.pipeline.embed_slide` (same
keyword contract: progress, should_stop, CancelledError and no file left on cancel), so these tests
control timing exactly; the real pipeline runs in tests/test_service.py and
tests/test_service_process.py.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from histosic.errors import CancelledError, NoTissueError, ResourceExhaustedError
from histosic.service.jobs import EmbedRequest, JobManager, JobState
from histosic.service.status import JobNotFoundError


class FakeEmbed:
    """Test double of embed_slide: ``steps`` batches, each waiting for ``gate`` to be set."""

    def __init__(self, steps: int = 5, fail: BaseException | None = None) -> None:
        self.steps = steps
        self.fail = fail
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls: list[dict[str, Any]] = []

    def __call__(self, slide: Path, out: Path, **kw: Any) -> Path:
        self.calls.append(kw)
        self.started.set()
        partial = out.with_name(out.name + ".partial")
        partial.write_bytes(b"partial")
        for i in range(self.steps):
            if kw["should_stop"]():
                partial.unlink()
                raise CancelledError(f"embedding of {slide} cancelled")
            self.gate.wait(10)
            if self.fail is not None and i == 1:
                partial.unlink()
                raise self.fail
            kw["progress"](i + 1, self.steps)
        partial.rename(out)
        return out


def _req(tmp_path: Path, name: str) -> EmbedRequest:
    return EmbedRequest(
        slide_ref=name, slide=tmp_path / name, model="m", tiling=None, out=tmp_path / f"{name}.h5"
    )


def test_one_job_at_a_time_queue_and_cancel(tmp_path: Path) -> None:
    fake = FakeEmbed()
    jobs = JobManager(("cpu",), embed=fake, max_queue=2)
    try:
        a = jobs.submit(_req(tmp_path, "a"))
        assert fake.started.wait(5)
        b = jobs.submit(_req(tmp_path, "b"))
        c = jobs.submit(_req(tmp_path, "c"))
        assert jobs.get(b.job_id).state is JobState.QUEUED
        assert jobs.get(b.job_id).queue_position == 1 and jobs.get(c.job_id).queue_position == 2
        with pytest.raises(ResourceExhaustedError, match="limit is 2"):
            jobs.submit(_req(tmp_path, "d"))
        # The same output while it is queued or running: the same job, not a second one.
        assert jobs.submit(_req(tmp_path, "a")).job_id == a.job_id
        cancelled = jobs.cancel(b.job_id)
        assert cancelled.state is JobState.CANCELLED
        assert jobs.get(c.job_id).queue_position == 1
        fake.gate.set()
        assert jobs.wait(a.job_id, 10).state is JobState.SUCCEEDED
        done_c = jobs.wait(c.job_id, 10)
        assert done_c.state is JobState.SUCCEEDED and done_c.embedding_path == tmp_path / "c.h5"
        assert len(fake.calls) == 2  # b never ran
    finally:
        jobs.shutdown(timeout=5)


def test_cancel_running_job(tmp_path: Path) -> None:
    fake = FakeEmbed(steps=100)
    jobs = JobManager(("cpu",), embed=fake)
    try:
        a = jobs.submit(_req(tmp_path, "a"))
        assert fake.started.wait(5)
        fake.gate.set()
        snap = jobs.cancel(a.job_id)
        assert snap.state is JobState.CANCELLED and snap.error_code == "CANCELLED"
        assert list(tmp_path.iterdir()) == []
    finally:
        jobs.shutdown(timeout=5)


def test_watch_yields_progress_until_done(tmp_path: Path) -> None:
    fake = FakeEmbed(steps=4)
    fake.gate.set()
    jobs = JobManager(("cpu",), embed=fake)
    try:
        a = jobs.submit(_req(tmp_path, "a"))
        snaps = list(jobs.watch(a.job_id))
        assert snaps[-1].state is JobState.SUCCEEDED
        assert snaps[-1].patches_done == 4
        versions = [s.version for s in snaps]
        assert versions == sorted(set(versions))
    finally:
        jobs.shutdown(timeout=5)


def test_failures_are_reported_and_worker_survives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = JobManager(("cpu",), embed=FakeEmbed(fail=NoTissueError("no tissue in a")))
    try:
        fake_gate = jobs._embed.gate  # type: ignore[union-attr]
        fake_gate.set()
        a = jobs.wait(jobs.submit(_req(tmp_path, "a")).job_id, 10)
        assert a.state is JobState.FAILED and a.error_code == "INVALID_ARGUMENT"
        assert "no tissue" in a.error_message
        bug = FakeEmbed(fail=ZeroDivisionError("bug"))
        bug.gate.set()
        jobs._embed = bug
        with caplog.at_level(logging.ERROR):
            b = jobs.wait(jobs.submit(_req(tmp_path, "b")).job_id, 10)
        assert b.state is JobState.FAILED and b.error_code == "INTERNAL"
        assert "Traceback" in caplog.text
        ok = FakeEmbed()
        ok.gate.set()
        jobs._embed = ok
        assert jobs.wait(jobs.submit(_req(tmp_path, "c")).job_id, 10).state is JobState.SUCCEEDED
    finally:
        jobs.shutdown(timeout=5)


def test_shutdown_cancels_running_and_queued(tmp_path: Path) -> None:
    fake = FakeEmbed(steps=1000)
    jobs = JobManager(("cpu",), embed=fake)
    a = jobs.submit(_req(tmp_path, "a"))
    b = jobs.submit(_req(tmp_path, "b"))
    assert fake.started.wait(5)
    fake.gate.set()
    t = time.monotonic()
    jobs.shutdown(timeout=10)
    assert time.monotonic() - t < 5
    assert jobs.get(a.job_id).state is JobState.CANCELLED
    assert jobs.get(b.job_id).state is JobState.CANCELLED
    assert list(tmp_path.iterdir()) == []


def test_unknown_job(tmp_path: Path) -> None:
    jobs = JobManager(("cpu",), embed=FakeEmbed())
    try:
        with pytest.raises(JobNotFoundError):
            jobs.get("nope")
    finally:
        jobs.shutdown(timeout=5)
