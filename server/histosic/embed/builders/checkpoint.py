"""``checkpoint:<path>``: a user's own state dict (weights_only): a torchvision-style ResNet, or a
timm-style vision transformer (:mod:`histosic.embed.builders.vit` reads its architecture from the
tensors)."""

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
from histosic.embed.builders.vit import build_vit, is_vit, vit_config
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
    state = clean_state_dict(obj)
    size, mean, std, note = checkpoint_input(obj, arg)
    if is_vit(state):
        cfg = vit_config(state, arg)
        img = int(cfg["img_size"]) if not isinstance(obj, dict) or "histosic" not in obj else size
        return ModelInfo(
            f"checkpoint:{arg}",
            int(cfg["embed_dim"]),
            img,
            mean,
            std,
            f"ViT ({cfg['embed_dim']} wide, {cfg['depth']} blocks, patch {cfg['patch_size']}, "
            f"{cfg['global_pool']} pooling) with the user's own weights from {arg}{note}",
        )
    arch, _ = resnet_arch(state, arg)
    dim = 512 if arch in ("resnet18", "resnet34") else 2048
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
    if is_vit(state):
        model, _ = build_vit(state, str(path))
        return model
    arch, _ = resnet_arch(state, str(path))
    model = torchvision_resnet(arch)
    load_into(model, state, str(path))
    return model
