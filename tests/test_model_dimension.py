"""A model's dimension is known without building its weights (issue 15 item 6).

StartEmbedding checks the model on the request thread (``HistosicApi._check_model`` ->
``registry.check_embeddable``); for ``timm:<name>`` that used to build the whole network (9.5 s
and +1.9 GiB RSS that stayed, for ``timm:vit_large_patch16_224``). Now the network is built on
torch's ``meta`` device: shapes, no storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import json, os, time
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
import torch, timm  # imported first: only the check itself is measured
from histosic.embed.registry import check_embeddable
before = rss()
t = time.perf_counter()
info = check_embeddable('timm:vit_large_patch16_224')
print(json.dumps({'dim': info.dim, 'input': info.input_size,
                  'rss_mib': (rss() - before) / 2**20, 's': time.perf_counter() - t}))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_vit_large_dimension_allocates_no_weights() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "server"), "HISTOSIC_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["dim"] == 1024 and out["input"] == 224
    # ViT-L/16 holds 303 M float32 parameters: 1157 MiB. Building it on the meta device
    # allocates none of them.
    assert out["rss_mib"] < 150, out


def test_timm_networks_are_described_on_the_meta_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from histosic.embed.registry import check_embeddable

    devices: list[Any] = []
    real = timm.create_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        model = real(*args, **kwargs)
        devices.append({p.device.type for p in model.parameters()})
        return model

    monkeypatch.setattr(timm, "create_model", spy)
    info = check_embeddable("timm:vit_large_patch16_224")
    assert info.dim == 1024
    assert devices == [{"meta"}]
