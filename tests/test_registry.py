"""The backbone registry without building anything: one table, torch-free, a probe that expires."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from histosic import config
from histosic.config import Settings
from histosic.embed import network, registry
from histosic.embed.network import NetworkProbe
from histosic.errors import ModelUnavailableError, UnknownModelError


class FakeNet:
    """A network whose state the test sets, counting connection attempts, on a fake clock."""

    def __init__(self) -> None:
        self.up = False
        self.now = 1000.0
        self.calls: list[str] = []

    def connect(self, host: str, port: int, timeout: float) -> bool:
        self.calls.append(host)
        return self.up

    def clock(self) -> float:
        return self.now


def test_probe_answer_is_reused_for_the_ttl_then_asked_again() -> None:
    net = FakeNet()
    probe = NetworkProbe(60.0, clock=net.clock, connect=net.connect)
    assert not probe.reachable("github.com")
    net.up = True
    net.now += 59.0
    assert not probe.reachable("github.com")  # remembered
    assert net.calls == ["github.com"]
    assert probe.reachable("huggingface.co")  # another host is its own question
    net.now += 2.0  # 61 s after the first probe
    assert probe.reachable("github.com")
    assert net.calls == ["github.com", "huggingface.co", "github.com"]
    probe.forget()
    assert probe.reachable("github.com") and len(net.calls) == 4


def test_list_models_follows_the_network_on_a_long_running_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Callable[..., Settings]
) -> None:
    """The probe was an lru_cache: ListModels froze its first answer for the server's life."""
    pytest.importorskip("torch")
    settings(offline=False, histossl_weights=None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights (torch reads it)
    net = FakeNet()
    monkeypatch.setattr(
        network, "default_probe", NetworkProbe(clock=net.clock, connect=net.connect)
    )

    def usable() -> dict[str, bool]:
        return {m.name: m.available for m in registry.list_models()}

    first = usable()
    assert not first["resnet18"] and not first["histossl"] and first["he-features"]
    n_probes = len(net.calls)
    # download.pytorch.org, github.com and huggingface.co (the foundation models), once each
    assert n_probes <= 3
    net.up = True
    assert usable() == first and len(net.calls) == n_probes  # within the minute: no new probe
    net.now += network.DEFAULT_TTL + 1
    now = usable()
    assert now["resnet18"] and now["histossl"]
    assert "will download" in registry.get_model_info("histossl").reason
    # online: the ungated foundation models are downloadable (unless HF_HUB_OFFLINE is set)
    import huggingface_hub.constants as hf

    if not hf.HF_HUB_OFFLINE:
        assert now["phikon"] and now["kaiko-vits16"]


def test_offline_setting_never_probes(
    monkeypatch: pytest.MonkeyPatch, settings: Callable[..., Settings]
) -> None:
    net = FakeNet()
    net.up = True
    monkeypatch.setattr(
        network, "default_probe", NetworkProbe(clock=net.clock, connect=net.connect)
    )
    settings(offline=True)
    assert not network.online("github.com")
    assert net.calls == []
    settings(offline=False)
    assert network.online("github.com") and net.calls == ["github.com"]


def test_settings_fixture_restores(settings: Callable[..., Settings]) -> None:
    before = config.current()
    assert settings(offline=not before.offline).offline is not before.offline


def test_one_table_lists_every_family() -> None:
    names = [spec.name for spec in registry.BACKBONES]
    assert len(set(names)) == len(names)
    listed = [m.name for m in registry.list_models()]
    patterns = {"timm": "timm:<name>", "checkpoint": "checkpoint:<path>"}
    assert listed == [patterns.get(n, n) for n in names]
    assert config.DEFAULT_MODEL in names
    for spec in registry.BACKBONES:
        module, _, func = spec.build.partition(":")
        path = Path(registry.__file__).parent / "builders" / f"{module}.py"
        assert path.is_file() and f"def {func}(" in path.read_text(), spec.build


def test_names_dimensions_and_weights_ids_need_no_torch_builder() -> None:
    info = registry.get_model_info("he-features", check=False)
    assert (info.dim, info.input_size) == (54, 128)
    assert registry.get_model_info("handcrafted", check=False).dim == 43
    assert registry.get_model_info("resnet50-random", check=False).dim == 2048
    assert registry.weights_id("he-features") == "he-features:v1"
    assert registry.weights_id("resnet18-random") == "resnet18-random:seed=0"
    assert registry.get_model_info("histossl:/w/x.ckpt", check=False).name == "histossl:/w/x.ckpt"
    for bad in ("nope", "resnet18:x", "he-features:1"):
        with pytest.raises(UnknownModelError, match="unknown model"):
            registry.get_model_info(bad)
    with pytest.raises(UnknownModelError, match="checkpoint: needs a path"):
        registry.get_model_info("checkpoint:")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        registry.get_model_info("checkpoint:/no/such/file.pt")


_HIDE_TORCH = "import sys\nfor m in ('torch', 'torchvision', 'timm'):\n    sys.modules[m] = None\n"


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_registry_imports_without_loading_torch() -> None:
    # (Listing with torch installed does import it: torch knows where its hub cache is.)
    code = (
        "import sys\n"
        "import histosic.embed.registry as r, histosic.features.hefeatures\n"
        "r.get_model_info('he-features', check=False), r.weights_id('he-features')\n"
        "print('torch' in sys.modules)\n"
    )
    assert _run(code) == "False"


def test_without_torch_everything_is_listed_and_loading_names_the_extra() -> None:
    code = _HIDE_TORCH + (
        "from histosic.embed import registry as r\n"
        "from histosic.errors import ModelUnavailableError\n"
        "ms = r.list_models()\n"
        "assert ms and not any(m.available for m in ms), ms\n"
        # foundation models name their own extra, which brings histosic[embed] with it
        "assert all(r.EMBED_EXTRA in m.reason or r.FOUNDATION_EXTRA in m.reason for m in ms), ms\n"
        "for name in ('he-features', 'resnet18', 'timm:resnet18', 'checkpoint:/x.pt'):\n"
        "    try:\n"
        "        r.load_model(name)\n"
        "    except ModelUnavailableError as err:\n"
        "        assert r.EMBED_EXTRA in str(err) and name in str(err), err\n"
        "    else:\n"
        "        raise AssertionError(name)\n"
        "print(r.get_model_info('he-features', check=False).dim)\n"
    )
    assert _run(code) == "54"


def test_models_command_works_without_torch() -> None:
    code = _HIDE_TORCH + ("from histosic.cli import main\nraise SystemExit(main(['models']))\n")
    out = _run(code)
    assert "he-features" in out and "pip install 'histosic[embed]'" in out
    assert "checkpoint:<path>" in out
