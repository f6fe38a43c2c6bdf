"""The API server for real: gRPC and Connect on free ports, real clients, real HTTP requests."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from test_service_support import (
    FINGERPRINT,
    connect_call,
    grpc_healthy,
    http_healthy,
    make_embedding,
    make_slide,
    seeds_json,
)

from histosic.api.v1 import (
    clustering_pb2,
    clustering_pb2_grpc,
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
)
from histosic.cluster import cluster_slide
from histosic.seeds import SeedPoint
from histosic.service import ServerConfig, create_server
from histosic.service.server import HistosicServer
from histosic.store import file_fingerprint, read_embeddings, write_embeddings

SEEDS = [
    (300.0, 300.0, "Tumor"),
    (400.0, 2000.0, "Tumor"),
    (4500.0, 300.0, "Stroma"),
    (4000.0, 4000.0, "Stroma"),
]


@dataclass
class Env:
    server: HistosicServer
    port: int
    http_port: int
    channel: grpc.Channel
    emb: embedding_pb2_grpc.EmbeddingServiceStub
    clu: clustering_pb2_grpc.ClusteringServiceStub
    store: Path
    slides: Path
    outside: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("service")
    store, slides, outside = root / "store", root / "slides", root / "outside"
    for d in (store, slides, outside):
        d.mkdir()
    make_embedding(store / "syn.h5")
    make_embedding(store / "big.h5", grid=100, dim=64, fingerprint="sha256:big", seed=1)
    nan = make_embedding(store / "nan.tmp.h5", grid=10, fingerprint="sha256:nan")
    nan.features[3, 2] = np.nan
    (store / "nan.tmp.h5").unlink()
    write_embeddings(store / "nan.h5", nan)
    (store / "broken.h5").write_bytes(b"this is not HDF5")
    make_slide(slides / "s1.png", 1024)
    make_slide(slides / "big.png", 2048, seed=3)
    copied = make_slide(slides / "copied slide.png", 512, seed=5)
    # An embedding "made on another machine": other path, same slide content (fingerprint).
    make_embedding(
        store / "remote-copy.h5",
        fingerprint=file_fingerprint(copied),
        slide_path="C:\\Users\\someone\\slides\\copied slide.png",
        model="remote-model",
    )
    make_slide(outside / "secret.png", 256)
    (slides / "link.png").symlink_to(outside / "secret.png")
    config = ServerConfig(
        store=store, slide_roots=(slides,), devices=("cpu",), embed_workers=0, batch_size=16
    )
    server, port = create_server("127.0.0.1:0", config)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Env(
            server,
            port,
            server.http_port,
            channel,
            embedding_pb2_grpc.EmbeddingServiceStub(channel),
            clustering_pb2_grpc.ClusteringServiceStub(channel),
            store,
            slides,
            outside,
        )
    finally:
        channel.close()
        server.stop(grace=2.0)


def _seeds(points: list[tuple[float, float, str]] = SEEDS) -> list[clustering_pb2.SeedPoint]:
    return [clustering_pb2.SeedPoint(x=x, y=y, class_name=c) for x, y, c in points]


def _ndarray(msg: dict[str, Any]) -> np.ndarray[Any, Any]:
    """An NDArray message from Connect JSON (bytes are base64)."""
    data = base64.b64decode(msg.get("data", ""))
    shape = [int(s) for s in msg["shape"]]
    return np.frombuffer(data, dtype=np.dtype(msg["dtype"]).newbyteorder("<")).reshape(shape)


def _healthy(env: Env) -> None:
    assert grpc_healthy(env.channel)
    assert grpc_healthy(env.channel, "histosic.v1.ClusteringService")
    assert http_healthy(env.http_port)


# --------------------------------------------------------------------------------------------
# Happy paths
# --------------------------------------------------------------------------------------------


def test_list_models_both_protocols(env: Env) -> None:
    models = {m.name: m for m in env.emb.ListModels(embedding_pb2.ListModelsRequest()).models}
    names = set(models)
    assert {"resnet18-random", "handcrafted"} <= names
    status, body = connect_call(env.http_port, "EmbeddingService", "ListModels", {})
    assert status == 200
    assert {m["name"] for m in body["models"]} == names
    # foundation models: terms, resolution, and why they cannot be used on this offline machine
    uni = models["uni"]
    assert uni.dim == 1024 and uni.input_size == 224 and uni.patch_size == 224
    assert uni.gated and uni.licence.startswith("CC-BY-NC-ND") and uni.mpp == 0.5
    assert uni.page == "https://huggingface.co/MahmoodLab/UNI" and uni.precision == "float16"
    if not uni.available:
        assert "Hugging Face cache" in uni.unavailable_reason or "gated" in uni.unavailable_reason
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name["virchow2"]["gated"] is True and by_name["virchow2"]["dim"] == 2560


def test_list_embeddings(env: Env) -> None:
    resp = env.emb.ListEmbeddings(embedding_pb2.ListEmbeddingsRequest())
    by_id = {e.embedding_id: e for e in resp.embeddings}
    assert "broken.h5" not in by_id  # unreadable files are skipped, not fatal
    assert by_id["syn.h5"].n_patches == 1600 and by_id["syn.h5"].dim == 16
    assert by_id["syn.h5"].slide_fingerprint == FINGERPRINT
    only = env.emb.ListEmbeddings(embedding_pb2.ListEmbeddingsRequest(model="remote-model"))
    assert [e.embedding_id for e in only.embeddings] == ["remote-copy.h5"]


def test_get_embedding_grpc_chunks(env: Env) -> None:
    ref = common_pb2.EmbeddingRef(embedding_id="big.h5")
    msgs = list(env.emb.GetEmbedding(embedding_pb2.GetEmbeddingRequest(embedding=ref)))
    first = msgs[0]
    shape = tuple(first.features_shape)
    assert shape == (10000, 64) and first.features_dtype == "float32"
    assert len(msgs) == 3  # 2.56 MB in chunks of 1 MiB
    assert all(len(m.chunk) <= 1 << 20 for m in msgs)
    data = b"".join(m.chunk for m in msgs)
    assert [m.offset for m in msgs] == [0, 1 << 20, 2 << 20]
    feats = np.frombuffer(data, dtype="<f4").reshape(shape)
    local = read_embeddings(env.store / "big.h5")
    np.testing.assert_array_equal(feats, local.features)
    coords = np.frombuffer(first.coords.data, dtype="<i8").reshape(tuple(first.coords.shape))
    np.testing.assert_array_equal(coords, local.coords)
    assert first.info.n_patches == 10000


def test_download_embedding_client(env: Env) -> None:
    from histosic.service.client import download_embedding, open_channel

    with open_channel(f"127.0.0.1:{env.port}") as ch:
        got = download_embedding(ch, common_pb2.EmbeddingRef(embedding_id="big.h5"))
    local = read_embeddings(env.store / "big.h5")
    np.testing.assert_array_equal(got.features, local.features)
    np.testing.assert_array_equal(got.coords, local.coords)
    assert got.tissue_fraction is not None and got.meta.slide_fingerprint == "sha256:big"
    assert got.meta.stride_level0 == local.meta.stride_level0


def _connect_stream(port: int, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Connect server-streaming call over http.client (enveloped JSON messages)."""
    payload = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST",
        path,
        body=struct.pack(">BI", 0, len(payload)) + payload,
        headers={"Content-Type": "application/connect+json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    raw = resp.read()
    conn.close()
    out, i = [], 0
    while i < len(raw):
        flags, n = struct.unpack(">BI", raw[i : i + 5])
        msg = json.loads(raw[i + 5 : i + 5 + n] or b"{}")
        out.append({"end": bool(flags & 2), "msg": msg})
        i += 5 + n
    return out


def test_get_embedding_connect_stream_float16(env: Env) -> None:
    frames = _connect_stream(
        env.http_port,
        "/histosic.v1.EmbeddingService/GetEmbedding",
        {"embedding": {"embeddingId": "syn.h5"}, "dtype": "float16"},
    )
    assert frames[-1]["end"] and "error" not in frames[-1]["msg"]
    msgs = [f["msg"] for f in frames if not f["end"]]
    data = b"".join(base64.b64decode(m.get("chunk", "")) for m in msgs)
    feats = np.frombuffer(data, dtype="<f2").reshape(1600, 16)
    local = read_embeddings(env.store / "syn.h5")
    np.testing.assert_allclose(feats, local.features, rtol=1e-3, atol=1e-3)


def test_cluster_grpc_matches_in_process(env: Env) -> None:
    req = clustering_pb2.ClusterRequest(
        embedding=common_pb2.EmbeddingRef(embedding_id="syn.h5"),
        seeds=[*_seeds(), clustering_pb2.SeedPoint(x=-10, y=5, class_name="Tumor", id="off")],
        options=clustering_pb2.ClusterOptions(suggest=3),
    )
    resp = env.clu.Cluster(req, timeout=60)
    local = read_embeddings(env.store / "syn.h5")
    expected = cluster_slide(local, [SeedPoint(x, y, c) for x, y, c in SEEDS], suggest=3)
    labels = np.frombuffer(resp.labels.data, dtype="<i4")
    np.testing.assert_array_equal(labels, expected.labels)
    conf = np.frombuffer(resp.confidence.data, dtype="<f4")
    np.testing.assert_allclose(conf, expected.confidence, rtol=1e-6)
    assert tuple(resp.class_names) == expected.class_names
    assert resp.positive_class == "Tumor"
    assert [s.patch_index for s in resp.suggestions] == expected.suggested.tolist()
    assert len(resp.ignored_seeds) == 1
    ignored = resp.ignored_seeds[0]
    assert ignored.id == "off" and ignored.index == 4 and "outside the slide" in ignored.reason
    geo = json.loads(resp.geojson)
    tiles = [f for f in geo["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tiles) == 1600
    # The left half (feature 0 shifted) is the seeded tumour side.
    tumour = list(resp.class_names).index("Tumor")
    left = local.coords[:, 0] < 20 * 128
    assert (labels[left] == tumour).mean() > 0.9 and (labels[~left] != tumour).mean() > 0.9


def test_cluster_echoes_index_and_id_of_identical_ignored_seeds(env: Env) -> None:
    # Two identical points (equal values, different ids): each ignored seed reports its own
    # request index and id.
    off = [clustering_pb2.SeedPoint(x=-10, y=5, class_name="Tumor", id=i) for i in "ab"]
    req = clustering_pb2.ClusterRequest(
        embedding=common_pb2.EmbeddingRef(embedding_id="syn.h5"),
        seeds=[off[0], *_seeds(), off[1]],
        options=clustering_pb2.ClusterOptions(geojson="none"),
    )
    resp = env.clu.Cluster(req, timeout=60)
    assert [(i.index, i.id) for i in resp.ignored_seeds] == [(0, "a"), (5, "b")]
    assert resp.n_seeds_used == len(SEEDS)


def test_cluster_connect_json(env: Env) -> None:
    status, body = connect_call(
        env.http_port,
        "ClusteringService",
        "Cluster",
        {
            "embedding": {"embeddingId": "syn.h5"},
            "seeds": seeds_json(SEEDS),
            "options": {"geojson": "regions", "method": "sic", "randomState": "3"},
        },
    )
    assert status == 200, body
    labels = _ndarray(body["labels"])
    assert labels.shape == (1600,)
    assert body["classNames"] == ["Stroma", "Tumor"]
    assert body["method"] == "sic"
    assert sum(body["classCounts"]) == 1600
    geo = json.loads(body["geojson"])
    assert {f["properties"]["objectType"] for f in geo["features"]} == {"annotation"}
    grpc_resp = env.clu.Cluster(
        clustering_pb2.ClusterRequest(
            embedding=common_pb2.EmbeddingRef(embedding_id="syn.h5"),
            seeds=_seeds(),
            options=clustering_pb2.ClusterOptions(method="sic", random_state=3, geojson="none"),
        )
    )
    np.testing.assert_array_equal(labels, np.frombuffer(grpc_resp.labels.data, dtype="<i4"))


def test_cluster_finds_copied_embedding_by_fingerprint(env: Env) -> None:
    uri = (env.slides / "copied slide.png").as_uri()  # file:///.../copied%20slide.png
    req = clustering_pb2.ClusterRequest(
        embedding=common_pb2.EmbeddingRef(slide=uri),
        seeds=_seeds(),
        options=clustering_pb2.ClusterOptions(geojson="none"),
    )
    resp = env.clu.Cluster(req)
    assert resp.embedding_id == "remote-copy.h5"
    # The client may also send only the fingerprint it computed from its own copy of the slide.
    fp = file_fingerprint(env.slides / "copied slide.png")
    status, body = connect_call(
        env.http_port,
        "ClusteringService",
        "Cluster",
        {
            "embedding": {"slideFingerprint": fp},
            "seeds": seeds_json(SEEDS),
            "options": {"geojson": "none"},
        },
    )
    assert status == 200 and body["embeddingId"] == "remote-copy.h5"


def test_colors_pca(env: Env) -> None:
    resp = env.clu.Colors(
        clustering_pb2.ColorsRequest(
            embedding=common_pb2.EmbeddingRef(embedding_id="syn.h5"), method="pca"
        )
    )
    rgb = np.frombuffer(resp.rgb.data, dtype=np.uint8).reshape(tuple(resp.rgb.shape))
    assert rgb.shape == (1600, 3)
    # Feature 0 separates the halves, so the two halves get different mean colours.
    coords = np.frombuffer(resp.coords.data, dtype="<i8").reshape(-1, 2)
    left = coords[:, 0] < 20 * 128
    assert np.abs(rgb[left].mean(0) - rgb[~left].mean(0)).max() > 30


def test_embedding_job_watch_reuse_and_cluster(env: Env) -> None:
    start = embedding_pb2.StartEmbeddingRequest(
        slide="s1.png",
        model="handcrafted",
        tiling=embedding_pb2.Tiling(target_mpp=1.0, patch_size=64),
        slide_mpp=0.5,
    )
    job = env.emb.StartEmbedding(start).job
    assert job.state in (embedding_pb2.JOB_STATE_QUEUED, embedding_pb2.JOB_STATE_RUNNING)
    updates = list(env.emb.WatchJob(embedding_pb2.WatchJobRequest(job_id=job.job_id), timeout=300))
    final = updates[-1].job
    assert final.state == embedding_pb2.JOB_STATE_SUCCEEDED, final.error_message
    done = [u.job.patches_done for u in updates]
    assert done == sorted(done) and final.patches_done == final.patches_total > 0
    got = env.emb.GetJob(embedding_pb2.GetJobRequest(job_id=job.job_id)).job
    assert got.embedding_id == final.embedding_id and (env.store / got.embedding_id).is_file()
    again = env.emb.StartEmbedding(start).job
    assert again.state == embedding_pb2.JOB_STATE_SUCCEEDED and again.reused
    assert again.embedding_id == final.embedding_id
    # Cluster it by the slide reference, as QuPath names the image.
    emb = read_embeddings(env.store / final.embedding_id)
    left = emb.centers()[:, 0] < 400
    tumour_xy = emb.centers()[left][0]
    stroma_xy = emb.centers()[~left][-1]
    resp = env.clu.Cluster(
        clustering_pb2.ClusterRequest(
            embedding=common_pb2.EmbeddingRef(slide=f"file:{env.slides / 's1.png'}"),
            seeds=[
                clustering_pb2.SeedPoint(x=tumour_xy[0], y=tumour_xy[1], class_name="Tumor"),
                clustering_pb2.SeedPoint(x=stroma_xy[0], y=stroma_xy[1], class_name="Stroma"),
            ],
        )
    )
    assert resp.embedding_id == final.embedding_id
    assert np.frombuffer(resp.labels.data, dtype="<i4").shape == (emb.n_patches,)


def test_job_polling_over_connect_and_cancel_finished(env: Env) -> None:
    status, body = connect_call(
        env.http_port,
        "EmbeddingService",
        "StartEmbedding",
        {
            "slide": str(env.slides / "s1.png"),
            "model": "handcrafted",
            "tiling": {"targetMpp": 2.0, "patchSize": 32},
            "slideMpp": 0.5,
        },
    )
    assert status == 200, body
    job_id = body["job"]["jobId"]
    deadline = time.monotonic() + 300
    while True:
        status, body = connect_call(env.http_port, "EmbeddingService", "GetJob", {"jobId": job_id})
        assert status == 200
        if body["job"]["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert body["job"]["state"] == "JOB_STATE_SUCCEEDED", body
    status, body = connect_call(env.http_port, "EmbeddingService", "CancelJob", {"jobId": job_id})
    assert status == 400 and body["code"] == "failed_precondition"
    assert "already succeeded" in body["message"]
    _healthy(env)


def test_cancel_running_job_removes_partial(env: Env) -> None:
    start = embedding_pb2.StartEmbeddingRequest(
        slide="big.png",
        model="resnet18-random",
        tiling=embedding_pb2.Tiling(target_mpp=1.0, patch_size=64),
        slide_mpp=0.5,
        batch_size=1,
    )
    job = env.emb.StartEmbedding(start).job
    deadline = time.monotonic() + 120
    while True:
        job = env.emb.GetJob(embedding_pb2.GetJobRequest(job_id=job.job_id)).job
        if job.patches_done >= 2 or job.state >= embedding_pb2.JOB_STATE_SUCCEEDED:
            break
        assert time.monotonic() < deadline, "job made no progress"
        time.sleep(0.05)
    assert job.state == embedding_pb2.JOB_STATE_RUNNING, "job ended before it could be cancelled"
    cancelled = env.emb.CancelJob(embedding_pb2.CancelJobRequest(job_id=job.job_id)).job
    assert cancelled.state == embedding_pb2.JOB_STATE_CANCELLED
    assert cancelled.error_code == "CANCELLED"
    assert 0 < cancelled.patches_done < cancelled.patches_total
    leftovers = [p.name for p in env.store.iterdir() if p.name.startswith("big.resnet")]
    assert leftovers == [], leftovers  # no final file, no .partial
    with pytest.raises(grpc.RpcError) as err:
        env.emb.CancelJob(embedding_pb2.CancelJobRequest(job_id=job.job_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    _healthy(env)


@pytest.mark.slow
def test_job_survives_client_disconnect(env: Env) -> None:
    start = embedding_pb2.StartEmbeddingRequest(
        slide="big.png",
        model="handcrafted",
        tiling=embedding_pb2.Tiling(target_mpp=1.0, patch_size=64),
        slide_mpp=0.5,
        batch_size=4,
    )
    with grpc.insecure_channel(f"127.0.0.1:{env.port}") as other:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(other)
        job = stub.StartEmbedding(start).job
        stream = stub.WatchJob(embedding_pb2.WatchJobRequest(job_id=job.job_id))
        next(stream)
        stream.cancel()  # the client goes away mid-watch; the channel closes below
    final = env.server.jobs.wait(job.job_id, timeout=300)
    got = env.emb.GetJob(embedding_pb2.GetJobRequest(job_id=job.job_id)).job
    assert final.state.name == "SUCCEEDED" and got.state == embedding_pb2.JOB_STATE_SUCCEEDED
    assert (env.store / got.embedding_id).is_file()


def test_fifty_concurrent_cluster_calls(env: Env) -> None:
    local = read_embeddings(env.store / "syn.h5")
    expected = cluster_slide(local, [SeedPoint(x, y, c) for x, y, c in SEEDS]).labels
    req = clustering_pb2.ClusterRequest(
        embedding=common_pb2.EmbeddingRef(embedding_id="syn.h5"),
        seeds=_seeds(),
        options=clustering_pb2.ClusterOptions(geojson="none"),
    )
    body = {
        "embedding": {"embeddingId": "syn.h5"},
        "seeds": seeds_json(SEEDS),
        "options": {"geojson": "none"},
    }

    def one(i: int) -> np.ndarray[Any, Any]:
        if i % 2:
            status, out = connect_call(env.http_port, "ClusteringService", "Cluster", body)
            assert status == 200, out
            return _ndarray(out["labels"])
        resp = env.clu.Cluster(req, timeout=120)
        return np.frombuffer(resp.labels.data, dtype="<i4")

    one(0)  # load it into the cache
    misses = env.server.cache.misses
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    assert len(results) == 50
    for labels in results:
        np.testing.assert_array_equal(labels, expected)
    assert env.server.cache.misses == misses  # served from memory, not reread
    _healthy(env)


# --------------------------------------------------------------------------------------------
# Bad requests: each answered with the right status, and the server stays healthy
# --------------------------------------------------------------------------------------------


def _grpc_cluster(env: Env, **kw: Any) -> None:
    kw.setdefault("embedding", common_pb2.EmbeddingRef(embedding_id="syn.h5"))
    kw.setdefault("seeds", _seeds())
    env.clu.Cluster(clustering_pb2.ClusterRequest(**kw), timeout=60)


def _grpc_start(env: Env, **kw: Any) -> None:
    kw.setdefault("slide", "s1.png")
    kw.setdefault("model", "handcrafted")
    kw.setdefault("slide_mpp", 0.5)
    env.emb.StartEmbedding(embedding_pb2.StartEmbeddingRequest(**kw), timeout=60)


BAD_GRPC: dict[str, tuple[Any, grpc.StatusCode]] = {
    "unknown embedding": (
        lambda e: _grpc_cluster(e, embedding=common_pb2.EmbeddingRef(embedding_id="nope.h5")),
        grpc.StatusCode.NOT_FOUND,
    ),
    "empty embedding reference": (
        lambda e: _grpc_cluster(e, embedding=common_pb2.EmbeddingRef()),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "embedding id escaping the store": (
        lambda e: _grpc_cluster(e, embedding=common_pb2.EmbeddingRef(embedding_id="../x.h5")),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    "corrupt embedding file": (
        lambda e: _grpc_cluster(e, embedding=common_pb2.EmbeddingRef(embedding_id="broken.h5")),
        grpc.StatusCode.NOT_FOUND,
    ),
    "NaN in the features": (
        lambda e: _grpc_cluster(e, embedding=common_pb2.EmbeddingRef(embedding_id="nan.h5")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "no seeds": (lambda e: _grpc_cluster(e, seeds=[]), grpc.StatusCode.INVALID_ARGUMENT),
    "seeds of one class": (
        lambda e: _grpc_cluster(e, seeds=_seeds([(300, 300, "Tumor"), (600, 600, "Tumor")])),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "all seeds off the slide": (
        lambda e: _grpc_cluster(e, seeds=_seeds([(-1, -1, "Tumor"), (1e9, 5, "Stroma")])),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "unknown method": (
        lambda e: _grpc_cluster(e, options=clustering_pb2.ClusterOptions(method="magic")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "negative suggest": (
        lambda e: _grpc_cluster(e, options=clustering_pb2.ClusterOptions(suggest=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "message over the size limit": (
        lambda e: _grpc_cluster(
            e, seeds=[clustering_pb2.SeedPoint(x=1, y=1, class_name="T", id="x" * (20 << 20))]
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    "slide outside the roots": (
        lambda e: _grpc_start(e, slide=str(e.outside / "secret.png")),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    "symlink out of a root": (
        lambda e: _grpc_start(e, slide="link.png"),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    "file URI outside the roots": (
        lambda e: _grpc_start(e, slide="file:///etc/passwd"),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    "missing slide inside a root": (
        lambda e: _grpc_start(e, slide="missing.svs"),
        grpc.StatusCode.NOT_FOUND,
    ),
    "non-file URI": (
        lambda e: _grpc_start(e, slide="http://example.org/a.svs"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "unknown model": (
        lambda e: _grpc_start(e, model="resnet9000"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "model naming a server file": (
        lambda e: _grpc_start(e, model="checkpoint:/etc/passwd"),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    "negative slide mpp": (
        lambda e: _grpc_start(e, slide_mpp=-0.5),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "unknown job": (
        lambda e: e.emb.GetJob(embedding_pb2.GetJobRequest(job_id="f" * 32)),
        grpc.StatusCode.NOT_FOUND,
    ),
    "watch without job id": (
        lambda e: list(e.emb.WatchJob(embedding_pb2.WatchJobRequest())),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "download in an unsupported dtype": (
        lambda e: list(
            e.emb.GetEmbedding(
                embedding_pb2.GetEmbeddingRequest(
                    embedding=common_pb2.EmbeddingRef(embedding_id="syn.h5"), dtype="int8"
                )
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "fingerprint that does not match the slide": (
        lambda e: _grpc_cluster(
            e, embedding=common_pb2.EmbeddingRef(slide="s1.png", slide_fingerprint="sha256:0")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "cancel an unknown job": (
        lambda e: e.emb.CancelJob(embedding_pb2.CancelJobRequest(job_id="nope")),
        grpc.StatusCode.NOT_FOUND,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_GRPC))
def test_bad_grpc_request(env: Env, case: str) -> None:
    call, code = BAD_GRPC[case]
    with pytest.raises(grpc.RpcError) as err:
        call(env)
    assert err.value.code() == code, err.value.details()
    assert err.value.details()  # a message that says what was wrong
    _healthy(env)


def test_gated_foundation_model_without_token_is_refused_at_the_request(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server runs in this process: the hub looks reachable, no token, nothing cached.
    from histosic.embed import hub

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "token", lambda: None)
    monkeypatch.setattr(hub, "cached", lambda fm: None)
    with pytest.raises(grpc.RpcError) as err:
        _grpc_start(env, model="virchow2")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "gated: request access at https://huggingface.co/paige-ai/Virchow2" in (
        err.value.details() or ""
    )
    _healthy(env)


BAD_CONNECT: dict[str, tuple[str, str, bytes, int, str]] = {
    "unknown JSON field": (
        "ClusteringService",
        "Cluster",
        b'{"embedding": {"embeddingId": "syn.h5"}, "seedz": []}',
        400,
        "invalid_argument",
    ),
    "wrong JSON type": (
        "ClusteringService",
        "Cluster",
        b'{"embedding": {"embeddingId": "syn.h5"}, "seeds": "Tumor"}',
        400,
        "invalid_argument",
    ),
    "string for a number": (
        "ClusteringService",
        "Cluster",
        b'{"embedding": {"embeddingId": "syn.h5"}, "seeds": [{"x": "left", "y": 1}]}',
        400,
        "invalid_argument",
    ),
    "malformed JSON": ("ClusteringService", "Cluster", b'{"embedding": ', 400, "invalid_argument"),
    "bad GeoJSON kind": (
        "ClusteringService",
        "Cluster",
        json.dumps(
            {
                "embedding": {"embeddingId": "syn.h5"},
                "seeds": seeds_json(SEEDS),
                "options": {"geojson": "shapefile"},
            }
        ).encode(),
        400,
        "invalid_argument",
    ),
    "unknown embedding": (
        "ClusteringService",
        "Cluster",
        json.dumps({"embedding": {"embeddingId": "gone.h5"}, "seeds": seeds_json(SEEDS)}).encode(),
        404,
        "not_found",
    ),
    "dot-dot slide path": (
        "EmbeddingService",
        "StartEmbedding",
        b'{"slide": "../outside/secret.png", "model": "handcrafted", "slideMpp": 0.5}',
        403,
        "permission_denied",
    ),
    "Windows path outside the roots": (
        "EmbeddingService",
        "StartEmbedding",
        b'{"slide": "C:\\\\Windows\\\\win.ini", "model": "handcrafted"}',
        404,
        "not_found",
    ),
    "overlap out of range": (
        "EmbeddingService",
        "StartEmbedding",
        b'{"slide": "s1.png", "model": "handcrafted", "slideMpp": 0.5, "tiling": {"overlap": 1.5}}',
        400,
        "invalid_argument",
    ),
    "Colors with an unknown method": (
        "ClusteringService",
        "Colors",
        b'{"embedding": {"embeddingId": "syn.h5"}, "method": "tsne"}',
        400,
        "invalid_argument",
    ),
    "request body over the limit": (
        "ClusteringService",
        "Cluster",
        b'{"embedding": {"embeddingId": "' + b"x" * (17 << 20) + b'"}}',
        429,
        "resource_exhausted",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONNECT))
def test_bad_connect_request(env: Env, case: str) -> None:
    service, method, raw, status, code = BAD_CONNECT[case]
    got_status, body = connect_call(env.http_port, service, method, None, raw=raw)
    assert got_status == status, body
    if code:
        assert body["code"] == code and body["message"]
    _healthy(env)


def test_unknown_rpc_path_is_404(env: Env) -> None:
    status, body = connect_call(env.http_port, "ClusteringService", "Explode", {})
    assert status == 404
    status, body = connect_call(env.http_port, "NoSuchService", "Cluster", {})
    assert status == 404 and body["code"] == "unimplemented"
    _healthy(env)


def test_reflection_lists_services(env: Env) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(env.channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    resp = next(iter(stub.ServerReflectionInfo(iter([req]))))
    names = {s.name for s in resp.list_services_response.service}
    assert {
        "histosic.v1.EmbeddingService",
        "histosic.v1.ClusteringService",
        "grpc.health.v1.Health",
    } <= names


def test_internal_error_is_logged_and_server_survives(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault injection: an unexpected exception inside the servicer (a bug) on both protocols."""

    def broken(entry: Any) -> Any:
        raise ZeroDivisionError("hidden detail")

    monkeypatch.setattr(env.server.cache, "get", broken)
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as err:
        _grpc_cluster(env)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "hidden detail" not in (err.value.details() or "")
    body = {"embedding": {"embeddingId": "syn.h5"}, "seeds": seeds_json(SEEDS)}
    with caplog.at_level(logging.ERROR):
        status, out = connect_call(env.http_port, "ClusteringService", "Cluster", body)
    assert status == 500 and out["code"] == "internal"
    assert "hidden detail" in caplog.text and "Traceback" in caplog.text
    monkeypatch.undo()
    _healthy(env)
    _grpc_cluster(env)  # and it still clusters
