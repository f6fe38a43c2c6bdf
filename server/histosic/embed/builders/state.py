"""What the builders share: safe state-dict loading and cleaning, torchvision ResNets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histosic.embed.registry import ALTERNATIVES
from histosic.errors import CorruptFileError, ModelUnavailableError

__all__ = [
    "clean_state_dict",
    "hub_checkpoint",
    "load_into",
    "load_state_file",
    "resnet_arch",
    "torchvision_resnet",
]

_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "resnet.", "_orig_mod.")
_HEAD_PREFIXES = (
    "fc.",
    "head.",
    "heads.",
    "classifier.",
    "projection",
    "projector.",
    "prototypes.",
)
_RESNET_LAYOUTS: dict[tuple[str, tuple[int, ...]], str] = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


def hub_checkpoint(filename: str) -> Path:
    """Where torch's hub cache keeps a downloaded weights file (``$TORCH_HOME``, read by torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_state_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``, with our errors for a missing or unsafe file."""
    if not path.is_file():
        raise ModelUnavailableError(f"weights file {path} does not exist; {ALTERNATIVES}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CorruptFileError(
            f"{path} is not a state dict that loads with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from err


def clean_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Unwrap and normalise a saved backbone state dict.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}``, strips wrapper prefixes (``module.``,
    ``model.``, ``backbone.``, ``encoder.``, ``resnet.``) and drops classifier or projection heads.
    """
    for key in ("state_dict", "model", "model_state_dict", "teacher", "student"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CorruptFileError(
            f"expected a state dict (a mapping of tensors), got {type(obj).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        k = str(key)
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        if k.startswith(_HEAD_PREFIXES):
            continue
        out[k] = value
    return out


def resnet_arch(state: Mapping[str, torch.Tensor], source: str) -> tuple[str, tuple[int, ...]]:
    """The torchvision ResNet (``resnet18`` ... ``resnet152``) a state dict fits, and its blocks."""
    blocks: list[int] = []
    for layer in range(1, 5):
        idx = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{layer}.")}
        blocks.append(max(idx) + 1 if idx else 0)
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    arch = _RESNET_LAYOUTS.get((block, tuple(blocks)))
    if arch is None or "conv1.weight" not in state:
        raise CorruptFileError(
            f"{source} does not hold a torchvision-style ResNet state dict (found {len(state)} "
            f"tensors, layers {blocks}) nor a timm-style vision transformer (patch_embed.proj, "
            "blocks.N); for other architectures use timm:<name>"
        )
    return arch, tuple(blocks)


def torchvision_resnet(arch: str) -> nn.Module:
    """An untrained torchvision ResNet whose ``fc`` is the identity (global-pool features)."""
    import torchvision.models as tvm

    model: nn.Module = getattr(tvm, arch)(weights=None)
    model.fc = nn.Identity()
    return model


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)``, a mismatch reported as :class:`CorruptFileError`."""
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CorruptFileError(f"weights in {source} do not fit the network: {first}") from err
