"""``timm:<name>``: a timm model with its pretrained weights (Hugging Face hub cache).

``<name>`` is any timm model name, or a model on the hub as timm spells it
(``timm:hf-hub:bioptimus/H-optimus-0``): its ``config.json`` (architecture, model arguments,
pretrained config) is read from the hub cache or downloaded once, so a filled cache works offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from histosic.embed.network import online
from histosic.embed.registry import ALTERNATIVES, Availability, ModelInfo
from histosic.errors import CorruptFileError, ModelUnavailableError, UnknownModelError

__all__ = ["availability", "build", "cached_file", "create", "describe"]


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise ModelUnavailableError("timm: needs the timm package (pip install timm)") from err
    return timm


_HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def _hub_repo(arg: str) -> str | None:
    """The repository of ``hf-hub:org/name`` (timm's spelling for a model on the hub), or None."""
    for prefix in _HUB_PREFIXES:
        if arg.startswith(prefix):
            return arg[len(prefix) :]
    return None


def _hub_config(repo: str) -> dict[str, Any]:
    """timm's ``config.json`` of a hub model: from the cache, else one download (when online)."""
    import json

    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    hit = try_to_load_from_cache(repo, "config.json")
    if not isinstance(hit, str):
        if not online("huggingface.co"):
            raise ModelUnavailableError(
                f"timm:hf-hub:{repo}: no internet and its config.json is not in the Hugging Face "
                f"cache; {ALTERNATIVES}"
            )
        try:
            hit = hf_hub_download(repo, "config.json")
        except Exception as err:  # the hub client's errors: gated, missing, HTTP
            raise ModelUnavailableError(
                f"timm:hf-hub:{repo}: cannot get its config.json ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); gated models need access on "
                "the model page and HF_TOKEN"
            ) from err
    try:
        cfg = json.loads(Path(hit).read_text())
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"{hit} is not timm's JSON config ({err})") from err
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise CorruptFileError(f"{hit} names no timm architecture")
    return cfg


def _hub_build_args(repo: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, model kwargs, pretrained cfg) of a timm model on the hub."""
    cfg = _hub_config(repo)
    kwargs = dict(cfg.get("model_args") or {})
    pretrained = dict(cfg.get("pretrained_cfg") or {})
    return str(cfg["architecture"]), kwargs, pretrained


def _network(arg: str) -> nn.Module:
    """The untrained network on the current default device (``meta``: no memory)."""
    timm = _timm()
    repo = _hub_repo(arg)
    if repo is not None:
        arch, kwargs, pretrained = _hub_build_args(repo)
        kwargs.setdefault("num_classes", 0)
        kwargs["num_classes"] = 0
        model: nn.Module = timm.create_model(
            arch, pretrained=False, pretrained_cfg_overlay=pretrained, **kwargs
        )
        return model
    if not timm.is_model(arg):
        raise UnknownModelError(
            f"timm has no model {arg!r}; see timm.list_models() for names (e.g. timm:resnet50), "
            "or give a hub model as timm:hf-hub:<org>/<name>"
        )
    model = timm.create_model(arg, pretrained=False, num_classes=0)
    return model


def describe(kind: str, arg: str) -> ModelInfo:
    """Dimension, input size and normalisation from timm's model and data config.

    The network is built on the ``meta`` device: no weights are allocated (a ViT-L costs well
    under a second and no memory), so a server learns a model's dimension on its request thread.
    """
    import torch

    _timm()
    with torch.device("meta"):
        model = _network(arg)
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

    hub_id = _hub_repo(arg)
    if hub_id is None:
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
        repo = _hub_repo(arg)
        if repo is not None:
            arch, model_args, hub_cfg = _hub_build_args(repo)
            model_args["num_classes"] = 0
            overlay = {**hub_cfg, **kwargs.get("pretrained_cfg_overlay", {})}
            if pretrained and "file" not in overlay:
                overlay["hf_hub_id"] = repo
            model: nn.Module = timm.create_model(
                arch, pretrained=pretrained, pretrained_cfg_overlay=overlay, **model_args
            )
        else:
            model = timm.create_model(arg, pretrained=pretrained, num_classes=0, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelUnavailableError(
            f"timm:{arg}: cannot get pretrained weights ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); {ALTERNATIVES}"
        ) from err
    return model


def build(kind: str, arg: str) -> nn.Module:
    return create(arg, pretrained=True)
