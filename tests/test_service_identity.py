"""StartEmbedding's limits and the embedding's identity, on a real server over gRPC and Connect.

Issue 15, items 2 and 3: a request may not ask for any resolution or any number of patches, and an
embedding is identified by the slide's content, its resolution, the tiling, the model and weights
(not by the slide's file name), for reuse and for merging jobs alike.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_service_support import connect_call, http_healthy, make_slide

from histosic.api.v1 import embedding_pb2, embedding_pb2_grpc
from histosic.service import ServerConfig, create_server
from histosic.service.server import HistosicServer
from histosic.store import file_fingerprint, read_meta

MAX_PATCHES = 1000


class HeldEmbed:
    """The real ``embed_slide``, held at its start until :attr:`go` is set (so that a job stays
    queued or running while the test sends more requests)."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.go.set()

    def __call__(self, slide: Path, out: Path, **kw: Any) -> Path:
        from histosic.embed.pipeline import embed_slide

        self.go.wait(60)
        return embed_slide(slide, out, **kw)


@dataclass
class Env:
    server: HistosicServer
    stub: embedding_pb2_grpc.EmbeddingServiceStub
    http_port: int
    store: Path
    slides: Path
    held: HeldEmbed


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("identity")
    store, slides = root / "store", root / "slides"
    for d in (store, slides / "a", slides / "b"):
        d.mkdir(parents=True)
    make_slide(slides / "a" / "same.png", 256, seed=1)
    make_slide(slides / "b" / "same.png", 256, seed=2)  # same name, other content
    make_slide(slides / "wide.png", 1024, seed=3)
    held = HeldEmbed()
    config = ServerConfig(
        store=store,
        slide_roots=(slides,),
        devices=("cpu",),
        embed_workers=0,
        batch_size=64,
        max_patches_per_job=MAX_PATCHES,
        embed=held,
    )
    server, port = create_server("127.0.0.1:0", config)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Env(
            server,
            embedding_pb2_grpc.EmbeddingServiceStub(channel),
            server.http_port,
            store,
            slides,
            held,
        )
    finally:
        held.go.set()
        channel.close()
        server.stop(grace=2.0)


def _start(
    env: Env, protocol: str, slide: str, *, slide_mpp: float | None = 0.5, **tiling: float
) -> dict[str, Any]:
    """StartEmbedding over one protocol; the job as a dict of Connect JSON names, or
    ``{"code": ..., "message": ...}`` for an error."""
    tiling = {"target_mpp": 1.0, "patch_size": 32, **tiling}
    if protocol == "grpc":
        t = embedding_pb2.Tiling(target_mpp=tiling["target_mpp"], patch_size=32)
        if "overlap" in tiling:
            t.overlap = tiling["overlap"]
        req = embedding_pb2.StartEmbeddingRequest(slide=slide, model="handcrafted", tiling=t)
        if slide_mpp is not None:
            req.slide_mpp = slide_mpp
        try:
            job = env.stub.StartEmbedding(req, timeout=60).job
        except grpc.RpcError as err:
            return {"code": err.code().name.lower(), "message": err.details()}
        return {
            "jobId": job.job_id,
            "reused": job.reused,
            "embeddingId": job.embedding_id,
            "state": embedding_pb2.JobState.Name(job.state),
        }
    body: dict[str, Any] = {
        "slide": slide,
        "model": "handcrafted",
        "tiling": {"targetMpp": tiling["target_mpp"], "patchSize": 32},
    }
    if "overlap" in tiling:
        body["tiling"]["overlap"] = tiling["overlap"]
    if slide_mpp is not None:
        body["slideMpp"] = slide_mpp
    status, out = connect_call(env.http_port, "EmbeddingService", "StartEmbedding", body)
    if status != 200:
        return {"code": out["code"], "message": out["message"]}
    job = out["job"]
    return {
        "jobId": job["jobId"],
        "reused": job.get("reused", False),
        "embeddingId": job.get("embeddingId", ""),
        "state": job["state"],
    }


def _finish(env: Env, job: dict[str, Any]) -> str:
    snap = env.server.jobs.wait(job["jobId"], timeout=120)
    assert snap.state.name == "SUCCEEDED", snap.error_message
    assert snap.embedding_path is not None
    return snap.embedding_path.name


def _no_job_and_no_file(env: Env, before: int) -> None:
    assert len(env.server.jobs._jobs) == before  # nothing was queued
    assert not list(env.store.glob("*.partial"))


