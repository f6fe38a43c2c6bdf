"""The evaluation run: slides and their truth, cached embeddings, the protocol, the reports.

The only part of the evaluation that embeds (through :mod:`histosic.embed`, imported when an
embedding is missing from the cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from histosic.atomic import write_text_atomic
from histosic.config import DEFAULT_MODEL
from histosic.errors import InvalidInputError, SlideNotFoundError
from histosic.evaluation.protocol import (
    SEED_DRAWS,
    RunRecord,
    Variant,
    run_protocol,
)
from histosic.evaluation.report import (
    draw_overlay,
    paired_comparison,
    plot_f1,
    summarize,
    write_markdown,
)
from histosic.evaluation.truth import load_truth

if TYPE_CHECKING:
    from histosic.cluster import ClusterResult

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def default_cache_dir() -> Path:
    """Where evaluation embeddings are cached: :attr:`histosic.config.Settings.cache_dir`
    (``$HISTOSIC_CACHE``, else the user's cache folder under ``histosic/eval``)."""
    from histosic import config

    return config.current().cache_dir


# --------------------------------------------------------------------------------------------
# Slides, cached embeddings, the whole run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One slide with its ground truth.

    ``truth`` is a mask image, a label image (``labels=True``, e.g. ``*_labels.png`` of
    ``histosic mosaic``) or QuPath GeoJSON; ``mpp`` is needed for plain images without
    resolution metadata (DigestPath: 0.5).
    """

    slide: Path
    truth: Path
    mpp: float | None = None
    labels: bool = False
    positive: str | None = None
    name: str = ""
    relative_to_tissue: bool = True  # label images: 50% of the tissue (True) or of the area

    @property
    def label(self) -> str:
        return self.name or self.slide.stem


@dataclass
class EvalConfig:
    """Settings of :func:`evaluate_cases` (tiling, protocol, outputs)."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    variants: tuple[Variant, ...] = (Variant(preprocess="none"), Variant())
    ks: tuple[int, ...] = (1, 3, 5)
    repeats: int = 5
    target_mpp: float = 0.5
    patch_size: int = 256
    overlap: float = 0.5
    tissue_threshold: float = 0.5
    random_state: int = 0
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    overlay_variant: int = -1  # index into variants of the run drawn in the overlays
    overlay_k: int = 3
    batch_size: int = 32
    device: str = "cpu"
    seed_draw: str = "random"


def cache_path(case: Case, model: str, cfg: EvalConfig) -> Path:
    """Where :func:`embed_cached` keeps the embedding of ``case`` by ``model`` under ``cfg``.

    The name holds a digest of the slide's fingerprint, the model and the tiling, so a changed
    slide or setting gets a new file. An embedding made elsewhere (another backbone, another
    machine) can be evaluated by placing it under this name.
    """
    from histosic.store import file_fingerprint

    if not case.slide.is_file():
        raise SlideNotFoundError(f"slide {case.slide} does not exist")
    key = json.dumps(
        [
            file_fingerprint(case.slide),
            model,
            cfg.target_mpp,
            cfg.patch_size,
            cfg.overlap,
            cfg.tissue_threshold,
            case.mpp,
        ],
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
    return cfg.cache_dir / f"{case.slide.stem}-{safe}-{cfg.patch_size}px-{digest}.h5"


def embed_cached(case: Case, model: str, cfg: EvalConfig) -> Path:
    """Embed a slide once per (slide, model, tiling) into ``cfg.cache_dir``; reuse the file."""
    from histosic.embed.pipeline import embed_slide
    from histosic.tiling import TilingConfig

    out = cache_path(case, model, cfg)
    if out.is_file():
        return out
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    tiling = TilingConfig(
        target_mpp=cfg.target_mpp,
        patch_size=cfg.patch_size,
        overlap=cfg.overlap,
        tissue_threshold=cfg.tissue_threshold,
    )
    t0 = time.perf_counter()
    embed_slide(
        case.slide,
        out,
        model=model,
        tiling=tiling,
        slide_mpp=case.mpp,
        batch_size=cfg.batch_size,
        device=cfg.device,
        workers=0,
    )
    log.info(
        "embedded %s with %s in %.1f s -> %s", case.slide, model, time.perf_counter() - t0, out
    )
    return out


def _thumbnail(case: Case, max_size: int = 1024) -> npt.NDArray[np.uint8]:
    from histosic.outputs.raster import read_thumbnail

    return np.asarray(read_thumbnail(case.slide, max_size, mpp=case.mpp), dtype=np.uint8)


def _truth_region(case: Case) -> npt.NDArray[np.bool_] | None:
    """The positive region at mask resolution (for the overlay outline); None for GeoJSON."""
    if case.truth.suffix.lower() in (".geojson", ".json"):
        return None
    from PIL import Image

    with Image.open(case.truth) as im:
        arr = np.asarray(im if im.mode in ("P", "L") else im.convert("L"))
    return np.asarray(arr == 1 if case.labels else arr > 127, dtype=bool)


def evaluate_cases(
    cases: Sequence[Case],
    cfg: EvalConfig,
    out_dir: str | os.PathLike[str],
    *,
    label_names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Embed (cached), run the protocol for every model and variant, write the reports.

    Writes into ``out_dir``: ``results.json`` (settings, every run, summaries), ``results.md``
    (tables), ``f1_vs_seeds.png`` and ``overlay-<slide>-<model>.png`` per slide and model.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    from histosic.store import read_embeddings

    if not cases:
        raise InvalidInputError("no slides to evaluate; give at least one slide with its truth")
    if cfg.seed_draw not in SEED_DRAWS:
        raise InvalidInputError(
            f"seed draw must be one of {', '.join(SEED_DRAWS)}, got {cfg.seed_draw!r}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[RunRecord] = []
    ratios: dict[str, float] = {}
    slides_info: list[dict[str, Any]] = []
    ov_idx = cfg.overlay_variant % len(cfg.variants)
    for case in cases:
        for model in cfg.models:
            t0 = time.perf_counter()
            path = embed_cached(case, model, cfg)
            emb = read_embeddings(path)
            truth = load_truth(
                case.truth,
                emb.coords,
                emb.meta.patch_size_level0,
                slide_size=(emb.meta.level0_width, emb.meta.level0_height),
                positive=case.positive,
                labels=case.labels,
                label_names=label_names,
                relative_to_tissue=case.relative_to_tissue,
            )
            ratios[case.label] = truth.positive_ratio
            kept: dict[str, Any] = {}

            def keep(
                v: Variant,
                k: int,
                rep: int,
                res: ClusterResult | IntArray,
                seeds: IntArray,
                _kept: dict[str, Any] = kept,
            ) -> None:
                if v == cfg.variants[ov_idx] and k == cfg.overlay_k and rep == 0:
                    labels = res if isinstance(res, np.ndarray) else res.labels
                    _kept["pred"] = (np.asarray(labels) == 1).astype(np.int64)
                    _kept["seeds"] = seeds

            recs = run_protocol(
                emb.features,
                truth,
                cfg.variants,
                ks=cfg.ks,
                repeats=cfg.repeats,
                nuisance=emb.nuisance(),
                grid=emb.grid_index(),
                slide=case.label,
                model=model,
                random_state=cfg.random_state,
                keep=keep,
                seed_draw=cfg.seed_draw,
            )
            records.extend(recs)
            slides_info.append(
                {
                    "slide": str(case.slide),
                    "label": case.label,
                    "truth": str(case.truth),
                    "model": model,
                    "embedding": str(path),
                    "n_patches": emb.n_patches,
                    "positive_ratio": truth.positive_ratio,
                    "seconds": time.perf_counter() - t0,
                }
            )
            log.info(
                "%s / %s: %d patches, positive ratio %.2f, %d runs in %.1f s",
                case.label,
                model,
                emb.n_patches,
                truth.positive_ratio,
                len(recs),
                time.perf_counter() - t0,
            )
            if "pred" in kept:
                try:
                    draw_overlay(
                        _thumbnail(case),
                        emb,
                        kept["pred"],
                        kept["seeds"],
                        _truth_region(case),
                        out / f"overlay-{case.label}-{model}.png",
                        title=f"{case.label} {model} {cfg.variants[ov_idx].name} k={cfg.overlay_k}",
                    )
                except (ImportError, OSError) as err:
                    log.warning("no overlay for %s: %s", case.label, err)
    summaries = summarize(records, ratios)
    paired = paired_comparison(records, cfg.variants[0].name) if len(cfg.variants) > 1 else []
    result: dict[str, Any] = {
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "variants": [v.name for v in cfg.variants],
        },
        "slides": slides_info,
        "summaries": [asdict(s) for s in summaries],
        "paired": paired,
        "runs": [asdict(r) for r in records],
    }
    write_text_atomic(out / "results.json", json.dumps(result, indent=1), overwrite=True)
    write_markdown(summaries, out / "results.md", paired=paired)
    try:
        plot_f1(summaries, out / "f1_vs_seeds.png")
    except ImportError as err:
        log.warning("no plot (matplotlib missing: %s)", err)
    return result
