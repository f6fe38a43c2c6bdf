"""Batch clustering over a QuPath project with paquo: every image with seed points gets its map.

For each image of the project: find its embedding in a store folder (by the slide's content
fingerprint, so embeddings made on another machine are found), read the image's classified point
annotations as seeds, cluster with :func:`histosic.cluster.cluster_slide`, replace the objects of
an earlier histosic run with the new GeoJSON (the same GeoJSON the Groovy script imports, so both
paths give the same project content), and save. Runs are resumable: an image whose seeds and
options have not changed since its last run is skipped (the run signature is kept in the image's
project metadata), unless ``overwrite``. A JSON report of each run is written next to the project.

paquo (and through it QuPath) is imported only when a project is opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from histosic import __version__, config
from histosic.atomic import write_text_atomic
from histosic.errors import (
    EmbeddingNotFoundError,
    HistosicError,
    InvalidInputError,
    PreconditionError,
    ProjectNotFoundError,
)
from histosic.outputs.qupath_classes import SUGGESTED_SEED_CLASS
from histosic.seeds import SeedPoint

if TYPE_CHECKING:
    from histosic.cluster import ClusterOptions

__all__ = [
    "METADATA_KEY",
    "BatchReport",
    "ImageOutcome",
    "options_record",
    "path_from_uri",
    "run_batch",
    "run_signature",
    "seeds_from_geometries",
]

log = logging.getLogger(__name__)

#: Project metadata key holding the signature of the last histosic run on an image.
METADATA_KEY = "histosic_run"
_HISTOSIC_MEASUREMENTS = ("histosic: confidence", "histosic: mean confidence")


@dataclass
class ImageOutcome:
    """What happened to one image of the project."""

    image: str
    status: str  # "clustered", "skipped", "no seeds", "no embedding", "error"
    detail: str = ""
    n_seeds: int = 0
    n_patches: int = 0
    seconds: float = 0.0


@dataclass
class BatchReport:
    project: str
    started: str
    options: dict[str, object]
    images: list[ImageOutcome] = field(default_factory=list)
    histosic_version: str = __version__

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.images:
            out[o.status] = out.get(o.status, 0) + 1
        return out


def path_from_uri(uri: str) -> Path:
    """A local path from a QuPath image URI (``file:/C:/...``, ``file:///home/...``, or a path)."""
    if not uri.startswith("file:"):
        return Path(uri)
    parsed = urlparse(uri)
    path = unquote(parsed.path)
    # file:/C:/slides/a.svs -> /C:/slides/a.svs -> C:/slides/a.svs on Windows-style paths
    if len(path) > 2 and path[0] == "/" and path[2] == ":":
        path = path[1:]
    if parsed.netloc and parsed.netloc != "localhost":
        path = f"//{parsed.netloc}{path}"  # UNC share
    return Path(path)


def seeds_from_geometries(objects: Iterable[tuple[Any, str | None]]) -> tuple[list[SeedPoint], int]:
    """Seed points from (shapely geometry, class name) pairs of a QuPath hierarchy.

    Points and multi-points with a class become seeds; other geometries are not seeds. Returns the
    seeds and the number of points that had no class (reported to the user, not used).
    """
    seeds: list[SeedPoint] = []
    unclassified = 0
    for geom, name in objects:
        kind = getattr(geom, "geom_type", "")
        if kind == "Point":
            points = [geom]
        elif kind == "MultiPoint":
            points = list(geom.geoms)
        else:
            continue
        if not name:
            unclassified += len(points)
            continue
        if name == SUGGESTED_SEED_CLASS:
            continue
        seeds.extend(SeedPoint(float(p.x), float(p.y), str(name)) for p in points)
    return seeds, unclassified


def options_record(options: ClusterOptions, model: str) -> dict[str, object]:
    """The run's options as JSON values: every clustering option, and the embedding model.

    Raises
    ------
    InvalidInputError
        A callable metric (it has no JSON form).
    """
    if callable(options.metric):
        raise InvalidInputError(
            "the batch mode records its options in the project; use a named metric, not a callable"
        )
    return {**asdict(options), "model": model}


def run_signature(
    seeds: Sequence[SeedPoint], embedding_id: str, options: ClusterOptions, model: str = ""
) -> str:
    """A stable hash of what determines an image's result (seeds, embedding, options, model)."""
    payload = {
        "seeds": sorted((round(s.x, 2), round(s.y, 2), s.class_name) for s in seeds),
        "embedding": embedding_id,
        "options": options_record(options, model),
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _is_histosic_object(obj: Any) -> bool:
    if _is_accepted_suggestion(obj):
        return False  # the pathologist's seed now
    try:
        measurements = obj.measurements
        if any(k in measurements for k in _HISTOSIC_MEASUREMENTS):
            return True
    except (AttributeError, TypeError):
        pass
    return _class_name(getattr(obj, "path_class", None)) == SUGGESTED_SEED_CLASS


def _is_accepted_suggestion(obj: Any) -> bool:
    """A suggested seed point the pathologist reclassified: it carries histosic's measurements
    but another class than the suggestion's, so it is a seed of theirs and stays."""
    roi = getattr(obj, "roi", None)
    if getattr(roi, "geom_type", "") not in ("Point", "MultiPoint"):
        return False
    name = _class_name(getattr(obj, "path_class", None))
    return name is not None and name != SUGGESTED_SEED_CLASS


def _class_name(path_class: Any) -> str | None:
    """A paquo path class's full QuPath name: ``id`` (``Tumor: Positive``); its ``name`` is only
    the last part of a derived class (``Positive``), which would turn derived seeds into
    negatives and the suggestions (``histosic: suggested seed``) into seeds."""
    if path_class is None:
        return None
    full = getattr(path_class, "id", None)
    return str(full) if full else getattr(path_class, "name", None)


def run_batch(
    project: str | os.PathLike[str],
    options: ClusterOptions | None = None,
    *,
    store: str | os.PathLike[str],
    model: str = "",
    overwrite: bool = False,
    report_path: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> BatchReport:
    """Cluster every image of a QuPath project that has seed points.

    Parameters
    ----------
    project : path-like
        A QuPath project folder or its ``project.qpproj``.
    options : ClusterOptions, optional
        As for ``histosic cluster`` (None = the defaults); ``output`` is what is written into
        the project and cannot be ``"none"``.
    store : path-like
        Folder with embedding files (``histosic embed --out``).
    model : str, default ""
        Use only embeddings made with this model (default: the newest embedding of each slide).
    overwrite : bool, default False
        Re-cluster images whose seeds and options did not change since their last run.
    report_path : path-like, optional
        Where to write the run's JSON report (default: ``histosic-batch-<time>.json`` beside the
        project).
    progress : callable(done, total, image_name), optional

    Returns
    -------
    BatchReport

    Raises
    ------
    PreconditionError
        paquo (or QuPath) is not available.
    InvalidInputError
        ``options.output`` is ``"none"``, or the metric is a callable.
    ProjectNotFoundError
        The project does not exist (checked before paquo starts QuPath).
    """
    project_path = Path(project)
    if not project_path.exists():
        raise ProjectNotFoundError(
            f"QuPath project {project_path} does not exist; give a project folder or its "
            "project.qpproj"
        )
    try:
        from paquo.projects import QuPathProject
    except Exception as err:  # paquo raises several kinds when QuPath is missing
        raise PreconditionError(
            f"the batch mode needs paquo and a QuPath installation ({err}); install "
            "'histosic[qupath]' and set PAQUO_QUPATH_DIR to QuPath's folder"
        ) from err

    from histosic.catalog import EmbeddingCatalog
    from histosic.cluster import ClusterOptions, cluster_slide
    from histosic.outputs.geojson import to_geojson
    from histosic.store import read_embeddings

    opts = ClusterOptions() if options is None else options
    if opts.output not in config.OUTPUT_KINDS:
        raise InvalidInputError(
            f"output must be one of {', '.join(config.OUTPUT_KINDS)} (objects to write into the "
            f"project), got {opts.output!r}"
        )
    report = BatchReport(
        project=str(project_path),
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        options=options_record(opts, model),
    )
    catalog = EmbeddingCatalog(store)
    with QuPathProject(project_path, mode="r+") as qp:
        images = list(qp.images)
        for i, entry in enumerate(images):
            name = str(entry.image_name)
            if progress is not None:
                progress(i, len(images), name)
            t0 = time.perf_counter()
            outcome = ImageOutcome(image=name, status="error")
            try:
                hierarchy = entry.hierarchy
                seeds, unclassified = seeds_from_geometries(
                    (a.roi, _class_name(a.path_class)) for a in hierarchy.annotations
                )
                outcome.n_seeds = len(seeds)
                if not seeds:
                    outcome.status = "no seeds"
                    outcome.detail = (
                        f"{unclassified} point(s) without a class" if unclassified else ""
                    )
                    continue
                slide = path_from_uri(str(entry.uri))
                found = []
                if slide.is_file():
                    found = catalog.find(fingerprint=catalog.fingerprint(slide), model=model)
                if not found:
                    found = catalog.find(slide_path=str(slide), model=model)
                if not found:
                    raise EmbeddingNotFoundError(
                        f"no embedding of {slide} in {catalog.store}; run `histosic embed "
                        f"{slide} --out {catalog.store}` first"
                    )
                stored = found[0]
                signature = run_signature(seeds, stored.embedding_id, opts, model)
                if not overwrite and entry.metadata.get(METADATA_KEY) == signature:
                    outcome.status = "skipped"
                    outcome.detail = "seeds and options unchanged since the last run"
                    continue
                emb = read_embeddings(stored.path)
                clustering = cluster_slide(emb, seeds, opts)
                geojson = to_geojson(emb, clustering, output=opts.output)
                features = list(geojson["features"])
                for obj in [d for d in hierarchy.detections if _is_histosic_object(d)]:
                    hierarchy.detections.discard(obj)
                for obj in [a for a in hierarchy.annotations if _is_histosic_object(a)]:
                    hierarchy.annotations.discard(obj)
                hierarchy.load_geojson(features)
                entry.metadata[METADATA_KEY] = signature
                outcome.status = "clustered"
                outcome.n_patches = emb.n_patches
                outcome.detail = clustering.summary().replace("\n", "; ")
            except HistosicError as err:
                outcome.status = (
                    "no embedding" if isinstance(err, EmbeddingNotFoundError) else "error"
                )
                outcome.detail = str(err)
                log.warning("%s: %s", name, err)
            finally:
                outcome.seconds = round(time.perf_counter() - t0, 3)
                report.images.append(outcome)
        if progress is not None:
            progress(len(images), len(images), "")
        qp.save()
    if report_path:
        target = Path(report_path)
    else:
        folder = project_path.parent if project_path.is_file() else project_path
        target = folder / f"histosic-batch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_text_atomic(target, json.dumps(asdict(report), indent=2), overwrite=True)
    return report
