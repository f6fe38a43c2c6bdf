"""Embed a whole archive on a Ray cluster: CPU tasks read, GPU (or CPU) actors hold the model.

The driver (this process) plans slides ahead on CPU tasks (open, tissue grid, skip or do), cuts
each slide into batches, and for every batch submits a reading task (CPU) whose patches go straight
from the object store to an inference actor (``Embedder``: the model loaded once, one per GPU).
Only the features and white fractions come back to the driver, which is the one writer: it
appends them in order to the slide's ``.partial`` HDF5 file with the single-machine pipeline's
:class:`~histosic.store.EmbeddingWriter` and renames it when complete. So the resume and atomic
rename guarantees are the pipeline's own: a file under its final name is whole; a killed driver
leaves a partial file that the next run resumes; a killed reader or actor has its batch redone by
Ray (task retries, actor restarts) and the file never sees it.

Ray actors directly, not Ray Data: one writer per slide in coordinate order, per-slide outcomes,
resume from a row and a bounded window of batches in flight are a few lines here, where a Ray Data
pipeline would need its output reordered per slide and brings pandas and pyarrow
(``docs/RAY.md``). Ray is imported only inside functions; ``pip install 'histosic[ray]'``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histosic.config import DEFAULT_MODEL
from histosic.embed.ray_report import ArchiveProgress, ArchiveReport, SlideOutcome
from histosic.embed.reading import batch_bounds
from histosic.errors import (
    CancelledError,
    HistosicError,
    InvalidInputError,
    OutputExistsError,
    PreconditionError,
)
from histosic.slides import TissueConfig
from histosic.store import EmbeddingWriter
from histosic.tiling import TilingConfig

__all__ = ["RayOptions", "connect", "embed_archive", "ray_embed_function"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run on Ray.

    Attributes
    ----------
    address : str
        'local' (start a Ray on this machine for the run, shut down afterwards), 'auto'
        (the cluster this machine belongs to, or ``RAY_ADDRESS``) or a cluster address
        (``HOST:PORT`` of the head's GCS, or ``ray://HOST:10001``).
    num_cpus, num_gpus : int, optional
        CPUs and GPUs of a local Ray (default: all of this machine's).
    object_store_mb : int, optional
        Object store of a local Ray in MiB (default: Ray's, 30% of memory).
    actors : int, optional
        Inference actors (default: one per GPU of the cluster; one on a CPU-only cluster).
    actor_cpus : float
        CPUs each actor holds (on a CPU-only cluster: its torch threads).
    reader_cpus : float
        CPUs a reading task asks for.
    window : int, optional
        Batches in flight (default 3 per actor, at least 4): bounds the object store's use.
    retries : int
        Restarts of a dead actor and retries of a batch whose worker died.
    decode : {'auto', 'device', 'cpu'}
        Where JPEG tiles are decoded: 'auto' on the actors' GPUs (nvJPEG) where the read level is
        JPEG tiles and on the CPU readers otherwise; 'device' on the actors whatever their
        device (torchvision's decoder); 'cpu' always on the readers (the slide reader).
    """

    address: str = "local"
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_mb: int | None = None
    actors: int | None = None
    actor_cpus: float = 1.0
    reader_cpus: float = 1.0
    window: int | None = None
    retries: int = 3
    decode: str = "auto"

    def validate(self) -> RayOptions:
        if not self.address:
            raise InvalidInputError("Ray address is empty; use 'local', 'auto' or HOST:PORT")
        for name in ("num_cpus", "num_gpus", "object_store_mb", "actors", "window"):
            value = getattr(self, name)
            least = 0 if name == "num_gpus" else 1
            if value is not None and (int(value) != value or value < least):
                raise InvalidInputError(
                    f"Ray option {name} must be an integer >= {least}, got {value}"
                )
        for name in ("actor_cpus", "reader_cpus"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"Ray option {name} must be above 0")
        if self.decode not in ("auto", "device", "cpu"):
            raise InvalidInputError(
                f"Ray option decode must be 'auto', 'device' or 'cpu', got {self.decode!r}"
            )
        if self.retries < 0:
            raise InvalidInputError(f"Ray option retries must be 0 or more, got {self.retries}")
        return self


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise PreconditionError(
            "--ray needs the ray package, which is not installed; pip install 'histosic[ray]'"
        ) from err
    return ray


