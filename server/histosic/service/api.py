"""The one implementation of the histosic.v1 services, shared by gRPC and Connect.

Methods take and return the generated ``_pb2`` messages; they only check and convert the request,
call the core (:mod:`histosic.cluster`, :mod:`histosic.outputs`, :mod:`histosic.embed`,
:mod:`histosic.colors`) and convert the result. Errors are raised as :mod:`histosic.errors`
classes; the protocol adapters map them to status codes with
:func:`histosic.service.status.status_of`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histosic.api.v1 import clustering_pb2, common_pb2, embedding_pb2
from histosic.catalog import EmbeddingCache, EmbeddingCatalog, StoredEmbedding
from histosic.config import MAX_PATCHES_PER_JOB
from histosic.errors import (
    MAX_NAME_BYTES,
    EmbeddingNotFoundError,
    InvalidInputError,
    PermissionDeniedError,
    PreconditionError,
    shown,
)
from histosic.service.arrays import to_ndarray
from histosic.service.convert import options_from_proto
from histosic.service.jobs import EmbedRequest, JobManager, JobSnapshot, JobState
from histosic.service.paths import SlideResolver
from histosic.service.plan import EmbeddingPlan, check_mpp, plan_embedding
from histosic.service.wire import encode_chunk

if TYPE_CHECKING:
    from histosic.cluster import SlideClustering
    from histosic.store import Embeddings

__all__ = ["CHUNK_BYTES", "HistosicApi"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # GetEmbedding chunk size: large enough for speed, far below message limits

_JOB_STATES = {
    JobState.QUEUED: embedding_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: embedding_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: embedding_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: embedding_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: embedding_pb2.JOB_STATE_CANCELLED,
}


@dataclass
class HistosicApi:
    """The services' behaviour, independent of the wire protocol."""

    catalog: EmbeddingCatalog
    cache: EmbeddingCache
    resolver: SlideResolver
    jobs: JobManager
    max_patches_per_job: int = MAX_PATCHES_PER_JOB

    # -- references -----------------------------------------------------------------------
    def resolve_embedding(self, ref: common_pb2.EmbeddingRef) -> StoredEmbedding:
        """The stored embedding an ``EmbeddingRef`` names (by id, slide or fingerprint)."""
        if ref.embedding_id:
            entry = self.catalog.by_id(ref.embedding_id)
            if ref.model and entry.meta.model != ref.model:
                raise InvalidInputError(
                    f"embedding {shown(ref.embedding_id)} was made with model "
                    f"{shown(entry.meta.model)}, not {shown(ref.model)}"
                )
            return entry
        if not ref.slide and not ref.slide_fingerprint:
            raise InvalidInputError(
                "the embedding reference is empty: give embedding_id (from ListEmbeddings), slide "
                "or slide_fingerprint"
            )
        fingerprint = ref.slide_fingerprint
        slide_path = ""
        if ref.slide:
            slide = self.resolver.resolve(ref.slide)
            slide_path = str(slide)
            fingerprint = self.catalog.fingerprint(slide)
            if ref.slide_fingerprint and ref.slide_fingerprint != fingerprint:
                raise InvalidInputError(
                    f"slide {shown(ref.slide)} has fingerprint {fingerprint}, not the "
                    f"{shown(ref.slide_fingerprint)} given: it is another file"
                )
        found = self.catalog.find(fingerprint=fingerprint, model=ref.model)
        if not found and slide_path:
            found = self.catalog.find(slide_path=slide_path, model=ref.model)
        if not found:
            what = f"slide {shown(ref.slide)}" if ref.slide else "the slide"
            model = f" with model {shown(ref.model)}" if ref.model else ""
            raise EmbeddingNotFoundError(
                f"the server's store has no embedding of {what} (fingerprint {fingerprint})"
                f"{model}; start one with StartEmbedding"
            )
        return found[0]

    # -- EmbeddingService -----------------------------------------------------------------
    def list_models(
        self, request: embedding_pb2.ListModelsRequest
    ) -> embedding_pb2.ListModelsResponse:
        from histosic.embed.registry import list_models

        # Torch-free: without histosic[embed] every model is listed as unavailable, with why.
        out = embedding_pb2.ListModelsResponse()
        for m in list_models():
            out.models.add(
                name=m.name,
                dim=m.dim,
                description=m.description,
                input_size=m.input_size,
                available=m.available,
                unavailable_reason="" if m.available else m.reason,
                licence=m.licence,
                gated=m.gated,
                page=m.page,
                mpp=m.mpp,
                patch_size=m.patch_size,
                precision=m.precision,
                source=m.reason if m.available else "",
            )
        return out

    def _check_model(self, name: str) -> str:
        from histosic.embed.registry import check_embeddable, check_weights

        if not name:
            raise InvalidInputError("no model given: name one from ListModels (e.g. he-features)")
        kind, sep, _arg = name.partition(":")
        if sep and kind != "timm":
            # checkpoint:<path> and histossl:<path> would read any file the server can see.
            raise PermissionDeniedError(
                f"model {shown(name)} names a file on the server; remote clients may use only the "
                "registry's models and timm:<name> (embed with your own weights locally: "
                "`histosic embed --model checkpoint:...`)"
            )
        # ModelUnavailableError (FAILED_PRECONDITION) when torch or the family's libraries are
        # missing here, or a foundation model's weights cannot be had (gated without a token,
        # offline without a cache); other weights are checked when the job runs.
        info = check_embeddable(name)
        check_weights(name)
        return info.name

    def _tiling(self, t: embedding_pb2.Tiling) -> Any:
        from histosic.tiling import TilingConfig

        kwargs: dict[str, Any] = {}
        if t.HasField("target_mpp"):
            kwargs["target_mpp"] = check_mpp("tiling.target_mpp", t.target_mpp)
        if t.HasField("patch_size"):
            kwargs["patch_size"] = t.patch_size
        if t.HasField("overlap"):
            kwargs["overlap"] = t.overlap
        if t.HasField("tissue_threshold"):
            kwargs["tissue_threshold"] = t.tissue_threshold
        return TilingConfig(**kwargs).validate()

    def _job(self, snap: JobSnapshot) -> embedding_pb2.Job:
        emb_id = ""
        if snap.embedding_path is not None:
            try:
                emb_id = snap.embedding_path.resolve().relative_to(self.catalog.store).as_posix()
            except ValueError:
                emb_id = snap.embedding_path.name
        return embedding_pb2.Job(
            job_id=snap.job_id,
            state=_JOB_STATES[snap.state],
            slide=snap.request.slide_ref,
            model=snap.request.model,
            patches_done=snap.patches_done,
            patches_total=snap.patches_total,
            queue_position=snap.queue_position,
            embedding_id=emb_id,
            reused=snap.reused,
            error_code=snap.error_code,
            error_message=snap.error_message,
            created_time=snap.created_time,
            started_time=snap.started_time,
            finished_time=snap.finished_time,
            device=snap.device,
        )

    def _existing(self, req: EmbedRequest, plan: EmbeddingPlan) -> Path | None:
        """A complete embedding with the plan's identity (same slide content, resolution,
        tiling, model and weights), if the store has one; newest first."""
        for e in self.catalog.find(fingerprint=plan.slide_fingerprint, model=req.model):
            if plan.matches(e.meta):
                return e.path
        return None

    def start_embedding(
        self, request: embedding_pb2.StartEmbeddingRequest
    ) -> embedding_pb2.StartEmbeddingResponse:
        model = self._check_model(request.model)  # before importing torch: it may be missing
        from histosic.embed.pipeline import embedding_filename
        from histosic.embed.registry import weights_id

        slide = self.resolver.resolve(request.slide)
        tiling = self._tiling(request.tiling)
        slide_mpp = None
        if request.HasField("slide_mpp"):
            slide_mpp = check_mpp("slide_mpp", request.slide_mpp)
        if not 0 <= request.batch_size <= 4096:
            raise InvalidInputError(f"batch_size must be in [0, 4096], got {request.batch_size}")
        plan = plan_embedding(
            slide,
            request.slide,
            fingerprint=self.catalog.fingerprint(slide),
            model=model,
            weights=weights_id(model),
            tiling=tiling,
            slide_mpp=slide_mpp,
            max_patches=self.max_patches_per_job,
        )
        name = plan.file_name(Path(embedding_filename(slide, model, tiling)).name)
        if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise InvalidInputError(
                f"the embedding file of slide {shown(request.slide)} would be named "
                f"{len(name.encode('utf-8', 'surrogatepass'))} bytes long, over the "
                f"{MAX_NAME_BYTES} bytes a file name may have: give the slide a shorter name"
            )
        req = EmbedRequest(
            slide_ref=request.slide,
            slide=slide,
            model=model,
            tiling=tiling,
            out=self.catalog.store / name,
            slide_mpp=slide_mpp,
            overwrite=request.overwrite,
            batch_size=request.batch_size,
            identity=plan.identity,
            patches_estimate=plan.n_candidates,
        )
        if not request.overwrite:
            existing = self._existing(req, plan)
            if existing is not None:
                return embedding_pb2.StartEmbeddingResponse(
                    job=self._job(self.jobs.finished_job(req, existing))
                )
        return embedding_pb2.StartEmbeddingResponse(job=self._job(self.jobs.submit(req)))

    def _job_id(self, job_id: str) -> str:
        if not job_id:
            raise InvalidInputError("job_id is empty: give the id StartEmbedding returned")
        return job_id

    def watch_job(
        self, request: embedding_pb2.WatchJobRequest
    ) -> Iterator[embedding_pb2.WatchJobResponse]:
        job_id = self._job_id(request.job_id)
        self.jobs.get(job_id)  # NOT_FOUND before the stream starts
        for snap in self.jobs.watch(job_id):
            yield embedding_pb2.WatchJobResponse(job=self._job(snap))

    def get_job(self, request: embedding_pb2.GetJobRequest) -> embedding_pb2.GetJobResponse:
        return embedding_pb2.GetJobResponse(
            job=self._job(self.jobs.get(self._job_id(request.job_id)))
        )

    def cancel_job(
        self, request: embedding_pb2.CancelJobRequest
    ) -> embedding_pb2.CancelJobResponse:
        snap = self.jobs.cancel(self._job_id(request.job_id))
        return embedding_pb2.CancelJobResponse(job=self._job(snap))

    def _info(self, e: StoredEmbedding) -> embedding_pb2.EmbeddingInfo:
        m = e.meta
        return embedding_pb2.EmbeddingInfo(
            embedding_id=e.embedding_id,
            slide_path=m.slide_path,
            slide_fingerprint=m.slide_fingerprint,
            model=m.model,
            n_patches=e.n_patches,
            dim=e.dim,
            mpp=m.mpp,
            target_mpp=m.target_mpp,
            patch_size=m.patch_size,
            patch_size_level0=m.patch_size_level0,
            stride_level0=m.stride_level0,
            overlap=m.overlap,
            level0_width=m.level0_width,
            level0_height=m.level0_height,
            created=m.created,
            file_size=e.file_size,
            dtype=e.dtype,
        )

    def list_embeddings(
        self, request: embedding_pb2.ListEmbeddingsRequest
    ) -> embedding_pb2.ListEmbeddingsResponse:
        if request.slide:
            slide = self.resolver.resolve(request.slide)
            entries = self.catalog.find(
                fingerprint=self.catalog.fingerprint(slide), model=request.model
            )
            entries.sort(key=lambda e: e.embedding_id)
        else:
            entries = [
                e for e in self.catalog.scan() if not request.model or e.meta.model == request.model
            ]
        return embedding_pb2.ListEmbeddingsResponse(embeddings=[self._info(e) for e in entries])

    def get_embedding(
        self, request: embedding_pb2.GetEmbeddingRequest
    ) -> Iterator[embedding_pb2.GetEmbeddingResponse]:
        """The embedding as messages (Connect): the first with everything but the later chunks."""
        first, view = self._embedding_parts(request)
        yield first
        for offset in range(CHUNK_BYTES, len(view), CHUNK_BYTES):
            yield embedding_pb2.GetEmbeddingResponse(
                chunk=bytes(view[offset : offset + CHUNK_BYTES]), offset=offset
            )

    def get_embedding_wire(
        self, request: embedding_pb2.GetEmbeddingRequest
    ) -> Iterator[embedding_pb2.GetEmbeddingResponse | bytes]:
        """The same stream for gRPC, every message after the first already serialized.

        A chunk message is the protobuf encoding of ``{chunk, offset}`` written straight from the
        feature matrix: one copy per byte instead of three (slice, message, serialization), which
        is most of GetEmbedding's Python-side cost (benchmarks/bench_server.py).
        """
        first, view = self._embedding_parts(request)
        yield first
        for offset in range(CHUNK_BYTES, len(view), CHUNK_BYTES):
            yield encode_chunk(view[offset : offset + CHUNK_BYTES], offset)

    def _embedding_parts(
        self, request: embedding_pb2.GetEmbeddingRequest
    ) -> tuple[embedding_pb2.GetEmbeddingResponse, memoryview]:
        """The first message (with the first chunk) and the feature bytes."""
        if request.dtype not in ("", "float32", "float16"):
            raise InvalidInputError(
                "dtype must be 'float32', 'float16' or empty (stored dtype), got "
                f"{shown(request.dtype)}"
            )
        entry = self.resolve_embedding(request.embedding)
        emb = self.cache.get(entry)
        dtype = request.dtype or (
            entry.dtype if entry.dtype in ("float32", "float16") else "float32"
        )
        feats = np.ascontiguousarray(emb.features, dtype=np.dtype(dtype).newbyteorder("<"))
        n = emb.n_patches
        first = embedding_pb2.GetEmbeddingResponse(
            info=self._info(entry),
            coords=to_ndarray(emb.coords, "int64"),
            features_shape=list(feats.shape),
            features_dtype=dtype,
        )
        if emb.tissue_fraction is not None:
            first.tissue_fraction.CopyFrom(to_ndarray(emb.tissue_fraction, "float32"))
        if emb.white_fraction is not None:
            first.white_fraction.CopyFrom(to_ndarray(emb.white_fraction, "float32"))
        view = memoryview(feats.reshape(-1).view(np.uint8).data) if n else memoryview(b"")
        first.chunk = bytes(view[:CHUNK_BYTES])
        return first, view

    # -- ClusteringService ----------------------------------------------------------------
    def cluster(self, request: clustering_pb2.ClusterRequest) -> clustering_pb2.ClusterResponse:
        from histosic.cluster import cluster_slide
        from histosic.cluster.options import check_class_count, check_seed_count
        from histosic.seeds import SeedPoint

        # The limits first, before the embedding is loaded (docs/SERVER.md, "Limits").
        check_seed_count(len(request.seeds))
        if not request.seeds:
            raise InvalidInputError(
                "no seeds given: send point annotations with class names (e.g. 'Tumor' and "
                "'Stroma')"
            )
        options = options_from_proto(request.options)
        if options.multiclass:
            check_class_count(len({s.class_name.strip() for s in request.seeds} - {""}))
        entry = self.resolve_embedding(request.embedding)
        emb = self.cache.get(entry)
        points = [SeedPoint(float(s.x), float(s.y), s.class_name) for s in request.seeds]
        sc = cluster_slide(emb, points, options)
        resp = self._cluster_response(request, entry, emb, sc, options.output)
        if request.options.include_cells:
            resp.cells.CopyFrom(self._cells(emb, sc))
        return resp

    @staticmethod
    def _cells(emb: Embeddings, sc: SlideClustering) -> clustering_pb2.PatchCells:
        """The compact answer: each patch's cell and the measurements its GeoJSON tile carries
        (about 1 ms per 100k patches; not worth a cache that could go stale)."""
        from histosic.outputs.geojson import tile_cells

        origin, size = tile_cells(emb)
        cells = clustering_pb2.PatchCells(
            origin=to_ndarray(origin, "float32"),
            size=size,
            seeded=to_ndarray(np.asarray(sc.result.seeds) >= 0, "uint8"),
        )
        if emb.tissue_fraction is not None:
            cells.tissue_fraction.CopyFrom(to_ndarray(emb.tissue_fraction, "float32"))
        return cells

    def _cluster_response(
        self,
        request: clustering_pb2.ClusterRequest,
        entry: StoredEmbedding,
        emb: Embeddings,
        sc: SlideClustering,
        geojson_kind: str,
    ) -> clustering_pb2.ClusterResponse:
        result = sc.result
        names = list(sc.class_names)
        labels = np.asarray(result.labels)
        conf = np.asarray(result.confidence)
        resp = clustering_pb2.ClusterResponse(
            labels=to_ndarray(labels, "int32"),
            confidence=to_ndarray(conf, "float32"),
            class_names=names,
            positive_class=sc.positive_name or "",
            method=result.method,
            score=float(result.score) if math.isfinite(result.score) else 0.0,
            n_seeds_used=sc.mapping.n_used,
            embedding_id=entry.embedding_id,
            class_counts=np.bincount(labels, minlength=len(names)).tolist(),
        )
        for step in result.history:
            resp.history.add(
                depth=step.depth,
                branch=step.branch,
                score=float(step.score) if math.isfinite(step.score) else 0.0,
                sizes=[int(s) for s in step.sizes],
                accepted=step.accepted,
            )
        for ig in sc.mapping.ignored:
            resp.ignored_seeds.add(
                index=ig.index,
                id=request.seeds[ig.index].id,
                x=ig.point.x,
                y=ig.point.y,
                class_name=ig.point.class_name,
                reason=ig.reason,
            )
        if sc.suggested.size:
            centres = emb.centers()
            for i in sc.suggested.tolist():
                resp.suggestions.add(
                    patch_index=int(i),
                    x=float(centres[i, 0]),
                    y=float(centres[i, 1]),
                    predicted_class=names[int(labels[i])],
                    confidence=float(conf[i]),
                )
        if geojson_kind != "none":
            from histosic.outputs.geojson import to_geojson_bytes

            resp.geojson = to_geojson_bytes(emb, sc, output=geojson_kind).decode("utf-8")
        return resp

    def colors(self, request: clustering_pb2.ColorsRequest) -> clustering_pb2.ColorsResponse:
        from histosic.cluster.options import check_random_state

        if request.HasField("random_state"):
            check_random_state(request.random_state)  # before any work
        method = request.method or "pca"
        if method not in ("pca", "umap"):
            raise InvalidInputError(f"method must be 'pca' or 'umap', got {shown(request.method)}")
        entry = self.resolve_embedding(request.embedding)
        emb = self.cache.get(entry)
        try:
            from histosic import colors as colors_mod
        except ImportError as err:
            raise PreconditionError(
                f"colours are not available on this server ({err}); install histosic[colors]"
            ) from err
        random_state = request.random_state if request.HasField("random_state") else 0
        rgb = colors_mod.patch_colors(emb.features, method=method, random_state=random_state)
        return clustering_pb2.ColorsResponse(
            rgb=to_ndarray(np.asarray(rgb), "uint8"),
            coords=to_ndarray(emb.coords, "int64"),
            method=method,
            embedding_id=entry.embedding_id,
        )
