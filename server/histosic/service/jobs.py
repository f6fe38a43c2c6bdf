"""Embedding jobs: queued per device, one at a time each, with progress, cancel and clean shutdown.

Jobs live in the server process, not in a client's connection: a client that disconnects (or a
``WatchJob`` stream that ends) leaves its job running, and ``GetJob`` finds it later. The embedding
itself is written by :func:`histosic.embed.pipeline.embed_slide` to a ``.partial`` file renamed when
complete, so a cancelled job or a killed server never leaves a file that looks finished.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from histosic.errors import (
    CancelledError,
    InvalidInputError,
    PreconditionError,
    ResourceExhaustedError,
)
from histosic.service.status import JobNotFoundError, status_of

__all__ = ["EmbedRequest", "JobManager", "JobSnapshot", "JobState"]

log = logging.getLogger(__name__)


class JobState(Enum):
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class EmbedRequest:
    """What to embed: a resolved slide, a model and tiling, and where the result goes."""

    slide_ref: str  # as the client named it
    slide: Path  # resolved inside a slide root
    model: str
    tiling: Any  # histosic.tiling.TilingConfig
    out: Path
    slide_mpp: float | None = None
    overwrite: bool = False
    batch_size: int = 0
    # What makes the embedding what it is (service.plan.EmbeddingPlan.identity): slide content,
    # resolution, tiling, model and weights. Jobs are merged only when it is equal.
    identity: tuple[tuple[str, Any], ...] = ()
    patches_estimate: int = 0  # the grid size before the tissue filter, known at submission

    def same_embedding(self, other: EmbedRequest) -> bool:
        """True when ``other`` makes the same embedding (then its job is this one's)."""
        if self.identity or other.identity:
            return self.identity == other.identity and self.out == other.out
        return self.out == other.out


@dataclass(frozen=True)
class JobSnapshot:
    """An immutable view of a job at one moment (what the RPCs return)."""

    job_id: str
    state: JobState
    request: EmbedRequest
    device: str
    patches_done: int = 0
    patches_total: int = 0
    queue_position: int = 0
    embedding_path: Path | None = None
    reused: bool = False
    error_code: str = ""
    error_message: str = ""
    created_time: float = 0.0
    started_time: float = 0.0
    finished_time: float = 0.0
    version: int = 0


@dataclass
class _Job:
    snap: JobSnapshot
    cancel: threading.Event = field(default_factory=threading.Event)


# embed_slide(slide, out, *, model, tiling, slide_mpp, batch_size, workers, device, overwrite,
#             progress, should_stop) -> Path
EmbedFunction = Callable[..., Path]


def _default_embed() -> EmbedFunction:
    from histosic.embed.pipeline import embed_slide  # torch is imported only when a job runs

    return embed_slide


class JobManager:
    """Run embedding jobs on worker threads, one per device, each with a FIFO queue.

    Parameters
    ----------
    devices : sequence of str
        One worker per device ("cpu", "cuda:0", ...); a job goes to the device with the shortest
        queue.
    workers : int or None
        Data-loading worker processes per job (None = the embed pipeline's default).
    batch_size : int
        Default patches per forward pass.
    max_queue : int
        Jobs that may wait (per server); more is RESOURCE_EXHAUSTED.
    max_finished : int
        Finished jobs remembered for GetJob.
    embed : callable, optional
        The embedding function (default :func:`histosic.embed.pipeline.embed_slide`).
    """

    def __init__(
        self,
        devices: Sequence[str] = ("cpu",),
        *,
        workers: int | None = None,
        batch_size: int = 32,
        max_queue: int = 64,
        max_finished: int = 1000,
        embed: EmbedFunction | None = None,
    ) -> None:
        if not devices:
            raise InvalidInputError(
                "at least one device is needed (e.g. devices=('cpu',) or ('cuda:0',))"
            )
        self.devices = tuple(devices)
        self.workers = workers
        self.batch_size = int(batch_size)
        self.max_queue = int(max_queue)
        self.max_finished = int(max_finished)
        self._embed = embed
        self._cond = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._queues: dict[str, deque[str]] = {d: deque() for d in self.devices}
        self._running: dict[str, str | None] = dict.fromkeys(self.devices)
        self._finished_order: deque[str] = deque()
        self._stopping = False
        self._versions = itertools.count(1)
        self._threads = [
            threading.Thread(target=self._worker, args=(d,), name=f"histosic-job-{d}", daemon=True)
            for d in self.devices
        ]
        for t in self._threads:
            t.start()

    # -- bookkeeping (call with self._cond held) ----------------------------------------------
    def _update(self, job: _Job, **changes: Any) -> None:
        job.snap = replace(job.snap, version=next(self._versions), **changes)
        self._cond.notify_all()

    def _renumber(self) -> None:
        for queue in self._queues.values():
            for pos, jid in enumerate(queue, start=1):
                j = self._jobs[jid]
                if j.snap.queue_position != pos:
                    self._update(j, queue_position=pos)

    def _remember_finished(self, jid: str) -> None:
        self._finished_order.append(jid)
        while len(self._finished_order) > self.max_finished:
            self._jobs.pop(self._finished_order.popleft(), None)

    def _get(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(
                f"no job {job_id!r} on this server (finished jobs are kept for the last "
                f"{self.max_finished}; a restarted server forgets its jobs: start it again)"
            )
        return job

    # -- API ------------------------------------------------------------------------------
    def submit(self, request: EmbedRequest) -> JobSnapshot:
        """Queue a job, or return the queued/running job that writes the same file."""
        now = time.time()
        with self._cond:
            if self._stopping:
                raise PreconditionError("the server is shutting down; start the job again later")
            for job in self._jobs.values():
                if not job.snap.state.finished and job.snap.request.same_embedding(request):
                    return job.snap
            waiting = sum(len(q) for q in self._queues.values())
            if waiting >= self.max_queue:
                raise ResourceExhaustedError(
                    f"{waiting} embedding jobs are already waiting (the limit is "
                    f"{self.max_queue}); try again when some have finished"
                )
            device = min(
                self.devices,
                key=lambda d: len(self._queues[d]) + (self._running[d] is not None),
            )
            jid = uuid.uuid4().hex
            job = _Job(
                JobSnapshot(
                    job_id=jid,
                    state=JobState.QUEUED,
                    request=request,
                    device=device,
                    created_time=now,
                    version=next(self._versions),
                )
            )
            self._jobs[jid] = job
            self._queues[device].append(jid)
            self._renumber()
            self._cond.notify_all()
            log.info("job %s queued on %s: %s with %s", jid, device, request.slide, request.model)
            return job.snap

    def finished_job(self, request: EmbedRequest, path: Path) -> JobSnapshot:
        """Record a job that is done before it starts (the embedding already exists)."""
        now = time.time()
        with self._cond:
            jid = uuid.uuid4().hex
            job = _Job(
                JobSnapshot(
                    job_id=jid,
                    state=JobState.SUCCEEDED,
                    request=request,
                    device="",
                    embedding_path=path,
                    reused=True,
                    created_time=now,
                    started_time=now,
                    finished_time=now,
                    version=next(self._versions),
                )
            )
            self._jobs[jid] = job
            self._remember_finished(jid)
            return job.snap

    def get(self, job_id: str) -> JobSnapshot:
        with self._cond:
            return self._get(job_id).snap

    def cancel(self, job_id: str, *, wait: float = 10.0) -> JobSnapshot:
        """Cancel a queued or running job; waits up to ``wait`` s for a running one to stop."""
        with self._cond:
            job = self._get(job_id)
            state = job.snap.state
            if state.finished:
                raise PreconditionError(
                    f"job {job_id} is already {state.name.lower()} (finished); only queued or "
                    "running jobs can be cancelled"
                )
            job.cancel.set()
            if state is JobState.QUEUED:
                for q in self._queues.values():
                    if job_id in q:
                        q.remove(job_id)
                self._update(
                    job,
                    state=JobState.CANCELLED,
                    queue_position=0,
                    error_code="CANCELLED",
                    error_message="cancelled while queued",
                    finished_time=time.time(),
                )
                self._remember_finished(job_id)
                self._renumber()
                return job.snap
            deadline = time.monotonic() + wait
            while not job.snap.state.finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return job.snap

    def watch(self, job_id: str, *, heartbeat: float = 10.0) -> Iterator[JobSnapshot]:
        """Yield the job's snapshot now and after each change, until it is finished.

        A snapshot is repeated every ``heartbeat`` seconds without change, so a dead client is
        noticed by the transport.
        """
        seen = -1
        while True:
            with self._cond:
                job = self._get(job_id)
                if job.snap.version == seen:
                    self._cond.wait(heartbeat)
                snap = job.snap
            if snap.version != seen or not snap.state.finished:
                yield snap
            seen = snap.version
            if snap.state.finished:
                return

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        """Block until the job is finished (or ``timeout`` s pass) and return its snapshot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            job = self._get(job_id)
            while not job.snap.state.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            return job.snap

    def shutdown(self, *, timeout: float = 30.0) -> None:
        """Cancel queued and running jobs and wait for the workers to stop.

        A running job is asked to stop between batches; its partial file is removed by the embed
        pipeline, so no file with a final name is left half-written.
        """
        with self._cond:
            self._stopping = True
            for q in self._queues.values():
                while q:
                    jid = q.popleft()
                    job = self._jobs[jid]
                    job.cancel.set()
                    self._update(
                        job,
                        state=JobState.CANCELLED,
                        queue_position=0,
                        error_code="CANCELLED",
                        error_message="the server shut down before the job started",
                        finished_time=time.time(),
                    )
            for running in self._running.values():
                if running is not None:
                    self._jobs[running].cancel.set()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- worker ---------------------------------------------------------------------------
    def _worker(self, device: str) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._queues[device]:
                    self._cond.wait()
                if self._stopping:
                    return
                jid = self._queues[device].popleft()
                job = self._jobs[jid]
                self._running[device] = jid
                self._update(
                    job, state=JobState.RUNNING, queue_position=0, started_time=time.time()
                )
                self._renumber()
            try:
                self._run(job, device)
            finally:
                with self._cond:
                    self._running[device] = None
                    self._remember_finished(jid)
                    self._cond.notify_all()

    def _run(self, job: _Job, device: str) -> None:
        req = job.snap.request
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            # Progress callbacks come per batch; notify watchers at most 20 times a second.
            if done < total and now - last[0] < 0.05:
                return
            last[0] = now
            with self._cond:
                self._update(job, patches_done=int(done), patches_total=int(total))

        try:
            embed = self._embed if self._embed is not None else _default_embed()
            path = embed(
                req.slide,
                req.out,
                model=req.model,
                tiling=req.tiling,
                slide_mpp=req.slide_mpp,
                batch_size=req.batch_size or self.batch_size,
                workers=self.workers,
                device=device,
                overwrite=req.overwrite,
                progress=progress,
                should_stop=job.cancel.is_set,
            )
        except CancelledError as err:
            with self._cond:
                self._update(
                    job,
                    state=JobState.CANCELLED,
                    error_code="CANCELLED",
                    error_message=str(err) or "cancelled",
                    finished_time=time.time(),
                )
            log.info("job %s cancelled", job.snap.job_id)
        except Exception as err:  # a failed job must not kill the worker; status_of logs bugs
            status = status_of(err, rpc=f"embedding job {job.snap.job_id}")
            with self._cond:
                self._update(
                    job,
                    state=JobState.FAILED,
                    error_code=status.code,
                    error_message=status.message,
                    finished_time=time.time(),
                )
            log.warning("job %s failed: %s %s", job.snap.job_id, status.code, status.message)
        else:
            with self._cond:
                total = job.snap.patches_total
                self._update(
                    job,
                    state=JobState.SUCCEEDED,
                    embedding_path=Path(path),
                    patches_done=total,
                    finished_time=time.time(),
                )
            log.info("job %s done: %s", job.snap.job_id, path)
