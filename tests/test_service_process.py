"""``histosic serve`` as a real process: SIGKILL mid-job and restart, SIGTERM, and
``histosic cluster --server``; plus the generated-code freshness check."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_service_support import connect_call, env_without_token, make_embedding, make_slide

from histosic.store import PARTIAL_SUFFIX, file_fingerprint, read_embeddings

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"gRPC on grpc://127\.0\.0\.1:(\d+), Connect on http://127\.0\.0\.1:(\d+)")


class ServeProcess:
    """``histosic serve`` on free ports, started and stopped by the test."""

    def __init__(
        self,
        store: Path,
        slides: Path,
        *extra: str,
        launcher: tuple[str, ...] = ("-m", "histosic"),
    ) -> None:
        """``launcher``: what follows the interpreter (``-c CODE`` runs the CLI another way)."""
        env = env_without_token()
        env["OMP_NUM_THREADS"] = "1"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *launcher,
                "serve",
                "--port",
                "0",
                "--http-port",
                "0",
                "--store",
                str(store),
                "--slide-root",
                str(slides),
                "--device",
                "cpu",
                "--embed-workers",
                "0",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = _LISTENING.search(line)
            if m:
                self.port, self.http_port = int(m.group(1)), int(m.group(2))
                return
        self.proc.kill()
        raise AssertionError("server did not start:\n" + "".join(self.lines))

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        status, out = connect_call(self.http_port, "EmbeddingService", method, body)
        assert status == 200 and isinstance(out, dict), out
        return out

    def wait_progress(self, job_id: str, at_least: int) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.call("GetJob", {"jobId": job_id})["job"]
            assert job["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING"), job
            if int(job.get("patchesDone", 0)) >= at_least:
                return job
            time.sleep(0.05)
        raise AssertionError("no progress")

    def wait_done(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            job = self.call("GetJob", {"jobId": job_id})["job"]
            assert isinstance(job, dict)
            if job["state"] not in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING"):
                return job
            time.sleep(0.2)
        raise AssertionError("job did not finish")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture()
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    store, slides = tmp_path / "store", tmp_path / "slides"
    store.mkdir()
    slides.mkdir()
    make_slide(slides / "big.png", 1536, seed=3)
    yield store, slides


JOB = {
    "slide": "big.png",
    "model": "resnet18-random",
    "tiling": {"targetMpp": 1.0, "patchSize": 64},
    "slideMpp": 0.5,
    "batchSize": 2,
}


@pytest.mark.slow
def test_sigkill_during_job_then_restart(dirs: tuple[Path, Path]) -> None:
    store, slides = dirs
    server = ServeProcess(store, slides)
    try:
        job = server.call("StartEmbedding", JOB)["job"]
        server.wait_progress(job["jobId"], 4)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    finally:
        server.close()
    finals = [p for p in store.iterdir() if p.suffix == ".h5"]
    assert finals == []  # nothing that looks complete
    partials = [p for p in store.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    assert len(partials) <= 1  # a resumable partial file may stay, under its .partial name

    again = ServeProcess(store, slides)
    try:
        assert again.call("ListEmbeddings", {}).get("embeddings", []) == []
        job = again.call("StartEmbedding", JOB)["job"]
        done = again.wait_done(job["jobId"])
        assert done["state"] == "JOB_STATE_SUCCEEDED", done
        emb = read_embeddings(store / done["embeddingId"])
        assert emb.n_patches == int(done["patchesTotal"]) > 0
        assert np.isfinite(emb.features).all()
        assert emb.meta.slide_fingerprint == file_fingerprint(slides / "big.png")
        assert not any(p.name.endswith(PARTIAL_SUFFIX) for p in store.iterdir())
    finally:
        again.close()


@pytest.mark.slow
def test_sigterm_cancels_running_job_cleanly(dirs: tuple[Path, Path]) -> None:
    store, slides = dirs
    server = ServeProcess(store, slides)
    try:
        job = server.call("StartEmbedding", JOB)["job"]
        server.wait_progress(job["jobId"], 2)
        server.proc.send_signal(signal.SIGTERM)
        out, _ = server.proc.communicate(timeout=60)
        assert server.proc.returncode == 0, out
        assert "stopping" in out
    finally:
        server.close()
    assert sorted(p.name for p in store.iterdir()) == []  # cancelled: partial file removed


def test_serve_warns_without_token_on_non_loopback(tmp_path: Path) -> None:
    env = env_without_token()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "histosic",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--http-port",
            "-1",
            "--store",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for _ in range(10):
            line = proc.stdout.readline()
            seen.append(line)
            if "gRPC on" in line:
                break
        text = "".join(seen)
        assert "warning: binding 0.0.0.0 without a token" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_serve_rejects_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "histosic", "serve", "--port", "70000", "--store", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env_without_token(),
        timeout=60,
    )
    assert proc.returncode == 1 and "--port must be in 0..65535" in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "histosic",
            "serve",
            "--port",
            "0",
            "--store",
            str(tmp_path),
            "--slide-root",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
        env=env_without_token(),
        timeout=60,
    )
    assert proc.returncode == 1 and "is not a folder" in proc.stderr


def test_cluster_command_via_server(tmp_path: Path) -> None:
    """``histosic cluster --server``: the server finds its copy by the slide fingerprint."""
    from histosic.service import ServerConfig, create_server

    store, local = tmp_path / "server-store", tmp_path / "local"
    store.mkdir()
    local.mkdir()
    make_embedding(store / "on-server.h5", fingerprint="sha256:shared")
    make_embedding(local / "copy.h5", fingerprint="sha256:shared")
    seeds = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [x, y]},
                "properties": {"objectType": "annotation", "classification": {"name": c}},
            }
            for x, y, c in [(300, 300, "Tumor"), (400, 2000, "Tumor"), (4500, 300, "Stroma")]
        ],
    }
    (local / "seeds.geojson").write_text(json.dumps(seeds))
    server, port = create_server("127.0.0.1:0", ServerConfig(store=store, http_address=None))
    with server:
        cmd = [
            sys.executable,
            "-m",
            "histosic",
            "cluster",
            str(local / "copy.h5"),
            "--seeds",
            str(local / "seeds.geojson"),
            "--out",
            str(local / "out.geojson"),
            "--labels-csv",
            str(local / "labels.csv"),
            "--server",
            f"127.0.0.1:{port}",
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env=env_without_token()
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "server embedding: on-server.h5" in proc.stdout
        out = json.loads((local / "out.geojson").read_text())
        assert len(out["features"]) == 1600
        assert (local / "labels.csv").read_text().count("\n") == 1601
        # Unknown embedding on the server: a clear error and exit code 1.
        missing = [*cmd[:4], "nope.h5", *cmd[5:]]
        missing[missing.index("--labels-csv") : missing.index("--labels-csv") + 2] = []
        missing[missing.index("--out") + 1] = str(local / "out2.geojson")
        proc = subprocess.run(
            missing, capture_output=True, text=True, timeout=120, env=env_without_token()
        )
        assert proc.returncode == 1 and "no embedding" in proc.stderr
        assert not (local / "out2.geojson").exists()


def test_generated_code_is_current(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    diffs = gen.diff_trees(ROOT / "server" / "histosic" / "api" / "v1", tmp_path)
    assert diffs == [], "generated code is stale; run scripts/gen_protos.py:\n" + "".join(
        diffs[:40]
    )


def test_only_service_imports_grpc() -> None:
    code = (
        "import sys, histosic.cluster, histosic.outputs.geojson, histosic.store;"
        "print([m for m in ('grpc', 'connectrpc', 'histosic.api') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert os.path.isdir(ROOT / "server" / "histosic" / "api" / "v1")