PROTOCOLS = ("grpc", "connect")


# -- item 2: limits ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("field", "value"),
    [("target_mpp", 1e-9), ("slide_mpp", 1e-12), ("target_mpp", 1e4), ("slide_mpp", 500.0)],
)
def test_resolution_out_of_range_is_refused(
    env: Env, protocol: str, field: str, value: float
) -> None:
    before = len(env.server.jobs._jobs)
    if field == "slide_mpp":
        got = _start(env, protocol, "wide.png", slide_mpp=value)
    else:
        got = _start(env, protocol, "wide.png", target_mpp=value)
    assert got.get("code") == "invalid_argument", got
    assert field.replace("_", "") in got["message"].replace("_", "").replace(".", "")
    assert "between 0.05 and 100 microns per pixel" in got["message"]
    _no_job_and_no_file(env, before)
    assert http_healthy(env.http_port)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_patch_count_over_the_limit_is_refused_with_the_count(env: Env, protocol: str) -> None:
    before = len(env.server.jobs._jobs)
    # 1024 px at 0.5 um/px, 32 px patches at 0.5 um/px with 50% overlap: stride 16 px, 63 x 63.
    got = _start(env, protocol, "wide.png", target_mpp=0.5, overlap=0.5)
    assert got.get("code") == "resource_exhausted", got
    assert "3,969 patches" in got["message"] and f"{MAX_PATCHES:,}" in got["message"]
    _no_job_and_no_file(env, before)
    # Within the limit the same slide is accepted: 1024 px at 1 um/px in 32 px is 16 x 16.
    ok = _start(env, protocol, "wide.png")
    assert "code" not in ok, ok
    _finish(env, ok)


# -- item 3: identity ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_same_stem_in_another_folder_is_another_embedding(env: Env, protocol: str) -> None:
    first = _start(env, protocol, "a/same.png", target_mpp=1.0 if protocol == "grpc" else 1.25)
    a = _finish(env, first)
    second = _start(env, protocol, "b/same.png", target_mpp=1.0 if protocol == "grpc" else 1.25)
    assert "code" not in second, second
    assert not second["reused"]
    b = _finish(env, second)
    assert a != b
    assert read_meta(env.store / a).slide_fingerprint == file_fingerprint(
        env.slides / "a" / "same.png"
    )
    assert read_meta(env.store / b).slide_fingerprint == file_fingerprint(
        env.slides / "b" / "same.png"
    )
    # Each slide asked again gets its own embedding back.
    again = _start(env, protocol, "b/same.png", target_mpp=1.0 if protocol == "grpc" else 1.25)
    assert again["reused"] and again["embeddingId"] == b


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reuse_respects_slide_mpp(env: Env, protocol: str) -> None:
    target = 1.5 if protocol == "grpc" else 1.75
    first = _finish(env, _start(env, protocol, "a/same.png", slide_mpp=0.5, target_mpp=target))
    other = _start(env, protocol, "a/same.png", slide_mpp=1.0, target_mpp=target)
    assert "code" not in other, other
    assert not other["reused"]
    second = _finish(env, other)
    assert second != first
    assert read_meta(env.store / first).mpp == 0.5 and read_meta(env.store / second).mpp == 1.0
    same = _start(env, protocol, "a/same.png", slide_mpp=0.5, target_mpp=target)
    assert same["reused"] and same["embeddingId"] == first


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_running_job_is_shared_only_with_the_same_identity(env: Env, protocol: str) -> None:
    target = 0.75 if protocol == "grpc" else 0.8
    env.held.go.clear()
    try:
        at_025 = _start(env, protocol, "b/same.png", slide_mpp=0.25, target_mpp=target)
        at_05 = _start(env, protocol, "b/same.png", slide_mpp=0.5, target_mpp=target)
        again_025 = _start(env, protocol, "b/same.png", slide_mpp=0.25, target_mpp=target)
    finally:
        env.held.go.set()
    assert "code" not in at_025 and "code" not in at_05, (at_025, at_05)
    assert at_05["jobId"] != at_025["jobId"]
    assert again_025["jobId"] == at_025["jobId"]
    p025, p05 = _finish(env, at_025), _finish(env, at_05)
    assert p025 != p05
    assert read_meta(env.store / p025).mpp == 0.25 and read_meta(env.store / p05).mpp == 0.5
