"""Issue 15 on a real server, over gRPC and Connect: the limits of a Cluster request (item 1), the
client's faults answered as such rather than INTERNAL (item 5), echoed values kept short (item 8)
and no server paths in messages (item 10)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_service_support import connect_call, grpc_healthy, http_healthy, make_embedding

from histosic.api.v1 import (
    clustering_pb2,
    clustering_pb2_grpc,
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
)
from histosic.cluster.options import MAX_CLASSES, MAX_SEEDS
from histosic.service import ServerConfig, create_server
from histosic.service.server import HistosicServer

SEEDS = [(300.0, 300.0, "Tumor"), (4500.0, 300.0, "Stroma")]


@dataclass
class Env:
    server: HistosicServer
    http_port: int
    channel: grpc.Channel
    emb: embedding_pb2_grpc.EmbeddingServiceStub
    clu: clustering_pb2_grpc.ClusteringServiceStub
    root: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("limits")
    store, slides = root / "store", root / "slides"
    store.mkdir()
    slides.mkdir()
    make_embedding(store / "syn.h5")  # 40 x 40 patches of 16 features
    make_embedding(store / "wide.h5", grid=60, dim=2048, fingerprint="sha256:wide", seed=2)
    (slides / "folder.svs").mkdir()
    # A TIFF header and nothing else: a copy that stopped early.
    (slides / "truncated.svs").write_bytes(b"II*\x00\x08\x00\x00\x00" + b"\x00" * 64)
    config = ServerConfig(
        store=store, slide_roots=(slides,), devices=("cpu",), embed_workers=0, batch_size=16
    )
    server, port = create_server("127.0.0.1:0", config)
    server.start()
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    try:
        yield Env(
            server,
            server.http_port,
            channel,
            embedding_pb2_grpc.EmbeddingServiceStub(channel),
            clustering_pb2_grpc.ClusteringServiceStub(channel),
            root,
        )
    finally:
        channel.close()
        server.stop(grace=2.0)


def _points(points: list[tuple[float, float, str]]) -> list[dict[str, Any]]:
    return [{"x": x, "y": y, "className": c} for x, y, c in points]


def _both(
    env: Env, service: str, method: str, body: dict[str, Any], message_type: Any
) -> tuple[tuple[grpc.StatusCode, str], tuple[int, dict[str, Any]]]:
    """The same request over gRPC (from its Connect JSON) and over Connect: (code, message) each."""
    from google.protobuf import json_format

    request = json_format.ParseDict(body, message_type())
    stub = env.clu if service == "ClusteringService" else env.emb
    try:
        getattr(stub, method)(request, timeout=120)
        got: tuple[grpc.StatusCode, str] = (grpc.StatusCode.OK, "")
    except grpc.RpcError as err:
        got = (err.code(), err.details() or "")
    status, answer = connect_call(env.http_port, service, method, body, timeout=120)
    return got, (status, answer)


CONNECT_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_argument"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "resource_exhausted"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
}


def _assert_refused(
    env: Env,
    service: str,
    method: str,
    body: dict[str, Any],
    message_type: Any,
    code: grpc.StatusCode,
    needle: str,
) -> str:
    (g_code, g_msg), (c_status, c_body) = _both(env, service, method, body, message_type)
    assert g_code == code, g_msg
    assert (c_status, c_body.get("code")) == CONNECT_CODE[code], c_body
    for message in (g_msg, c_body["message"]):
        assert needle in message, message
        assert "\n" not in message and len(message) <= 1000
        assert str(env.root) not in message  # no absolute server path
    assert grpc_healthy(env.channel) and http_healthy(env.http_port)
    return g_msg


# -- item 1: the limits of a Cluster request ------------------------------------------------------


def test_too_many_seeds_is_resource_exhausted(env: Env) -> None:
    points = [(300.0, 300.0, "Tumor")] * (MAX_SEEDS // 2) + [(4500.0, 300.0, "Stroma")] * (
        MAX_SEEDS // 2 + 1
    )
    body = {"embedding": {"embeddingId": "syn.h5"}, "seeds": _points(points)}
    _assert_refused(
        env,
        "ClusteringService",
        "Cluster",
        body,
        clustering_pb2.ClusterRequest,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{MAX_SEEDS + 1} seed points given; at most {MAX_SEEDS}",
    )


def test_too_many_classes_is_invalid_argument(env: Env) -> None:
    # MAX_CLASSES + 1 classes (the 2,000 classes tried to allocate 96.5 TiB).
    points = [(128.0 * i + 64, 64.0, f"class {i}") for i in range(MAX_CLASSES + 1)]
    body = {
        "embedding": {"embeddingId": "syn.h5"},
        "seeds": _points(points),
        "options": {"multiclass": True},
    }
    _assert_refused(
        env,
        "ClusteringService",
        "Cluster",
        body,
        clustering_pb2.ClusterRequest,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{MAX_CLASSES + 1} seeded classes; at most {MAX_CLASSES}",
    )


@pytest.mark.slow
def test_many_seeds_are_clustered_at_a_bounded_cost(env: Env) -> None:
    # 50,000 points on all 3,600 patches of 2,048 features: the kernel form took a Gram matrix
    # and a Hessian of 3,600^2 (and minutes); the primal form answers on both protocols.
    n_side = 60
    # Patch centres (stride 128, side 256): each click on exactly one patch.
    points = [
        (
            128.0 * (i % n_side) + 128,
            128.0 * ((i // n_side) % n_side) + 128,
            "Tumor" if (i % n_side) < n_side // 2 else "Stroma",
        )
        for i in range(50_000)
    ]
    body = {"embedding": {"embeddingId": "wide.h5"}, "seeds": _points(points)}
    request = clustering_pb2.ClusterRequest(
        embedding=common_pb2.EmbeddingRef(embedding_id="wide.h5"),
        seeds=[clustering_pb2.SeedPoint(x=x, y=y, class_name=c) for x, y, c in points],
        options=clustering_pb2.ClusterOptions(geojson="none"),
    )
    resp = env.clu.Cluster(request, timeout=300)
    assert resp.n_seeds_used == 50_000
    assert list(resp.class_counts) == [n_side * n_side // 2] * 2  # the seeds are the halves
    body["options"] = {"geojson": "none"}
    status, answer = connect_call(env.http_port, "ClusteringService", "Cluster", body, timeout=300)
    assert status == 200, answer
    assert [int(c) for c in answer["classCounts"]] == list(resp.class_counts)


# -- item 5: the client's faults, not INTERNAL ---------------------------------------------------


@pytest.mark.parametrize("value", [-1, 2**32, 2**40])
@pytest.mark.parametrize("rpc", ["Cluster", "Colors"])
def test_random_state_out_of_range(env: Env, rpc: str, value: int) -> None:
    body: dict[str, Any] = {"embedding": {"embeddingId": "syn.h5"}}
    if rpc == "Cluster":
        body |= {"seeds": _points(SEEDS), "options": {"randomState": str(value)}}
        message_type: Any = clustering_pb2.ClusterRequest
    else:
        body |= {"randomState": str(value), "method": "pca"}
        message_type = clustering_pb2.ColorsRequest
    _assert_refused(
        env,
        "ClusteringService",
        rpc,
        body,
        message_type,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"random_state must be in [0, 2**32) or None, got {value}",
    )


LONG = "n" * 300  # one name over the 255 bytes of NAME_MAX


@pytest.mark.parametrize(
    ("service", "method", "body", "message_type"),
    [
        (
            "EmbeddingService",
            "StartEmbedding",
            {"slide": f"{LONG}.svs", "model": "handcrafted", "slideMpp": 0.5},
            embedding_pb2.StartEmbeddingRequest,
        ),
        (
            "EmbeddingService",
            "ListEmbeddings",
            {"slide": f"sub/{LONG}.svs"},
            embedding_pb2.ListEmbeddingsRequest,
        ),
        (
            "ClusteringService",
            "Cluster",
            {"embedding": {"embeddingId": f"{LONG}.h5"}, "seeds": _points(SEEDS)},
            clustering_pb2.ClusterRequest,
        ),
    ],
    ids=["StartEmbedding", "ListEmbeddings", "embeddingId"],
)
def test_name_over_255_bytes(
    env: Env, service: str, method: str, body: dict[str, Any], message_type: Any
) -> None:
    _assert_refused(
        env,
        service,
        method,
        body,
        message_type,
        grpc.StatusCode.INVALID_ARGUMENT,
        "names are at most 255 bytes",
    )


def _wait_job(env: Env, job_id: str) -> embedding_pb2.Job:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: embedding_pb2.Job = env.emb.GetJob(embedding_pb2.GetJobRequest(job_id=job_id)).job
        if job.state >= embedding_pb2.JOB_STATE_SUCCEEDED:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def _refused_or_failed(env: Env, slide: str, needle: str) -> None:
    """StartEmbedding of a damaged slide: refused at once (the server reads the slide to count its
    patches before a job starts), INVALID_ARGUMENT on both protocols, or, where a reader fails only
    later, a job that fails with that code."""
    body = {"slide": slide, "model": "handcrafted", "slideMpp": 0.5, "overwrite": True}
    (g_code, g_msg), (status, answer) = _both(
        env, "EmbeddingService", "StartEmbedding", body, embedding_pb2.StartEmbeddingRequest
    )
    for code, message, job_id in (
        (g_code, g_msg, None),
        (
            grpc.StatusCode.OK if status == 200 else grpc.StatusCode.INVALID_ARGUMENT,
            answer.get("message", ""),
            answer.get("job", {}).get("jobId"),
        ),
    ):
        if code == grpc.StatusCode.OK:
            assert status == 200 and job_id, answer
            job = _wait_job(env, str(job_id))
            assert job.state == embedding_pb2.JOB_STATE_FAILED
            code, message = grpc.StatusCode[job.error_code], job.error_message
        assert code == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message.startswith(needle) and "\n" not in message, message
        assert str(env.root) not in message
    assert g_code != grpc.StatusCode.OK or status == 200  # both protocols alike


def test_truncated_svs_fails_as_invalid_argument(env: Env) -> None:
    _refused_or_failed(env, "truncated.svs", "slide truncated.svs is damaged or truncated")


def test_real_svs_cut_in_half_fails_as_invalid_argument(env: Env, cmu_svs: Path) -> None:
    # The real Aperio file, its second half missing (tiffslide raised IndexError: INTERNAL).
    data = cmu_svs.read_bytes()
    (env.root / "slides" / "cut.svs").write_bytes(data[: len(data) // 2])
    _refused_or_failed(env, "cut.svs", "slide cut.svs is damaged or truncated")


def test_slide_whose_embedding_name_would_be_too_long(env: Env) -> None:
    # The slide's own name is legal (244 bytes); the embedding file's would not be.
    from test_service_support import make_slide

    name = "L" * 240 + ".png"
    make_slide(env.root / "slides" / name, 128)
    _assert_refused(
        env,
        "EmbeddingService",
        "StartEmbedding",
        {"slide": name, "model": "handcrafted", "slideMpp": 0.5},
        embedding_pb2.StartEmbeddingRequest,
        grpc.StatusCode.INVALID_ARGUMENT,
        "bytes a file name may have: give the slide a shorter name",
    )


def test_garbage_protobuf_over_grpc_is_invalid_argument(env: Env) -> None:
    garbage = b"\xff\xff\xff\xff\x0f\x01garbage"
    raw: Callable[..., bytes] = env.channel.unary_unary(
        "/histosic.v1.ClusteringService/Cluster",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as info:
        raw(garbage, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the request to Cluster is not a valid protobuf message" in (info.value.details() or "")
    stream: Callable[..., Iterator[bytes]] = env.channel.unary_stream(
        "/histosic.v1.EmbeddingService/WatchJob",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stream(garbage, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the request to WatchJob is not a valid" in (info.value.details() or "")
    # The Connect twin: protobuf bytes that do not parse.
    status, body = connect_call(
        env.http_port,
        "ClusteringService",
        "Cluster",
        None,
        raw=b"\xff\xff\xff\xff\x0f\x01garbage",
        content_type="application/proto",
    )
    assert (status, body.get("code")) == (400, "invalid_argument"), body
    assert grpc_healthy(env.channel) and http_healthy(env.http_port)


# -- item 8: echoed values kept short ---------------------------------------------------------


@pytest.mark.parametrize("field", ["className", "method", "positiveClass", "embeddingId"])
def test_long_values_are_not_echoed_whole(env: Env, field: str) -> None:
    # 200 KB: over gRPC the whole value overflowed the trailers ("Stream removed").
    big = "T" * 200_000
    body: dict[str, Any] = {"embedding": {"embeddingId": "syn.h5"}, "seeds": _points(SEEDS)}
    code = grpc.StatusCode.INVALID_ARGUMENT
    if field == "className":
        body["seeds"] = _points([(300.0, 300.0, big), (400.0, 400.0, big)])
        body["options"] = {"positiveClass": big}
        needle = "all usable seeds have the class 'TTTT"
    elif field == "embeddingId":
        body["embedding"] = {"embeddingId": "sub/" + big}
        needle = "embedding id 'sub/TTTT"
    else:
        body["options"] = {field: big}
        needle = "(200000 characters)"
    message = _assert_refused(
        env, "ClusteringService", "Cluster", body, clustering_pb2.ClusterRequest, code, needle
    )
    assert "characters" in message and big[:1000] not in message


# -- item 10: no server paths, a folder is called a folder ----------------------------------------


def test_folder_as_slide_and_missing_slide_name_no_server_path(env: Env) -> None:
    for slide, needle in (
        ("folder.svs", "slide 'folder.svs' is a folder, not a slide file"),
        ("missing.svs", "slide 'missing.svs' does not exist under the server's slide roots"),
        ("../outside.svs", "contains '..'"),
    ):
        code = grpc.StatusCode.NOT_FOUND
        if slide.startswith(".."):
            code = grpc.StatusCode.PERMISSION_DENIED
            (g_code, g_msg), (status, answer) = _both(
                env,
                "EmbeddingService",
                "ListEmbeddings",
                {"slide": slide},
                embedding_pb2.ListEmbeddingsRequest,
            )
            assert g_code == code and needle in g_msg
            assert status == 403 and needle in answer["message"]
            continue
        _assert_refused(
            env,
            "EmbeddingService",
            "ListEmbeddings",
            {"slide": slide},
            embedding_pb2.ListEmbeddingsRequest,
            code,
            needle,
        )


def test_slide_outside_the_roots_does_not_name_them(env: Env) -> None:
    outside = env.root / "elsewhere.svs"
    outside.write_bytes(b"x")
    (g_code, g_msg), (status, answer) = _both(
        env,
        "EmbeddingService",
        "ListEmbeddings",
        {"slide": str(outside)},
        embedding_pb2.ListEmbeddingsRequest,
    )
    assert g_code == grpc.StatusCode.PERMISSION_DENIED and status == 403
    for message in (g_msg, answer["message"]):
        assert "outside the server's slide roots" in message
        assert str(env.root / "slides") not in message.replace(str(outside), "")


def test_status_messages_are_one_bounded_line(tmp_path: Path) -> None:
    # The last guard: whatever a message holds, a client gets one line of at most MAX_MESSAGE
    # characters, and a path under a hidden folder relative to it.
    from histosic.errors import InvalidInputError
    from histosic.service.status import MAX_MESSAGE, hide_paths, status_of

    hide_paths([tmp_path])
    long = InvalidInputError(f"bad file {tmp_path / 'sub' / 'a.svs'}:\n" + "x" * 5000)
    st = status_of(long, rpc="Cluster")
    assert st.code == "INVALID_ARGUMENT"
    assert st.message.startswith("bad file sub/a.svs: xxx") and "\n" not in st.message
    whole = len("bad file sub/a.svs: ") + 5000  # the one line before the cut
    assert len(st.message) <= MAX_MESSAGE
    assert st.message.endswith(f"(message cut, {whole} characters)")
