"""The torchvision ResNets: ImageNet weights (``resnet18``, ``resnet50``) or seeded random ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from histosic.embed.builders.state import (
    clean_state_dict,
    hub_checkpoint,
    load_into,
    torchvision_resnet,
)
from histosic.embed.network import online
from histosic.embed.registry import ALTERNATIVES, RANDOM_SEED, Availability
from histosic.errors import ModelUnavailableError

__all__ = ["availability", "build_pretrained", "build_random", "weights_id"]

_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}


def _weights(kind: str) -> Any:
    import torchvision.models as tvm

    return getattr(tvm, _WEIGHTS[kind]).IMAGENET1K_V1


def weights_id(kind: str, arg: str) -> str:
    return "torchvision:" + Path(_weights(kind).url).name


def availability(kind: str, arg: str) -> Availability:
    url = _weights(kind).url
    cached = hub_checkpoint(Path(url).name)
    if cached.exists():
        return True, f"cached at {cached}"
    if online("download.pytorch.org"):
        return True, f"will download {url}"
    return False, f"weights not cached ({cached}) and no internet to download {url}"


def build_pretrained(kind: str, arg: str) -> nn.Module:
    weights = _weights(kind)
    cached = hub_checkpoint(Path(weights.url).name)
    if not cached.exists() and not online("download.pytorch.org"):
        raise ModelUnavailableError(
            f"{kind}: ImageNet weights are not cached ({cached}) and there is no internet to "
            f"download {weights.url}; copy the file there, or {ALTERNATIVES}"
        )
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except OSError as err:
        raise ModelUnavailableError(
            f"{kind}: cannot get ImageNet weights ({err}); {ALTERNATIVES}"
        ) from err
    model = torchvision_resnet(kind)
    load_into(model, clean_state_dict(state), str(weights.url))
    return model


def build_random(kind: str, arg: str) -> nn.Module:
    # Fork the RNG so a fixed seed gives the same weights without touching the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return torchvision_resnet(kind.removesuffix("-random"))
