"""Patch embeddings with PyTorch backbones: the only package of histosic that imports torch.

:func:`embed_slide` turns a slide into an HDF5 embedding file; :func:`list_models` describes the
backbones (see :mod:`histosic.embed.models`).
"""

from __future__ import annotations

from histosic.embed.models import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelInfo,
    get_model_info,
    list_models,
    load_model,
    weights_id,
)
from histosic.embed.pipeline import (
    default_workers,
    embed_slide,
    embedding_filename,
    read_patches,
    resolve_device,
    slide_grid,
)

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelInfo",
    "default_workers",
    "embed_slide",
    "embedding_filename",
    "get_model_info",
    "list_models",
    "load_model",
    "read_patches",
    "resolve_device",
    "slide_grid",
    "weights_id",
]
