"""What runs on the Ray workers: plan a slide, read a batch of patches, embed a batch.

Plain functions and a plain class; :mod:`histosic.embed.ray_run` turns them into Ray tasks and
actors (``ray.remote`` at run time), so this module does not import ray. The reading and the
inference are the single-machine pipeline's own (:func:`~histosic.embed.pipeline.read_patches`,
:class:`~histosic.embed.pipeline._Preprocess`, :func:`~histosic.embed.pipeline.forward`), so a
slide's file is the same whichever way it was made.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from histosic.embed.jpeg_tiles import (
    JpegBatch,
    JpegLevel,
    decode_batch,
    jpeg_level,
    read_jpeg_batch,
    white_fraction_device,
)
from histosic.embed.output_file import (
    existing_state,
    full_meta,
    n_patches,
    no_tissue_error,
    other_output_error,
    output_meta,
)
from histosic.embed.pipeline import (
    _Preprocess,
    _read_size,
    autocast,
    forward,
    prepare_module,
    read_patches,
    resolve_device,
    slide_grid,
)
from histosic.embed.registry import ModelInfo, load_model
from histosic.slides import Slide, TissueConfig, open_slide, white_fraction
from histosic.store import EmbeddingMeta
from histosic.tiling import TilingConfig

__all__ = ["Embedder", "ModelCard", "SlidePlan", "plan_slide", "read_batch", "read_jpeg"]


@dataclass(frozen=True)
class ModelCard:
    """What the driver needs to know of the model the actors hold."""

    model: str
    info: ModelInfo
    weights_hash: str
    device: str
    pid: int


@dataclass(frozen=True)
class SlidePlan:
    """One slide, planned on a CPU worker: its output file and, when it is to be done, its grid.

    ``state`` is 'todo' or 'skipped' (a complete file with the same settings exists).
    """

    slide: str
    path: Path
    state: str
    meta: EmbeddingMeta | None = None
    coords: npt.NDArray[np.int64] | None = None
    tissue_fraction: npt.NDArray[np.float32] | None = None
    size_level0: int = 0
    read_size: int = 0
    mpp: float = 0.0
    backend: str = ""
    n_patches: int = 0
    jpeg: JpegLevel | None = None


def plan_slide(
    slide: str,
    out: str,
    *,
    model: str,
    card: ModelCard,
    tiling: TilingConfig,
    tissue: TissueConfig,
    slide_mpp: float | None,
    overwrite: bool,
    decode: str = "cpu",
) -> SlidePlan:
    """Open a slide, decide skip or do, and compute its tissue grid and file metadata.

    ``decode`` 'device' (or 'auto' with a GPU) looks for JPEG tiles at the read level: the plan
    then carries their layout and the batches go to the actors compressed.

    Raises the pipeline's errors (missing or corrupt slide, no tissue, another file in the way).
    """
    s = open_slide(slide, mpp=slide_mpp)
    try:
        path, base = output_meta(s, Path(out), model, card.info.name, tiling, tissue)
        state = existing_state(path, base, overwrite)
        if state == "same":
            return SlidePlan(slide, path, "skipped", n_patches=n_patches(path))
        if state == "other":
            raise other_output_error(path)
        grid, _ = slide_grid(s, tiling, tissue)
        if len(grid) == 0:
            raise no_tissue_error(s, grid, tiling)
        meta = full_meta(s, base, grid, card.info, card.weights_hash, tiling, card.device)
        device = torch.device(card.device)
        read_size = _read_size(tiling.patch_size, card.info, device)
        jpeg = None
        if decode == "device" or (decode == "auto" and device.type == "cuda"):
            jpeg = jpeg_level(s, s.best_level_for_downsample(grid.patch_size_level0 / read_size))
        return SlidePlan(
            slide=slide,
            path=path,
            state="todo",
            meta=meta,
            coords=grid.coords,
            tissue_fraction=grid.tissue_fraction,
            size_level0=grid.patch_size_level0,
            read_size=read_size,
            mpp=s.mpp,
            backend=s.backend,
            n_patches=len(grid),
            jpeg=jpeg,
        )
    finally:
        s.close()


# A reader process keeps a few slides open: consecutive batches mostly come from the same slide.
_OPEN: OrderedDict[tuple[str, float, str], Slide] = OrderedDict()
_MAX_OPEN = 4


def _slide(path: str, mpp: float, backend: str) -> Slide:
    key = (path, mpp, backend)
    s = _OPEN.get(key)
    if s is None:
        s = open_slide(path, mpp=mpp, backend=backend)
        _OPEN[key] = s
        while len(_OPEN) > _MAX_OPEN:
            _OPEN.popitem(last=False)[1].close()
    _OPEN.move_to_end(key)
    return s


def read_batch(
    path: str,
    mpp: float,
    backend: str,
    coords: npt.NDArray[np.int64],
    size_level0: int,
    read_size: int,
    lo: int,
    hi: int,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Patches ``lo:hi`` of a slide's grid (uint8 NHWC) and their white fractions."""
    patches = read_patches(_slide(path, mpp, backend), coords[lo:hi], size_level0, read_size)
    return patches, white_fraction(patches)


def read_jpeg(
    path: str,
    mpp: float,
    backend: str,
    coords: npt.NDArray[np.int64],
    size_level0: int,
    read_size: int,
    lo: int,
    hi: int,
    layout: JpegLevel,
) -> JpegBatch:
    """The compressed tiles of patches ``lo:hi`` (no decoding: the actor does it)."""
    return read_jpeg_batch(
        _slide(path, mpp, backend), coords[lo:hi], size_level0, read_size, layout
    )


class Embedder:
    """An inference actor: the model loaded once, then ``embed`` batch after batch.

    Parameters
    ----------
    model : str
        A registry name.
    device : str
        'cpu' or 'cuda' (on a Ray GPU worker, 'cuda' is the GPU Ray assigned).
    threads : int
        Torch threads on the CPU (the CPUs the actor holds).
    """

    def __init__(self, model: str, device: str, threads: int) -> None:
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        self.loaded = load_model(model)
        self.model = model
        self.module = prepare_module(self.loaded, self.device)
        self.prep = _Preprocess(self.loaded, self.device)

    def card(self) -> ModelCard:
        return ModelCard(
            self.model, self.loaded.info, self.loaded.weights_hash, str(self.device), os.getpid()
        )

    def embed(self, patches: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Features (b, dim), float32, of a uint8 NHWC batch."""
        # Arrays from Ray's object store are read-only views; torch wants writable memory.
        batch = torch.from_numpy(np.require(patches, requirements="W"))
        with torch.inference_mode(), autocast(self.device, self.loaded.info.precision):
            feats = forward(self.module, self.prep, batch)
        out: npt.NDArray[np.float32] = feats.cpu().numpy()
        return out

    def embed_jpeg(
        self, batch: JpegBatch
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Decode a batch's JPEG tiles on this actor's device, then embed: (features, white)."""
        with torch.inference_mode():
            patches = decode_batch(batch, self.device)
            white = white_fraction_device(patches).cpu().numpy()
            with autocast(self.device, self.loaded.info.precision):
                feats = forward(self.module, self.prep, patches)
        out: npt.NDArray[np.float32] = feats.cpu().numpy()
        return out, white
