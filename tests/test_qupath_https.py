"""The QuPath cluster script over ``https://``: a server certificate from the user's own CA is
trusted through the JVM's truststore (``-Djavax.net.ssl.trustStore``, as QuPath's JVM options set
it), and without it the script says so in one line.

The server is a real ``histosic serve`` whose Connect port speaks TLS (``--tls-cert``,
``--tls-key``) with a certificate made by ``openssl`` for 127.0.0.1; the script, Java's HttpClient
and its TLS checks are real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from qupath_jars import VERSION_PARAMS, QuPathJars, qupath_jars, run_qupath_script
from test_qupath_cluster_script import POINTS, SCRIPT, check_user_objects_untouched
from test_service_support import make_embedding, make_slide

from histosic.service import ServerConfig, create_server
from histosic.store import file_fingerprint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.qupath_jars,
    pytest.mark.skipif(
        shutil.which("groovy") is None or shutil.which("openssl") is None,
        reason="groovy or openssl is not installed (make test installs groovy on Debian as root)",
    ),
]
JAVA_OPTS = "-XX:TieredStopAtLevel=1 -Xshare:auto -Djava.awt.headless=true"


@pytest.fixture(scope="module", params=VERSION_PARAMS)
def qupath(request: pytest.FixtureRequest) -> QuPathJars:
    return qupath_jars(request.param)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=histosic test CA"]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )
    return cert, key, d


@pytest.fixture()
def served_https(tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> Iterator[tuple[str, Path]]:
    cert, key, _ = tls_files
    root = tmp_path / "slides"
    root.mkdir()
    slide = make_slide(root / "tls.png")
    store = tmp_path / "store"
    store.mkdir()
    make_embedding(store / "tls.h5", fingerprint=file_fingerprint(slide), slide_path=str(slide))
    config = ServerConfig(
        store=store,
        slide_roots=(root,),
        http_address="127.0.0.1:0",
        tls_cert=cert,
        tls_key=key,
    )
    server, _ = create_server("127.0.0.1:0", config)
    server.start()
    try:
        yield f"https://127.0.0.1:{server.http_port}", slide
    finally:
        server.stop(grace=1.0)


def _truststore(qupath: QuPathJars, cert: Path, d: Path) -> Path:
    store = d / f"trust-{qupath.version}.p12"
    if not store.exists():
        subprocess.run(
            [str(qupath.java_home / "bin" / "keytool"), "-importcert", "-noprompt"]
            + ["-alias", "histosic", "-file", str(cert), "-keystore", str(store)]
            + ["-storetype", "PKCS12", "-storepass", "changeit"],
            check=True,
            capture_output=True,
        )
    return store


def test_https_with_the_ca_in_the_jvm_truststore(
    qupath: QuPathJars,
    served_https: tuple[str, Path],
    tls_files: tuple[Path, Path, Path],
    tmp_path: Path,
) -> None:
    url, slide = served_https
    trust = _truststore(qupath, tls_files[0], tls_files[2])
    opts = f"{JAVA_OPTS} -Djavax.net.ssl.trustStore={trust}"
    opts += " -Djavax.net.ssl.trustStorePassword=changeit"
    out = tmp_path / "ok"
    env = {"HISTOSIC_URL": url, "JAVA_OPTS": opts, "HISTOSIC_TOKEN": ""}
    proc = run_qupath_script(qupath, SCRIPT, slide, POINTS, out, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "seeds used 4" in proc.stdout and "(compact cells)" in proc.stdout
    feats = json.loads((out / "hierarchy.geojson").read_text())["features"]
    assert sum(f["properties"]["objectType"] == "tile" for f in feats) == 1600
    check_user_objects_untouched(out)


def test_https_without_the_ca_says_what_to_do(
    qupath: QuPathJars, served_https: tuple[str, Path], tmp_path: Path
) -> None:
    url, slide = served_https
    out = tmp_path / "untrusted"
    env = {"HISTOSIC_URL": url, "JAVA_OPTS": JAVA_OPTS, "HISTOSIC_TOKEN": ""}
    proc = run_qupath_script(qupath, SCRIPT, slide, POINTS, out, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    message = (out / "error.txt").read_text()
    assert "\n" not in message and message.startswith(f"histosic: no TLS connection to {url} (")
    assert "add it to QuPath's Java truststore" in message
    assert (out / "ids-after.txt").read_text() == (out / "ids-before.txt").read_text()
