"""``histosic serve`` on the documented local install, without torch (no ``histosic[embed]``).

The server process hides torch, torchvision and timm (``sys.modules[name] = None`` makes their
import fail as if not installed). ``ListModels`` must answer with every model, unavailable, saying
what to install (it answered INTERNAL with a ModuleNotFoundError before), and starting an
embedding job must be FAILED_PRECONDITION naming the extra; clustering stays available.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_service_process import ServeProcess
from test_service_support import connect_call, make_slide

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
    server = ServeProcess(root / "store", root / "slides", launcher=("-c", _NO_TORCH))
    try:
        yield server.http_port
    finally:
        server.close()


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
        # (foundation models name their own extra, which brings histosic[embed] with it)
        extras = ("pip install 'histosic[embed]'", "pip install 'histosic[foundation]'")
        assert any(e in m["unavailableReason"] for e in extras), m
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