@contextmanager
def connect(options: RayOptions) -> Iterator[dict[str, Any]]:
    """Connect to (or start) Ray; yields the cluster's resources; disconnects what it opened.

    A Ray already initialised in this process is used as it is and left running.
    """
    ray = _ray()
    options.validate()
    owned = not ray.is_initialized()
    if owned:
        if options.address == "local":
            ray.init(
                num_cpus=options.num_cpus,
                num_gpus=options.num_gpus,
                object_store_memory=(
                    None if options.object_store_mb is None else options.object_store_mb << 20
                ),
                include_dashboard=False,
                log_to_driver=False,
            )
        else:
            try:
                ray.init(address=options.address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise PreconditionError(
                    f"cannot connect to the Ray cluster at {options.address!r} ({err}); check the "
                    "address, set RAY_AUTH_MODE=token (and the cluster's token) if it uses Ray's "
                    "token authentication, start it (docs/RAY.md) or use --ray local"
                ) from err
    try:
        res = ray.cluster_resources()
        yield {
            "address": options.address,
            "cpus": float(res.get("CPU", 0.0)),
            "gpus": float(res.get("GPU", 0.0)),
            "nodes": len(ray.nodes()),
        }
    finally:
        if owned:
            ray.shutdown()


@dataclass(frozen=True)
class _Settings:
    model: str
    tiling: TilingConfig
    tissue: TissueConfig
    slide_mpp: float | None
    batch_size: int
    device: str
    overwrite: bool
    dtype: str


class _Job:
    """A slide being embedded: its plan, its writer and its outcome."""

    def __init__(self, plan: Any, writer: EmbeddingWriter, outcome: SlideOutcome) -> None:
        self.plan = plan
        self.writer = writer
        self.outcome = outcome
        self.failed = False
        self.written = 0
        self.t0 = time.monotonic()


class _Driver:
    """One archive run: actors, planning ahead, the window of batches, the writers."""

    def __init__(
        self,
        slides: Sequence[str],
        out: Path,
        settings: _Settings,
        options: RayOptions,
        cluster: dict[str, Any],
        progress: Callable[[ArchiveProgress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.ray = _ray()
        self.slides = list(slides)
        self.out = out
        self.s = settings
        self.options = options
        self.progress = progress
        self.should_stop = should_stop
        self.outcomes = {slide: SlideOutcome(slide) for slide in self.slides}
        self.report = ArchiveReport(list(self.outcomes.values()), cluster=dict(cluster))
        self.patches_done = 0
        self.planned_patches: list[int] = []
        self.open: dict[str, _Job] = {}
        self.claimed: dict[Path, str] = {}  # output file -> the slide it is for
        self.t0 = time.monotonic()
        self._start_actors(cluster)

    # -- actors and tasks -----------------------------------------------------------------------
    def _start_actors(self, cluster: dict[str, Any]) -> None:
        from histosic.embed.ray_workers import Embedder, plan_slide, read_batch, read_jpeg

        gpus = int(cluster["gpus"])
        device = self.s.device
        if device not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(
                f"device {device!r} with --ray: use 'auto', 'cpu' or 'cuda' (Ray assigns the GPUs)"
            )
        if device == "cuda" and gpus == 0:
            raise InvalidInputError("device 'cuda' asked for, but the Ray cluster has no GPU")
        use_gpu = gpus > 0 and device != "cpu"
        n = self.options.actors or (gpus if use_gpu else 1)
        need = n * self.options.actor_cpus + self.options.reader_cpus
        if need > cluster["cpus"]:
            raise InvalidInputError(
                f"{n} actors of {self.options.actor_cpus:g} CPUs and readers of "
                f"{self.options.reader_cpus:g} need {need:g} CPUs, but the Ray cluster has "
                f"{cluster['cpus']:g}; ask for fewer actors or start Ray with more CPUs"
            )
        actor_cls = self.ray.remote(Embedder).options(
            num_cpus=self.options.actor_cpus,
            num_gpus=1 if use_gpu else 0,
            max_restarts=self.options.retries,
            max_task_retries=self.options.retries,
        )
        threads = max(1, int(self.options.actor_cpus))
        self.actors = [
            actor_cls.remote(self.s.model, "cuda" if use_gpu else "cpu", threads) for _ in range(n)
        ]
        self.in_actor = [0] * n
        try:
            cards = self.ray.get([a.card.remote() for a in self.actors])
        except self.ray.exceptions.RayTaskError as err:
            raise _cause(err) from None
        self.card = cards[0]
        self.actor_pids = [c.pid for c in cards]
        self.report.cluster.update(
            actors=n, actor_device=self.card.device, decode=self.options.decode
        )
        self._plan = self.ray.remote(plan_slide).options(
            num_cpus=self.options.reader_cpus, max_retries=self.options.retries
        )
        self._read = self.ray.remote(read_batch).options(
            num_cpus=self.options.reader_cpus, num_returns=2, max_retries=self.options.retries
        )
        self._read_jpeg = self.ray.remote(read_jpeg).options(
            num_cpus=self.options.reader_cpus, max_retries=self.options.retries
        )
        self.window = self.options.window or max(4, 3 * n)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> ArchiveReport:
        pending: deque[tuple[_Job, int, int, Any, Any, int]] = deque()
        try:
            for item in self._submissions():
                pending.append(item)
                while len(pending) >= self.window:
                    self._consume(pending.popleft())
            while pending:
                self._consume(pending.popleft())
        except CancelledError:
            for job in list(self.open.values()):  # cancelled: nothing left, as the pipeline does
                job.writer.discard()
            raise
        finally:
            for job in list(self.open.values()):  # interrupted: partial files stay for a resume
                job.writer.close()
            self.open.clear()
        return self.report

    def _submissions(self) -> Iterator[tuple[_Job, int, int, Any, Any, int]]:
        plans: deque[tuple[str, Any]] = deque()
        todo = iter(self.slides)
        ahead = max(2, len(self.actors) + 1)

        def top_up() -> None:
            while len(plans) < ahead:
                slide = next(todo, None)
                if slide is None:
                    return
                plans.append((slide, self._submit_plan(slide)))

        top_up()
        while plans:
            slide, ref = plans.popleft()
            top_up()
            job = self._open(slide, ref)
            if job is None:
                continue
            plan = job.plan
            coords = self.ray.put(plan.coords)
            bs = self.s.batch_size
            for lo, hi in batch_bounds(job.writer.n_done, plan.n_patches, bs):
                self._check_stop(job)
                if job.failed:
                    break
                k = min(range(len(self.actors)), key=self.in_actor.__getitem__)
                self.in_actor[k] += 1
                args = (str(plan.slide), plan.mpp, plan.backend, coords, plan.size_level0,
                        plan.read_size, lo, hi)  # fmt: skip
                if plan.jpeg is not None:  # compressed tiles to the actor, decoded there
                    white = None
                    feats = self.actors[k].embed_jpeg.remote(
                        self._read_jpeg.remote(*args, plan.jpeg)
                    )
                else:
                    patches, white = self._read.remote(*args)
                    feats = self.actors[k].embed.remote(patches)
                yield job, lo, hi, white, feats, k

    def _submit_plan(self, slide: str) -> Any:
        s = self.s
        return self._plan.remote(
            slide,
            str(self.out),
            model=s.model,
            card=self.card,
            tiling=s.tiling,
            tissue=s.tissue,
            slide_mpp=s.slide_mpp,
            overwrite=s.overwrite,
            decode=self.options.decode,
        )

    def _check_stop(self, job: _Job | None) -> None:
        if self.should_stop is not None and self.should_stop():
            where = f" at {job.plan.slide}" if job is not None else ""
            raise CancelledError(f"embedding on Ray cancelled{where}")

    def _open(self, slide: str, ref: Any) -> _Job | None:
        outcome = self.outcomes[slide]
        t0 = time.monotonic()
        try:
            plan = self.ray.get(ref)
        except Exception as err:  # every failure of a slide is reported; the run goes on
            self._fail(outcome, err, t0)
            return None
        other = self.claimed.get(plan.path)
        if other is not None:
            # Two slides of the same name in different folders: the single-machine CLI refuses
            # the second after the first is written; here they would share one partial file.
            clash = OutputExistsError(
                f"{slide} would be written to {plan.path}, as {other} is in this run; give the "
                "slides different names or embed them in separate runs (or --out folders)"
            )
            self._fail(outcome, clash, t0)
            return None
        self.claimed[plan.path] = slide
        outcome.output = str(plan.path)
        outcome.patches = plan.n_patches
        outcome.decoded_on = "actor" if plan.jpeg is not None else "reader"
        self.planned_patches.append(plan.n_patches)
        if plan.state == "skipped":
            outcome.status = "skipped"
            outcome.seconds = time.monotonic() - t0
            log.info("%s is already embedded: %s (skipped)", slide, plan.path)
            self._report_progress(None)
            return None
        writer = EmbeddingWriter(
            plan.path,
            plan.meta,
            plan.coords,
            self.card.info.dim,
            dtype=self.s.dtype,
            resume=not self.s.overwrite,
        )
        outcome.resumed_from = writer.n_done
        job = _Job(plan, writer, outcome)
        self.open[slide] = job
        if writer.n_done >= plan.n_patches:
            self._finish(job)
            return None
        return job

    def _consume(self, item: tuple[_Job, int, int, Any, Any, int]) -> None:
        job, lo, hi, white_ref, feats_ref, k = item
        try:
            if job.failed:
                return
            try:
                if white_ref is None:
                    feats, white = self.ray.get(feats_ref)
                else:
                    feats, white = self.ray.get([feats_ref, white_ref])
            except Exception as err:  # the slide fails; the run goes on
                self._fail(job.outcome, err, job.t0, job=job)
                return
            job.writer.write(feats, job.plan.tissue_fraction[lo:hi], white)
            self.patches_done += hi - lo
            job.written += hi - lo
            self._check_stop(job)
            if hi == job.plan.n_patches:
                self._finish(job)
            else:
                self._report_progress(job)
        finally:
            self.in_actor[k] -= 1

    def _finish(self, job: _Job) -> None:
        job.writer.finish()
        self.open.pop(job.plan.slide, None)
        job.outcome.status = "done"
        job.outcome.seconds = time.monotonic() - job.t0
        log.info("%s: %s (%d patches)", job.plan.slide, job.plan.path, job.plan.n_patches)
        self._report_progress(job)

    def _fail(
        self, outcome: SlideOutcome, err: BaseException, t0: float, job: _Job | None = None
    ) -> None:
        cause = _cause(err)
        self.report.exceptions[outcome.slide] = cause
        outcome.status = "failed"
        text = str(cause).strip()
        outcome.error = (text.splitlines()[0] if text else "") or repr(cause)
        outcome.error_type = type(cause).__name__
        outcome.seconds = time.monotonic() - t0
        if job is not None:
            job.failed = True
            self.open.pop(job.plan.slide, None)
            # The slide's own fault: nothing is left; a lost worker: the partial file stays.
            if isinstance(cause, HistosicError):
                job.writer.discard()
            else:
                job.writer.close()
        log.warning("%s failed: %s", outcome.slide, outcome.error)
        self._report_progress(job)

    def _report_progress(self, job: _Job | None) -> None:
        if self.progress is None:
            return
        finished = sum(1 for o in self.report.slides if o.status != "pending")
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.patches_done / elapsed
        eta: float | None = None
        if rate > 0 and self.planned_patches:
            mean = sum(self.planned_patches) / len(self.planned_patches)
            written = {slide: j.written for slide, j in self.open.items()}
            left = sum(
                o.patches - o.resumed_from - written.get(o.slide, 0)
                for o in self.report.slides
                if o.status == "pending" and o.output is not None
            )
            unplanned = sum(1 for o in self.report.slides if o.status == "pending" and not o.output)
            eta = (left + unplanned * mean) / rate
        self.progress(
            ArchiveProgress(
                slides_total=len(self.slides),
                slides_finished=finished,
                slides_failed=self.report.count("failed"),
                patches_done=self.patches_done,
                patches_per_s=rate,
                eta_s=eta,
                current=None if job is None else job.plan.slide,
                current_done=0 if job is None else job.writer.n_done,
                current_total=0 if job is None else job.plan.n_patches,
            )
        )


def _cause(err: BaseException) -> BaseException:
    """The exception a Ray task raised (Ray wraps it with the remote traceback)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


def embed_archive(
    slides: Sequence[str | Path],
    out: str | Path,
    *,
    ray: RayOptions = RayOptions(),
    model: str = DEFAULT_MODEL,
    tiling: TilingConfig = TilingConfig(),  # noqa: B008 - frozen dataclass
    tissue: TissueConfig = TissueConfig(),  # noqa: B008 - frozen dataclass
    slide_mpp: float | None = None,
    batch_size: int = 64,
    device: str = "auto",
    overwrite: bool = False,
    dtype: str = "float32",
    progress: Callable[[ArchiveProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    report: str | Path | None = None,
    on_start: Callable[[Any], None] | None = None,
) -> ArchiveReport:
    """Embed many slides on a Ray cluster; one output file per slide, as :func:`embed_slide`.

    Parameters
    ----------
    slides : sequence of path-like
        Slide files, readable at the same paths on every Ray node (a shared file system).
    out : path-like
        The output folder (or an .h5 name for a single slide), readable and writable here.
    ray : RayOptions
        Where to run (default: a local Ray started for this call).
    model, tiling, tissue, slide_mpp, batch_size, overwrite, dtype
        As :func:`histosic.embed.pipeline.embed_slide`.
    device : {'auto', 'cpu', 'cuda'}
        'auto' runs the actors on GPUs where the cluster has them.
    progress : callable(ArchiveProgress), optional
        Called after every batch written and every slide finished.
    should_stop : callable() -> bool, optional
        Polled before every batch; True discards the open partial files and raises
        :class:`~histosic.errors.CancelledError`.
    report : path-like, optional
        Where to write the JSON report (atomically), also when the run is interrupted.
    on_start : callable(driver), optional
        Called once the actors are up (tests use it to find the actors' processes).

    Returns
    -------
    ArchiveReport
        Each slide's outcome ('done', 'skipped' or 'failed' with the reason).
    """
    tiling.validate()
    tissue.validate()
    if int(batch_size) != batch_size or batch_size < 1:
        raise InvalidInputError(f"batch size must be a positive integer, got {batch_size!r}")
    if dtype not in ("float32", "float16"):
        raise InvalidInputError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    names = [str(Path(s).resolve()) for s in slides]
    if len(set(names)) != len(names):
        raise InvalidInputError("a slide is given twice; give each slide once")
    outp = Path(out)
    if len(names) > 1 and outp.suffix.lower() in (".h5", ".hdf5"):
        raise InvalidInputError(
            f"out {outp} is a file name but {len(names)} slides were given; give a folder"
        )
    from histosic.embed.registry import get_model_info

    get_model_info(model, check=False)  # an unknown model fails before Ray starts
    settings = _Settings(
        model, tiling, tissue, slide_mpp, int(batch_size), device, overwrite, dtype
    )
    with connect(ray) as cluster:
        driver = _Driver(names, outp, settings, ray, cluster, progress, should_stop)
        driver.report.settings = {
            "model": model,
            "target_mpp": tiling.target_mpp,
            "patch_size": tiling.patch_size,
            "overlap": tiling.overlap,
            "tissue_threshold": tiling.tissue_threshold,
            "batch_size": int(batch_size),
        }
        try:
            if on_start is not None:
                on_start(driver)
            return driver.run()
        finally:
            driver.report.seconds = time.monotonic() - driver.t0
            if report is not None:
                driver.report.write(report)
            driver.close()


def ray_embed_function(options: RayOptions) -> Callable[..., Path]:
    """:func:`~histosic.embed.pipeline.embed_slide`'s signature, run on Ray (``serve --ray``).

    The first call connects to (or starts) Ray for the life of the process; each call embeds one
    slide with actors of its own, reports the slide's progress and re-raises the slide's error.
    """
    options.validate()
    lock = threading.Lock()
    held: list[ExitStack] = []

    def embed(
        slide: str | Path,
        out: str | Path,
        *,
        model: str = DEFAULT_MODEL,
        tiling: TilingConfig = TilingConfig(),  # noqa: B008 - frozen dataclass
        slide_mpp: float | None = None,
        batch_size: int = 64,
        device: str = "auto",
        overwrite: bool = False,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        **_ignored: Any,  # workers: reading runs on Ray's CPU workers
    ) -> Path:
        with lock:
            if not held:
                stack = ExitStack()
                stack.enter_context(connect(options))
                held.append(stack)

        def on_progress(p: ArchiveProgress) -> None:
            if progress is not None and p.current_total:
                progress(p.current_done, p.current_total)

        report = embed_archive(
            [slide],
            out,
            ray=options,
            model=model,
            tiling=tiling,
            slide_mpp=slide_mpp,
            batch_size=batch_size,
            device="auto" if device.startswith("cuda") else device,
            overwrite=overwrite,
            progress=on_progress,
            should_stop=should_stop,
        )
        outcome = report.slides[0]
        if outcome.status == "failed":
            raise report.exceptions[outcome.slide]
        if progress is not None:
            progress(outcome.patches, outcome.patches)
        return Path(outcome.output or out)

    return embed
