"""Pathology foundation models (:mod:`histosic.embed.foundation`): exact architecture, weights,
pooling.

The architecture is built from the row (timm or ``transformers``) with no weights downloaded by
the library itself; the weights file comes from :mod:`histosic.embed.hub` (``--weights``, the hub
cache, or one download) and is loaded strictly, so a file of another architecture fails with the
first mismatching key. The returned module maps normalised (n, 3, s, s) images to (n, dim)
embeddings with the authors' pooling.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histosic.embed import hub
from histosic.embed.foundation import Foundation, by_name
from histosic.errors import CorruptFileError, ModelUnavailableError

__all__ = ["Pooled", "architecture", "build", "load_weights"]


class Pooled(nn.Module):
    """A backbone and the authors' pooling of its output tokens."""

    def __init__(self, model: nn.Module, loader: str, pool: str, prefix_tokens: int) -> None:
        super().__init__()
        self.model = model
        self.loader = loader
        self.pool = pool
        self.prefix_tokens = prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.loader == "transformers":
            res = self.model(pixel_values=x)
            if self.pool == "pooler":
                pooled: torch.Tensor = res.pooler_output
                return pooled
            tokens: torch.Tensor = res.last_hidden_state
        else:
            tokens = self.model(x)
            if tokens.ndim == 2:  # timm with global_pool="token": the class token already
                return tokens
        if self.pool == "cls+mean":
            return torch.cat([tokens[:, 0], tokens[:, self.prefix_tokens :].mean(1)], dim=-1)
        return tokens[:, 0]


