"""``histosic serve`` on the documented local install, without torch (no ``histosic[embed]``).

The server process hides torch, torchvision and timm (``sys.modules[name] = None`` makes their
import fail as if not installed). ``ListModels`` must answer with every model, unavailable, saying
what to install (it answered INTERNAL with a ModuleNotFoundError before), and starting an
embedding job must be FAILED_PRECONDITION naming the extra; clustering stays available.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from test_service_support import connect_call, env_without_token, make_slide

_LISTENING = re.compile(r"gRPC on grpc://127\.0\.0\.1:(\d+), Connect on http://127\.0\.0\.1:(\d+)")
HIDDEN = ("torch", "torchvision", "timm")
_NO_TORCH = (
    "import sys\n"
    f"for name in {HIDDEN!r}:\n"
    "    sys.modules[name] = None  # import fails: not installed\n"
    "from histosic.cli import main\n"
    "code = main()\n"
    "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    "sys.exit(code)\n"
)


@pytest.fixture(scope="module")
def http_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("no-torch")
    (root / "store").mkdir()
    (root / "slides").mkdir()
    make_slide(root / "slides" / "s1.png", size=512)
    env = env_without_token()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _NO_TORCH,
            "serve",
            "--port",
            "0",
            "--http-port",
            "0",
            "--store",
            str(root / "store"),
            "--slide-root",
            str(root / "slides"),
            "--device",
            "cpu",
            "--embed-workers",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    port = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = _LISTENING.search(line)
        if m:
            port = int(m.group(2))
            break
    if port is None:
        proc.kill()
        raise AssertionError("server did not start:\n" + "".join(lines))
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_list_models_answers_without_torch(http_port: int) -> None:
    status, body = connect_call(http_port, "EmbeddingService", "ListModels", {})
    assert status == 200, body
    models = {m["name"]: m for m in body["models"]}
    assert {"he-features", "handcrafted", "resnet18", "resnet18-random"} <= set(models)
    assert {"timm:<name>", "checkpoint:<path>"} <= set(models)
    # The numpy backbones' description is there (dimension known without torch) ...
    assert models["he-features"]["dim"] == 54 and models["he-features"]["inputSize"] == 128
    assert models["resnet50"]["dim"] == 2048
    for m in models.values():
        # ... and nothing is usable: the embedding pipeline runs on torch. Says what to install.
        assert not m.get("available", False), m
        assert "pip install 'histosic[embed]'" in m["unavailableReason"], m
    assert "NumPy" in models["he-features"]["unavailableReason"]
    assert "needs torch" in models["resnet18"]["unavailableReason"]


@pytest.mark.parametrize("model", ["he-features", "resnet18-random", "timm:resnet18"])
def test_start_embedding_is_failed_precondition_naming_the_extra(
    http_port: int, model: str
) -> None:
    status, body = connect_call(
        http_port,
        "EmbeddingService",
        "StartEmbedding",
        {"slide": "s1.png", "model": model, "slideMpp": 0.5},
    )
    assert status == 400 and body["code"] == "failed_precondition", body
    assert model in body["message"] and "pip install 'histosic[embed]'" in body["message"]


def test_unknown_model_is_still_invalid_argument(http_port: int) -> None:
    status, body = connect_call(
        http_port, "EmbeddingService", "StartEmbedding", {"slide": "s1.png", "model": "nope"}
    )
    assert status == 400 and body["code"] == "invalid_argument", body
    assert "unknown model 'nope'" in body["message"]
