"""The output file of one slide: its name, its settings, what an existing file means.

Shared by the single-machine pipeline (:mod:`histosic.embed.pipeline`) and the Ray driver
(:mod:`histosic.embed.ray_run`), so that both write exactly the same file for a slide. Torch-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from histosic.embed.registry import ModelInfo, weights_id
from histosic.errors import HistosicError, NoTissueError, OutputExistsError
from histosic.slides import Slide, TissueConfig
from histosic.store import EmbeddingMeta, file_fingerprint, read_meta
from histosic.tiling import PatchGrid, TilingConfig

__all__ = [
    "embedding_filename",
    "existing_state",
    "full_meta",
    "n_patches",
    "no_tissue_error",
    "other_output_error",
    "output_meta",
]

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.") or "x"


def embedding_filename(
    slide_path: str | os.PathLike[str],
    model: str,
    tiling: TilingConfig = TilingConfig(),  # noqa: B008 - frozen dataclass
) -> str:
    """Deterministic, filesystem-safe name of the embedding file of a slide, model and tiling.

    ``<slide stem>.<model>.<mpp>mpp-<size>px-ov<overlap>-t<threshold>.h5``; a model that names a
    file (``checkpoint:<path>``) gets the file's stem and a short hash of its path.
    """
    kind, _, arg = model.partition(":")
    if arg:
        digest = hashlib.sha256(arg.encode()).hexdigest()[:8]
        model_part = _slug(f"{kind}-{Path(arg).stem}" if kind != "timm" else f"timm-{arg}")
        if kind != "timm":
            model_part += f"-{digest}"
    else:
        model_part = _slug(model)
    stem = _slug(Path(slide_path).stem)
    tiling_part = (
        f"{tiling.target_mpp:g}mpp-{tiling.patch_size}px"
        f"-ov{tiling.overlap:g}-t{tiling.tissue_threshold:g}"
    )
    return f"{stem}.{model_part}.{_slug(tiling_part)}.h5"


def _existing(path: Path, meta: EmbeddingMeta) -> str:
    """'same', 'other' (settings or slide differ) or 'unreadable' for an existing output file."""
    try:
        existing = read_meta(path)
    except HistosicError as err:
        log.warning("existing %s is unreadable (%s); it will be replaced", path, err)
        return "unreadable"
    same = json.dumps(existing.settings_key(), sort_keys=True) == json.dumps(
        meta.settings_key(), sort_keys=True
    )
    return "same" if same else "other"


def output_meta(
    slide: Slide,
    out: Path,
    model: str,
    model_name: str,
    tiling: TilingConfig,
    tissue: TissueConfig,
) -> tuple[Path, EmbeddingMeta]:
    """The output file of a slide (``out`` itself when it names an .h5 file) and its settings."""
    from histosic.tiling import patch_size_level0, stride_level0

    if out.suffix.lower() in (".h5", ".hdf5"):
        path = out
    else:
        path = out / embedding_filename(slide.path, model, tiling)
    w, h = slide.dimensions
    return path, EmbeddingMeta(
        slide_path=str(slide.path.resolve()),
        slide_fingerprint=file_fingerprint(slide.path),
        level0_width=w,
        level0_height=h,
        mpp=slide.mpp,
        target_mpp=tiling.target_mpp,
        patch_size=tiling.patch_size,
        patch_size_level0=patch_size_level0(tiling, slide.mpp),
        stride_level0=stride_level0(tiling, slide.mpp),
        overlap=tiling.overlap,
        model=model_name,
        weights_hash=weights_id(model),
        tissue_method=tissue.name,
        tissue_threshold=tiling.tissue_threshold,
    )


def existing_state(path: Path, meta: EmbeddingMeta, overwrite: bool) -> str:
    """'absent', 'same', 'other' or 'unreadable': what to do with an existing output file."""
    return _existing(path, meta) if path.exists() and not overwrite else "absent"


def other_output_error(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{path} exists but was made from another slide file or other settings; pass "
        "--overwrite (overwrite=True) to replace it, or choose another --out"
    )


def no_tissue_error(slide: Slide, grid: PatchGrid, tiling: TilingConfig) -> NoTissueError:
    return NoTissueError(
        f"no tissue patch in {slide.path}: none of the {grid.n_candidates} patches of "
        f"{tiling.patch_size} px at {tiling.target_mpp:g} um/px reaches tissue fraction "
        f"{tiling.tissue_threshold:g}; lower --tissue-threshold (0 keeps every patch), check "
        "--slide-mpp, or check that the slide holds stained tissue"
    )


def full_meta(
    slide: Slide,
    base_meta: EmbeddingMeta,
    grid: PatchGrid,
    info: ModelInfo,
    weights_hash: str,
    tiling: TilingConfig,
    device: str,
) -> EmbeddingMeta:
    """The metadata written into the file: the settings plus preprocessing and provenance."""
    preprocessing = {
        "input_size": info.input_size,
        "mean": list(info.mean),
        "std": list(info.std),
        "resize": f"bilinear {tiling.patch_size} px -> {info.crop_from or info.input_size} px"
        + (f", centre crop {info.input_size} px" if info.crop_from else ""),
        "precision": info.precision,
        "white_level": 220,
    }
    extra = {
        "reader": slide.backend,
        "mpp_source": slide.mpp_source,
        "read_level": slide.best_level_for_downsample(grid.patch_size_level0 / info.input_size),
        "n_candidates": grid.n_candidates,
        "device": device,
        "model_description": info.description,
    }
    return dataclasses.replace(
        base_meta,
        weights_hash=weights_hash,
        preprocessing=json.dumps(preprocessing, sort_keys=True),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        extra=extra,
    )


def n_patches(path: Path) -> int:
    """Number of patches in a complete embedding file (reads only the coords shape)."""
    import h5py

    with h5py.File(path, "r") as f:
        return int(f["coords"].shape[0])
