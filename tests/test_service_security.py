"""Bearer-token auth on both protocols, slide-root confinement, TLS, and the error mapping."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from test_service_support import (
    connect_call,
    grpc_healthy,
    http_healthy,
    make_embedding,
    make_slide,
    seeds_json,
)

from histosic.api.v1 import clustering_pb2, clustering_pb2_grpc, common_pb2
from histosic.errors import (
    CancelledError,
    EmbeddingNotFoundError,
    InvalidInputError,
    PermissionDeniedError,
    PreconditionError,
    ResourceExhaustedError,
    SlideNotFoundError,
)
from histosic.service import ServerConfig, create_server
from histosic.service.paths import SlideResolver, parse_slide_reference
from histosic.service.server import HistosicServer
from histosic.service.status import UnauthenticatedError, status_of

TOKEN = "s3cret-token"
SEEDS = [(300.0, 300.0, "Tumor"), (4000.0, 4000.0, "Stroma")]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HistosicServer]:
    store = tmp_path_factory.mktemp("secure-store")
    make_embedding(store / "syn.h5")
    server, _ = create_server("127.0.0.1:0", ServerConfig(store=store, token=TOKEN))
    server.start()
    yield server
    server.stop(grace=1.0)


def _cluster(channel: grpc.Channel, metadata: list[tuple[str, str]] | None) -> None:
    stub = clustering_pb2_grpc.ClusteringServiceStub(channel)
    stub.Cluster(
        clustering_pb2.ClusterRequest(
            embedding=common_pb2.EmbeddingRef(embedding_id="syn.h5"),
            seeds=[clustering_pb2.SeedPoint(x=x, y=y, class_name=c) for x, y, c in SEEDS],
            options=clustering_pb2.ClusterOptions(geojson="none"),
        ),
        metadata=metadata,
        timeout=30,
    )


@pytest.mark.parametrize(
    "metadata",
    [None, [("authorization", "Bearer wrong")], [("authorization", TOKEN)]],
    ids=["missing", "wrong", "not-bearer"],
)
def test_grpc_rejects_bad_token(
    secured: HistosicServer, metadata: list[tuple[str, str]] | None
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{secured.port}") as ch:
        with pytest.raises(grpc.RpcError) as err:
            _cluster(ch, metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert grpc_healthy(ch)  # health stays open for probes


def test_grpc_accepts_token(secured: HistosicServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{secured.port}") as ch:
        _cluster(ch, [("authorization", f"Bearer {TOKEN}")])


@pytest.mark.parametrize("token", [None, "wrong"], ids=["missing", "wrong"])
def test_connect_rejects_bad_token(secured: HistosicServer, token: str | None) -> None:
    body = {"embedding": {"embeddingId": "syn.h5"}, "seeds": seeds_json(SEEDS)}
    status, out = connect_call(secured.http_port, "ClusteringService", "Cluster", body, token=token)
    assert status == 401 and out["code"] == "unauthenticated"
    assert http_healthy(secured.http_port)


def test_connect_accepts_token(secured: HistosicServer) -> None:
    body = {
        "embedding": {"embeddingId": "syn.h5"},
        "seeds": seeds_json(SEEDS),
        "options": {"geojson": "none"},
    }
    status, out = connect_call(secured.http_port, "ClusteringService", "Cluster", body, token=TOKEN)
    assert status == 200 and out["classNames"] == ["Stroma", "Tumor"]


@pytest.fixture()
def roots(tmp_path: Path) -> tuple[SlideResolver, Path, Path]:
    inside, outside = tmp_path / "root", tmp_path / "out"
    (inside / "case 1").mkdir(parents=True)
    outside.mkdir()
    make_slide(inside / "case 1" / "a.png", 64)
    make_slide(outside / "b.png", 64)
    (inside / "escape.png").symlink_to(outside / "b.png")
    (inside / "linkdir").symlink_to(outside)
    return SlideResolver([inside]), inside, outside


def test_resolver_accepts_qupath_forms(roots: tuple[SlideResolver, Path, Path]) -> None:
    resolver, inside, _ = roots
    target = (inside / "case 1" / "a.png").resolve()
    for ref in (
        str(target),
        "case 1/a.png",
        target.as_uri(),  # file:///.../case%201/a.png
        f"file:{target}",  # QuPath's own form: file:/path
        "C:\\Users\\me\\slides\\case 1\\a.png",  # a Windows client's path: matched by its tail
        "file:/C:/Users/me/slides/case%201/a.png",
    ):
        assert resolver.resolve(ref) == target, ref


@pytest.mark.parametrize(
    "ref, error",
    [
        ("../out/b.png", PermissionDeniedError),
        ("case 1/../../out/b.png", PermissionDeniedError),
        ("escape.png", PermissionDeniedError),
        ("linkdir/b.png", PermissionDeniedError),
        ("/etc/hostname", PermissionDeniedError),
        ("file:///etc/hostname", PermissionDeniedError),
        ("C:\\data\\..\\b.png", PermissionDeniedError),
        ("nothere.svs", SlideNotFoundError),
        ("", InvalidInputError),
        ("a\x00b", InvalidInputError),
        ("s3://bucket/a.svs", InvalidInputError),
    ],
)
def test_resolver_refuses(
    roots: tuple[SlideResolver, Path, Path], ref: str, error: type[Exception]
) -> None:
    resolver, _, outside = roots
    ref = ref.replace("/out/", f"/{outside.name}/")
    with pytest.raises(error) as err:
        resolver.resolve(ref)
    assert str(err.value)


def test_resolver_without_roots_refuses_everything(tmp_path: Path) -> None:
    make_slide(tmp_path / "a.png", 64)
    with pytest.raises(PermissionDeniedError, match="--slide-root"):
        SlideResolver([]).resolve(str(tmp_path / "a.png"))


def test_parse_reference_flavours() -> None:
    assert parse_slide_reference("file:/C:/x/y.svs") == ("windows", ("x", "y.svs"), True)
    assert parse_slide_reference("file://server/share/a.svs")[0] == "windows"
    assert parse_slide_reference("/data/a.svs") == ("posix", ("data", "a.svs"), True)
    assert parse_slide_reference("rel/a.svs") == ("posix", ("rel", "a.svs"), False)


@pytest.mark.parametrize(
    "exc, code",
    [
        (InvalidInputError("x"), "INVALID_ARGUMENT"),
        (SlideNotFoundError("x"), "NOT_FOUND"),
        (EmbeddingNotFoundError("x"), "NOT_FOUND"),
        (PermissionDeniedError("x"), "PERMISSION_DENIED"),
        (UnauthenticatedError("x"), "UNAUTHENTICATED"),
        (PreconditionError("x"), "FAILED_PRECONDITION"),
        (ResourceExhaustedError("x"), "RESOURCE_EXHAUSTED"),
        (CancelledError("x"), "CANCELLED"),
    ],
)
def test_status_mapping(exc: Exception, code: str) -> None:
    st = status_of(exc)
    assert st.code == code and st.message == "x"


def test_unexpected_error_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise ZeroDivisionError("secret detail")
    except ZeroDivisionError as err:
        with caplog.at_level(logging.ERROR):
            st = status_of(err, rpc="Cluster")
    assert st.code == "INTERNAL" and "secret detail" not in st.message
    assert "Traceback" in caplog.text and "secret detail" in caplog.text


def test_tls_grpc(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    proc = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {proc.stderr.decode()[:200]}")
    store = tmp_path / "store"
    store.mkdir()
    make_embedding(store / "syn.h5")
    server, port = create_server(
        "127.0.0.1:0",
        ServerConfig(store=store, tls_cert=cert, tls_key=key, http_address=None),
    )
    with server:
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", creds) as ch:
            _cluster(ch, None)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, pytest.raises(grpc.RpcError):
            _cluster(plain, None)