def _timm_kwargs(fm: Foundation) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(fm.kwargs)
    if fm.swiglu:
        from timm.layers import SwiGLUPacked  # type: ignore[attr-defined]

        kwargs.update(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
    return kwargs


def _transformers_config(fm: Foundation, folder: Path | None) -> Any:
    import transformers

    model_cls = getattr(transformers, fm.arch)
    config_cls = model_cls.config_class
    config_file = folder / "config.json" if folder is not None else None
    if config_file is not None and config_file.is_file():
        import json

        try:
            raw = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:
            raise CorruptFileError(f"{config_file} is not JSON ({err})") from err
        if not isinstance(raw, dict):
            raise CorruptFileError(f"{config_file} is not a JSON object")
        raw.pop("auto_map", None)  # remote code is never run
        return config_cls.from_dict(raw)
    return config_cls(**dict(fm.kwargs))


class ConvStem(nn.Module):
    """CTransPath's patch embedding: two stride-2 3x3 convolutions (batch norm, ReLU), then a
    1x1 convolution to ``embed_dim``; a 4x smaller grid of tokens, as Swin's 4x4 patches give.

    Written from the TransPath paper's description of the stem; its parameter names
    (``proj.0`` ... ``proj.6``, ``norm``) are those of the released weights. The arguments are
    the ones ``timm_ctp``'s Swin passes to its ``embed_layer``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Any = None,
        flatten: bool = True,
    ) -> None:
        super().__init__()
        if patch_size != 4 or embed_dim % 8 or in_chans != 3:
            raise ValueError(
                f"the CTransPath stem takes 4 px patches of 3 channels to a width divisible by 8 "
                f"(got patch {patch_size}, {in_chans} channels, width {embed_dim})"
            )
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = flatten
        width = embed_dim // 8
        self.proj = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, embed_dim, kernel_size=1),
        )
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)
        out: torch.Tensor = self.norm(x)
        return out


class AttentionalPooler(nn.Module):
    """CONCH's attentional pooler: learned queries attend, over all heads, to the tokens.

    ``query`` (n_queries, d_model) and the tokens are layer-normed (``ln_q``, ``ln_k``), projected
    without bias (``to_q``; ``to_kv``, keys and values in one), and the attended values are
    projected back (``to_out``): (n, tokens, context_dim) -> (n, n_queries, d_model).
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not divisible by {n_head} heads")
        self.heads = n_head
        self.scale = (d_model // n_head) ** -0.5
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
        q = self.to_q(self.ln_q(self.query)).expand(n, -1, -1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, t.shape[1], self.heads, -1).transpose(1, 2)

        sim = (heads(q) * self.scale) @ heads(k).transpose(-1, -2)
        attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        out = (attn @ heads(v)).transpose(1, 2).reshape(n, q.shape[1], -1)
        pooled: torch.Tensor = self.to_out(out)
        return pooled


class ConchTower(nn.Module):
    """CONCH v1.5's vision tower: a ViT-L/16 trunk, the contrastive pooler, a layer norm.

    The trunk is timm's ``vit_large_patch16_224`` (layer scale 1.0, no head) with the released
    tower's 14 x 14 position table; for other input sizes the table is interpolated as DINO and
    iBOT do it (bicubic, with a scale factor of ``(side / 16 + 0.1) / 14``), which is what the
    released tower computes for 448 px input, not timm's own resampling. Parameter names
    (``trunk``, ``attn_pool_contrast``, ``ln_contrast``) are those of ``pytorch_model_vision.bin``.
    """

    def __init__(self, trunk: Any) -> None:
        super().__init__()
        self.trunk: Any = trunk
        width = int(trunk.embed_dim)
        self.attn_pool_contrast = AttentionalPooler(768, width, n_head=8, n_queries=1)
        self.ln_contrast = nn.LayerNorm(768)

    def _positions(self, h: int, w: int) -> torch.Tensor:
        table: torch.Tensor = self.trunk.pos_embed
        step = int(self.trunk.patch_embed.patch_size[0])
        n = table.shape[1] - 1
        side = math.isqrt(n)
        if (h // step) * (w // step) == n and h == w:
            return table
        grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(
            grid,
            scale_factor=((h // step + 0.1) / side, (w // step + 0.1) / side),
            mode="bicubic",
        )
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])
        return torch.cat([table[:, :1], grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        h, w = x.shape[-2:]
        tokens = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = t.norm_pre(tokens + self._positions(h, w))
        tokens = t.norm(t.blocks(tokens))
        pooled: torch.Tensor = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled


def _conch(fm: Foundation) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = dict(fm.kwargs)
    trunk = timm.create_model(fm.arch, pretrained=False, num_classes=0, **kwargs)
    return ConchTower(trunk)


def _timm_ctp(fm: Foundation) -> nn.Module:
    try:
        with warnings.catch_warnings():  # its torch.jit.script use, at import
            warnings.simplefilter("ignore", FutureWarning)
            import timm_ctp
    except ImportError as err:
        raise ModelUnavailableError(
            f"{fm.name} needs timm-ctp (the authors' timm 0.5.4, installed as timm_ctp beside "
            f"timm), not installed here: {hub.FOUNDATION_EXTRA}"
        ) from err
    # Its constructor calls .item(), which the meta device refuses: built on the CPU (27.5 M
    # parameters), then moved where the caller's default device says.
    device = torch.empty(0).device
    with warnings.catch_warnings(), torch.device("cpu"):  # its meshgrid and jit.script use
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        model: nn.Module = timm_ctp.create_model(
            fm.arch, pretrained=False, num_classes=0, embed_layer=ConvStem, **dict(fm.kwargs)
        )
    return model.to(device) if device.type != "cpu" else model


def architecture(
    fm: Foundation, folder: Path | None = None, img_size: int | None = None
) -> tuple[nn.Module, int]:
    """The untrained network of a row and its number of prefix (class + register) tokens.

    Built on the current default device: under ``torch.device("meta")`` no memory is allocated
    (dimension and parameter checks). ``img_size`` overrides a timm row's (see
    :func:`native_img_size`).
    """
    if fm.loader == "timm_ctp":
        return _timm_ctp(fm), 0
    if fm.loader == "conch":
        return _conch(fm), 1
    if fm.loader == "timm":
        import timm

        kwargs = _timm_kwargs(fm)
        if img_size is not None:
            kwargs["img_size"] = img_size
        model: nn.Module = timm.create_model(fm.arch, pretrained=False, num_classes=0, **kwargs)
        return model, int(getattr(model, "num_prefix_tokens", 1))
    import transformers

    config = _transformers_config(fm, folder)
    model_cls = getattr(transformers, fm.arch)
    kwargs = {"add_pooling_layer": False} if fm.arch == "ViTModel" else {}
    model = model_cls(config, **kwargs)
    prefix = 1 + int(getattr(config, "num_register_tokens", 0))
    return model, prefix


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors or a ``torch.save`` state dict (``weights_only=True``)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise CorruptFileError(
            f"{path} is not a weights file that loads safely ({type(err).__name__}: {first}); "
            "download it again or give another --weights"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise CorruptFileError(f"{path} holds no state dict (a mapping of tensors)")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Drop a base-model prefix (``vit.``, ``dinov2.``) and an unused pooler head."""
    want = set(model.state_dict())
    for prefix in ("vit.", "dinov2.", "module.", "model."):
        if not (set(state) & want) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not (k.startswith("pooler.") and k not in want)}


def _conch_table(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released tower's load: a position table of another grid is resampled to the trunk's
    14 x 14 (timm's ``resample_abs_pos_embed``, bilinear, no antialiasing), as it does."""
    key = "trunk.pos_embed"
    want = model.state_dict()[key]
    have = state.get(key)
    if have is None or have.ndim != 3 or have.shape == want.shape:
        return state
    from timm.layers import resample_abs_pos_embed  # type: ignore[attr-defined]

    grid = tuple(int(g) for g in model.trunk.patch_embed.grid_size)  # type: ignore[union-attr]
    resampled = resample_abs_pos_embed(
        have,
        new_size=grid,
        num_prefix_tokens=1,
        interpolation="bilinear",
        antialias=False,
        verbose=False,
    )
    return {**state, key: resampled}


_DERIVED = (".attn_mask",)  # Swin's shifted-window masks: computed from the input size


def _fit(fm: Foundation, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    state = _strip(state, model)
    if fm.loader == "conch":
        state = _conch_table(model, state)
    misfit = f"weights in {source} do not fit {fm.name} ({fm.arch})"
    if fm.loader == "timm_ctp":
        state = {k: v for k, v in state.items() if not k.endswith(_DERIVED)}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # a shape mismatch
            raise CorruptFileError(f"{misfit}: {_first_detail(err)}") from err
        left = [k for k in missing if not k.endswith(_DERIVED)]
        if left or unexpected:
            raise CorruptFileError(
                f"{misfit}: missing keys {left[:3]}, unexpected keys {unexpected[:3]}"
            )
        return
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CorruptFileError(f"{misfit}: {_first_detail(err)}") from err


def _first_detail(err: RuntimeError) -> str:
    """The first line that names a key of torch's load_state_dict error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[1] if len(lines) > 1 else lines[0])[:300]


def native_img_size(fm: Foundation, state: dict[str, torch.Tensor]) -> int | None:
    """The input side the weights' position table was made for, where it is not the row's.

    Only for timm ViTs built with ``dynamic_img_size`` (they resample the table to any input
    on the fly): built at the weights' own size, a 224 px patch goes through a table of 224 px
    as trained, with no resampling, and the file loads strictly. An example: the hub now names
    Kaiko's ViT-L/14 ``..._reg4_224``, while Trident builds it at 518 px (timm's default for the
    architecture) and resamples the table. None where the sizes agree or the table is not a
    square grid (the strict load then names the mismatch).
    """
    if fm.loader != "timm" or not dict(fm.kwargs).get("dynamic_img_size"):
        return None
    pos = next((v for k, v in state.items() if k.rsplit(".", 1)[-1] == "pos_embed"), None)
    if pos is None or pos.ndim != 3:
        return None
    with torch.device("meta"):
        ref: Any = architecture(fm)[0]
    table = ref.pos_embed
    grid = ref.patch_embed.grid_size
    in_table_prefix = table.shape[1] - grid[0] * grid[1]  # 0 with no_embed_class
    n = pos.shape[1] - in_table_prefix
    side = math.isqrt(max(n, 0))
    if pos.shape[1] == table.shape[1] or n <= 0 or side * side != n:
        return None
    return side * int(ref.patch_embed.patch_size[0])


def build(kind: str, arg: str) -> nn.Module:
    """The model with its weights, pooling included, in eval mode on the CPU."""
    fm = by_name(kind)
    path = hub.locate(fm, arg)
    state = load_weights(path)
    model, prefix = architecture(fm, path.parent, native_img_size(fm, state))
    _fit(fm, model, state, str(path))
    out = Pooled(model, fm.loader, fm.pool, prefix)
    out.eval()
    return out
