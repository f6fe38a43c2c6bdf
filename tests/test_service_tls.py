"""HTTPS on the Connect port with the gRPC port's certificate (issue 15, item 11).

A self-signed certificate made in the test (openssl), a real server on free ports, and real
clients: urllib and curl over HTTPS, ``histosic cluster --server https://...`` and
``grpcs://...`` with ``--tls-ca``, and the refusals (plain HTTP to the TLS port, an untrusted
certificate).
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_service_support import make_embedding, seeds_json

from histosic.service import ServerConfig, create_server
from histosic.service.server import HistosicServer

SEEDS = [(300.0, 300.0, "Tumor"), (400.0, 2000.0, "Tumor"), (4500.0, 300.0, "Stroma")]


@dataclass
class Env:
    server: HistosicServer
    port: int
    http_port: int
    cert: Path
    store: Path
    root: Path


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")
    proc = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {proc.stderr.decode()[:200]}")
    return key, cert


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("tls")
    key, cert = _self_signed(root)
    store = root / "store"
    store.mkdir()
    make_embedding(store / "syn.h5")
    config = ServerConfig(
        store=store, tls_cert=cert, tls_key=key, http_address="127.0.0.1:0", token="s3cret"
    )
    server, port = create_server("127.0.0.1:0", config)
    server.start()
    try:
        yield Env(server, port, server.http_port, cert, store, root)
    finally:
        server.stop(grace=2.0)


def _cluster_body() -> bytes:
    return json.dumps({"embedding": {"embeddingId": "syn.h5"}, "seeds": seeds_json(SEEDS)}).encode()


def _post(env: Env, context: ssl.SSLContext, token: str = "s3cret") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"https://127.0.0.1:{env.http_port}/histosic.v1.ClusteringService/Cluster",
        data=_cluster_body(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_https_with_the_ca_clusters(env: Env) -> None:
    assert env.server.http_scheme == "https"
    context = ssl.create_default_context(cafile=str(env.cert))
    with urllib.request.urlopen(
        f"https://127.0.0.1:{env.http_port}/healthz", timeout=10, context=context
    ) as resp:
        assert json.loads(resp.read()) == {"status": "SERVING"}
    status, body = _post(env, context)
    assert status == 200, body
    assert set(body["classNames"]) == {"Tumor", "Stroma"}
    # The token still counts over TLS.
    status, body = _post(env, context, token="wrong")
    assert status == 401 and body["code"] == "unauthenticated"


def test_plain_http_to_the_tls_port_gets_nothing_useful(env: Env) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.http_port, timeout=10)
    try:
        conn.request("POST", "/histosic.v1.ClusteringService/Cluster", body=_cluster_body())
        resp = conn.getresponse()
        status = resp.status
        resp.read()
    except (ConnectionError, http.client.HTTPException, OSError):
        status = 0  # the TLS server closed the cleartext connection
    finally:
        conn.close()
    assert status != 200


def test_untrusted_certificate_is_refused(env: Env) -> None:
    with pytest.raises(urllib.error.URLError) as err:
        _post(env, ssl.create_default_context())
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)


def test_curl_with_cacert(env: Env) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl here")
    proc = subprocess.run(
        [curl, "-sS", "--fail-with-body", "--cacert", str(env.cert)]
        + ["-H", "Content-Type: application/json", "-H", "Authorization: Bearer s3cret"]
        + ["--data-binary", _cluster_body().decode()]
        + [f"https://localhost:{env.http_port}/histosic.v1.ClusteringService/Cluster"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["embeddingId"] == "syn.h5"


def _seed_file(folder: Path) -> Path:
    path = folder / "seeds.geojson"
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [x, y]},
            "properties": {"objectType": "annotation", "classification": {"name": c}},
        }
        for x, y, c in SEEDS
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_cli_client_with_tls_ca(
    env: Env,
    scheme: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from histosic.cli import main

    monkeypatch.setenv("HISTOSIC_TOKEN", "s3cret")
    port = env.http_port if scheme == "https" else env.port
    out = env.root / f"out-{scheme}.geojson"
    args = ["cluster", "syn.h5", "--seeds", str(_seed_file(env.root)), "--out", str(out)]
    args += ["--server", f"{scheme}://localhost:{port}"]
    code = main([*args, "--tls-ca", str(env.cert)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(json.loads(out.read_text())["features"]) == 1600
    # Without the CA the server's self-signed certificate is not trusted: one line, exit 1.
    out.unlink()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert err.count("\n") == 1 and "histosic cluster: error:" in err, err


def test_serve_flags_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from histosic.cli import main

    monkeypatch.delenv("HISTOSIC_TOKEN", raising=False)
    base = ["serve", "--port", "0", "--http-port", "0", "--store", str(tmp_path)]
    base += ["--slide-root", str(tmp_path)]
    cases = {
        "--tls-cert": (
            ["--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "k.pem")],
            "cannot read the TLS",
        ),
        "--shutdown-grace": (["--shutdown-grace", "-1"], "--shutdown-grace must be between 0"),
        "--max-patches-per-job": (["--max-patches-per-job", "0"], "must be at least 1"),
    }
    for flags, message in cases.values():
        capsys.readouterr()
        assert main([*base, *flags]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
