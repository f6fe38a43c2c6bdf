"""``timm:<name>``: a timm model with its pretrained weights (Hugging Face hub cache)."""

from __future__ import annotations

from typing import Any

from torch import nn

from histosic.embed.network import online
from histosic.embed.registry import ALTERNATIVES, Availability, ModelInfo
from histosic.errors import ModelUnavailableError, UnknownModelError

__all__ = ["availability", "build", "cached_file", "create", "describe"]


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise ModelUnavailableError("timm: needs the timm package (pip install timm)") from err
    return timm


def describe(kind: str, arg: str) -> ModelInfo:
    """Dimension, input size and normalisation from timm's model and data config."""
    try:
        import timm
    except ImportError as err:
        raise ModelUnavailableError(
            f"timm:{arg} needs the timm package (pip install timm)"
        ) from err
    if not arg or not timm.is_model(arg):
        raise UnknownModelError(
            f"timm has no model {arg!r}; see timm.list_models() for names (e.g. timm:resnet50)"
        )
    model = timm.create_model(arg, pretrained=False, num_classes=0)
    from timm.data import resolve_model_data_config  # type: ignore[attr-defined]

    cfg: dict[str, Any] = resolve_model_data_config(model)  # type: ignore[no-untyped-call]
    size = int(cfg["input_size"][-1])
    m0, m1, m2 = (float(v) for v in cfg["mean"])
    s0, s1, s2 = (float(v) for v in cfg["std"])
    dim = int(getattr(model, "num_features", 0))
    return ModelInfo(
        f"timm:{arg}",
        dim,
        size,
        (m0, m1, m2),
        (s0, s1, s2),
        f"timm model {arg} with its pretrained weights",
    )


def availability(kind: str, arg: str) -> Availability:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False, "timm is not installed (pip install timm)"
    if not arg:
        return True, "any timm model name; pretrained weights from the hub"
    if online("huggingface.co"):
        return True, "pretrained weights from the Hugging Face hub (cached after first use)"
    hub_file = cached_file(arg)
    if hub_file is None:
        return False, "no internet and the weights are not in the Hugging Face cache"
    return True, f"cached at {hub_file}"


def cached_file(arg: str) -> str | None:
    """The timm model's pretrained weights in the local Hugging Face cache, if there."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arg)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, filename)
        if isinstance(hit, str):
            return hit
    return None


def create(arg: str, *, pretrained: bool) -> nn.Module:
    """``timm.create_model(arg, num_classes=0)``; offline, pretrained weights from the cache."""
    timm = _timm()
    kwargs: dict[str, Any] = {}
    if pretrained and not online("huggingface.co"):
        # Offline, the hub client would retry for about a minute before failing; use the cache
        # directly or fail at once.
        cached = cached_file(arg)
        if cached is None:
            raise ModelUnavailableError(
                f"timm:{arg}: no internet and its weights are not in the Hugging Face cache; "
                f"{ALTERNATIVES}"
            )
        kwargs["pretrained_cfg_overlay"] = {"file": cached}
    try:
        model: nn.Module = timm.create_model(arg, pretrained=pretrained, num_classes=0, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelUnavailableError(
            f"timm:{arg}: cannot get pretrained weights ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); {ALTERNATIVES}"
        ) from err
    return model


def build(kind: str, arg: str) -> nn.Module:
    return create(arg, pretrained=True)
