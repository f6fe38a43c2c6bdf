"""``histossl``: the self-supervised histology ResNet-18 of Ciga, Xu & Martel (2022)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from histosic import config
from histosic.embed.builders.state import (
    clean_state_dict,
    hub_checkpoint,
    load_into,
    load_state_file,
    torchvision_resnet,
)
from histosic.embed.network import online
from histosic.embed.registry import ALTERNATIVES, HISTOSSL_URL, Availability
from histosic.errors import ModelUnavailableError

__all__ = ["availability", "build", "local_path", "remap_histossl_state_dict"]


def local_path(arg: str) -> Path | None:
    """A local HistoSSL file: the one named, the settings' (``$HISTOSIC_HISTOSSL_WEIGHTS``), or
    the hub cache's."""
    if arg:
        return Path(arg).expanduser()
    configured = config.current().histossl_weights
    if configured is not None:
        return configured.expanduser()
    cached = hub_checkpoint(Path(HISTOSSL_URL).name)
    return cached if cached.exists() else None


def availability(kind: str, arg: str) -> Availability:
    path = local_path(arg)
    if path is not None:
        if path.is_file():
            return True, f"local file {path}"
        return False, f"weights file {path} does not exist"
    if online("github.com"):
        return True, f"will download {HISTOSSL_URL}"
    return False, (
        f"weights not found (set $HISTOSIC_HISTOSSL_WEIGHTS to a copy of "
        f"{Path(HISTOSSL_URL).name}) and no internet to download them"
    )


def remap_histossl_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Keys of the Ciga et al. checkpoint to torchvision ResNet-18 keys.

    The release stores ``{'state_dict': {'model.resnet.conv1.weight': ...,
    'model.resnet.fc.1.weight': ...}}``: a torchvision ResNet-18 under ``model.resnet.`` whose
    ``fc`` is the SimCLR projection head (``fc.1``, ``fc.3``), which is dropped.
    """
    return clean_state_dict(obj)


def _download() -> Path:
    target = hub_checkpoint(Path(HISTOSSL_URL).name)
    if not online("github.com"):
        raise ModelUnavailableError(
            f"histossl: no local weights and no internet to download {HISTOSSL_URL}; download it "
            f"elsewhere and set $HISTOSIC_HISTOSSL_WEIGHTS to the file, or {ALTERNATIVES}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(HISTOSSL_URL, str(target), progress=False)
    except OSError as err:
        raise ModelUnavailableError(
            f"histossl: download of {HISTOSSL_URL} failed ({err}); {ALTERNATIVES}"
        ) from err
    return target


def build(kind: str, arg: str) -> nn.Module:
    path = local_path(arg) or _download()
    state = remap_histossl_state_dict(load_state_file(path))
    model = torchvision_resnet("resnet18")
    load_into(model, state, str(path))
    return model
