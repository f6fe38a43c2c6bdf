"""``checkpoint:<path>``: a user's own torchvision-style ResNet state dict (weights_only)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from histosic.embed.builders.state import (
    clean_state_dict,
    load_into,
    load_state_file,
    resnet_arch,
    torchvision_resnet,
)
from histosic.embed.registry import ModelInfo, checkpoint_input
from histosic.errors import ModelUnavailableError

__all__ = ["build", "describe"]


def describe(kind: str, arg: str) -> ModelInfo:
    """Architecture, dimension and input (the ``histosic`` entry of a pretrain checkpoint)."""
    path = Path(arg).expanduser()
    if not path.is_file():
        raise ModelUnavailableError(
            f"checkpoint file {path} does not exist; give the path of a saved state dict, or "
            "use 'handcrafted' or 'resnet18-random'"
        )
    obj = load_state_file(path)
    arch, _ = resnet_arch(clean_state_dict(obj), arg)
    dim = 512 if arch in ("resnet18", "resnet34") else 2048
    size, mean, std, note = checkpoint_input(obj, arg)
    return ModelInfo(
        f"checkpoint:{arg}",
        dim,
        size,
        mean,
        std,
        f"{arch} with the user's own weights from {arg}{note}",
    )


def build(kind: str, arg: str) -> nn.Module:
    path = Path(arg).expanduser()
    state = clean_state_dict(load_state_file(path))
    arch, _ = resnet_arch(state, str(path))
    model = torchvision_resnet(arch)
    load_into(model, state, str(path))
    return model
