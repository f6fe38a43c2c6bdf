"""``he-features`` and ``handcrafted`` as ``nn.Module``s: thin wrappers of :mod:`histosic.features`.

The features are NumPy code on the CPU; the wrappers let the embedding pipeline (DataLoader,
device, batching) run them like any backbone: input (n, 3, h, w) RGB in [0, 1] (normalisation mean
0, std 1) on any device, output float32 (n, ``DIM``) on the input's device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from histosic.features import handcrafted, hefeatures

__all__ = ["HEFeatures", "HandcraftedFeatures", "build_handcrafted", "build_he_features"]


class HEFeatures(nn.Module):
    """The ``he-features`` backbone: :func:`histosic.features.hefeatures.he_features` of the
    input rounded to ``uint8``."""

    DIM = hefeatures.DIM
    VERSION = hefeatures.VERSION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        arr: Any = rgb.permute(0, 2, 3, 1).cpu().numpy()
        return torch.from_numpy(hefeatures.he_features(arr)).to(x.device)


class HandcraftedFeatures(nn.Module):
    """The ``handcrafted`` backbone: :func:`histosic.features.handcrafted.handcrafted_features`."""

    DIM = handcrafted.DIM
    VERSION = handcrafted.VERSION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr: Any = x.detach().float().permute(0, 2, 3, 1).cpu().numpy()
        return torch.from_numpy(handcrafted.handcrafted_features(arr)).to(x.device)


def build_he_features(kind: str, arg: str) -> nn.Module:
    return HEFeatures()


def build_handcrafted(kind: str, arg: str) -> nn.Module:
    return HandcraftedFeatures()
