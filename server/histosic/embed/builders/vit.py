"""Vision transformers in a user's checkpoint: the timm architecture their tensors imply."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from histosic.errors import CorruptFileError, ModelUnavailableError

__all__ = ["build_vit", "is_vit", "vit_config"]

# Heads by width, as the published ViTs have them (S, B, L, H, g-1408, g-1536).
_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1536: 24}


def is_vit(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a cleaned state dict holds a timm-style vision transformer."""
    return "patch_embed.proj.weight" in state and any(k.startswith("blocks.") for k in state)


def vit_config(state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """timm ``VisionTransformer`` arguments that fit the tensors (strictly loadable).

    Width, patch size, depth, MLP width (plain or packed SwiGLU), class and register tokens,
    position-embedding layout, LayerScale and biases come from the tensors; the number of heads,
    which no tensor shows, from the width as the published ViTs have it (head width 64, ViT-H 80).
    """
    proj = state["patch_embed.proj.weight"]
    if proj.ndim != 4:
        raise CorruptFileError(f"{source}: patch_embed.proj.weight has shape {tuple(proj.shape)}")
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = _HEADS.get(dim, max(1, dim // 64))
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    fc2 = state.get("blocks.0.mlp.fc2.weight")
    if fc1 is None or fc2 is None:
        raise CorruptFileError(f"{source}: a ViT without blocks.0.mlp.fc1/fc2 is not supported")
    hidden, inner = int(fc1.shape[0]), int(fc2.shape[1])
    swiglu = hidden == 2 * inner
    cls = "cls_token" in state
    regs = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    n_pos = int(state["pos_embed"].shape[1]) if "pos_embed" in state else 0
    prefix = int(cls) + regs
    no_embed_class = False
    grid = math.isqrt(max(n_pos - prefix, 0))
    if grid * grid != n_pos - prefix:
        grid, no_embed_class = math.isqrt(n_pos), True
        if grid * grid != n_pos:
            raise CorruptFileError(
                f"{source}: position embedding of {n_pos} tokens fits no square grid"
            )
    kwargs: dict[str, Any] = {
        "img_size": grid * patch,
        "patch_size": patch,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": hidden / dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "class_token": cls,
        "reg_tokens": regs,
        "no_embed_class": no_embed_class,
        "init_values": 1e-5 if "blocks.0.ls1.gamma" in state else None,
        "global_pool": "token" if cls else "avg",
        "fc_norm": "fc_norm.weight" in state,
        "pre_norm": "norm_pre.weight" in state,
        "num_classes": 0,
        "dynamic_img_size": True,
    }
    if swiglu:
        kwargs["swiglu"] = True
    return kwargs


def build_vit(state: Mapping[str, torch.Tensor], source: str) -> tuple[nn.Module, dict[str, Any]]:
    """The ViT the tensors imply, with them loaded strictly."""
    try:
        from timm.layers import SwiGLUPacked  # type: ignore[attr-defined]
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as err:
        raise ModelUnavailableError(
            f"{source} holds a vision transformer, which needs timm (pip install timm)"
        ) from err
    kwargs = vit_config(state, source)
    args = {k: v for k, v in kwargs.items() if k != "swiglu"}
    if kwargs.get("swiglu"):
        args.update(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
    model = VisionTransformer(**args)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:
        first = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = first[1] if len(first) > 1 else first[0]
        raise CorruptFileError(
            f"weights in {source} do not fit the vision transformer they imply "
            f"({kwargs['embed_dim']} wide, {kwargs['depth']} blocks): {detail[:300]}"
        ) from err
    return model, kwargs
