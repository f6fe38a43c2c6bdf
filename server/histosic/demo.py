"""``histosic demo``: the product's main job end to end, offline, in a few minutes.

Slide with ground truth -> patch embeddings -> a few seed points placed like a pathologist would
(well inside the lesion, and on tissue well away from it) -> clustering -> QuPath GeoJSON, an
overlay PNG, a colour-view PNG and GeoJSON, and the F1 against the ground truth.

The slide is the DigestPath image (the paper's dataset) when it can be found (``data_dir``,
``$HISTOSIC_DEMO_DATA`` or ``<repo>/../shared/data``), otherwise a generated slide made for the
purpose (:func:`make_demo_slide`), so the demo runs anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from histosic.config import DEFAULT_MODEL
from histosic.errors import InvalidInputError

__all__ = [
    "DemoReport",
    "find_demo_data",
    "make_demo_slide",
    "pick_seed_points",
    "run_demo",
]

log = logging.getLogger(__name__)

POSITIVE_NAME = "Tumor"
NEGATIVE_NAME = "Stroma"


@dataclass
class DemoReport:
    """What the demo did and where it wrote."""

    slide: Path
    truth: Path
    source: str  # "digestpath" or "generated"
    model: str
    method: str
    n_patches: int
    f1: float
    precision: float
    recall: float
    paper_f1: float  # the paper's SIC on raw features, same seeds
    all_positive_f1: float
    seconds: float
    outputs: dict[str, Path] = field(default_factory=dict)

    def text(self) -> str:
        lines = [
            f"slide: {self.slide} ({self.source}), {self.n_patches} tissue patches, "
            f"model {self.model}",
            f"F1 against the ground truth: {self.f1:.3f} (precision {self.precision:.3f}, "
            f"recall {self.recall:.3f}) with method {self.method!r}",
            f"  the paper's SIC on raw features, same seeds: {self.paper_f1:.3f}; "
            f"every patch called tumour: {self.all_positive_f1:.3f}",
            f"time: {self.seconds:.1f} s",
            "outputs:",
        ]
        lines += [f"  {name:<16} {path}" for name, path in self.outputs.items()]
        return "\n".join(lines)


def find_demo_data(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path] | None:
    """The DigestPath image and its mask, or None when not found.

    Looks in ``data_dir``, then the configured demo data (``$HISTOSIC_DEMO_DATA``), then the
    shared data folder (``$HISTOSIC_DATA`` or ``<repo>/../shared/data``); each may be the data
    folder itself or its ``digestpath`` subfolder.
    """
    from histosic import config

    settings = config.current()
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    if settings.demo_data is not None:
        roots.append(settings.demo_data)
    roots.append(settings.data_dir)
    for root in roots:
        for d in (root / "digestpath", root):
            img, mask = d / "0.jpg", d / "0_mask.jpg"
            if img.is_file() and mask.is_file():
                return img, mask
    return None


def make_demo_slide(
    out: str | os.PathLike[str],
    *,
    size: tuple[int, int] = (3072, 2304),
    mpp: float = 0.5,
    random_state: int = 0,
) -> tuple[Path, Path]:
    """Generate an H&E-like slide with a lesion, as a pyramidal TIFF, and its mask PNG.

    Tissue is a pink, fibrous blob with sparse small nuclei (stroma); the lesion, an irregular
    region inside it, is purple and crowded with large dark nuclei (tumour), so a good method
    separates them and a poor one does not. The mask (255 = lesion) is written beside the slide
    as ``<stem>_mask.png``.

    Returns
    -------
    (slide path, mask path)
    """
    from PIL import Image, ImageDraw, ImageFilter

    from histosic.mosaic import write_pyramid_tiff
    from histosic.outputs.raster import write_png

    w, h = size
    if w < 256 or h < 256:
        raise InvalidInputError(f"demo slide must be at least 256 x 256 px, got {w} x {h}")
    rng = np.random.default_rng(random_state)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def blob(cx: float, cy: float, r: float, wobble: float, k: int) -> npt.NDArray[np.bool_]:
        ang = np.arctan2(yy - cy, xx - cx)
        rad = np.hypot(xx - cx, yy - cy)
        edge = r * (
            1
            + sum(
                wobble * rng.uniform(0.3, 1) * np.sin(j * ang + rng.uniform(0, 6.3))
                for j in range(2, 2 + k)
            )
        )
        return np.asarray(rad < edge)

    tissue = blob(w * 0.5, h * 0.5, min(w, h) * 0.42, 0.06, 4)
    lesion = tissue & (
        blob(w * 0.62, h * 0.42, min(w, h) * 0.19, 0.12, 3)
        | blob(w * 0.36, h * 0.6, min(w, h) * 0.15, 0.15, 3)
    )
    # Stroma: pink with fibre-like streaks; lesion: purple.
    streak = np.sin(xx / 9.0 + 3 * np.sin(yy / 37.0)) * 12
    img = np.empty((h, w, 3), np.float32)
    img[:] = (244, 244, 246)
    stroma = np.array([228, 160, 196], np.float32)
    tumour = np.array([165, 110, 185], np.float32)
    img[tissue] = stroma + streak[tissue, None] * np.array([0.3, 1.0, 0.5], np.float32)
    img[lesion] = tumour
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    # Nuclei: sparse and small in stroma, crowded, large and dark in the lesion.
    for region, count, (rmin, rmax), colour in (
        (tissue & ~lesion, int(tissue.sum() / 900), (2, 4), (90, 50, 130)),
        (lesion, int(lesion.sum() / 160), (4, 8), (60, 25, 100)),
    ):
        ys, xs = np.nonzero(region)
        pick = rng.integers(0, ys.size, size=count)
        for y, x in zip(ys[pick], xs[pick], strict=True):
            r = rng.uniform(rmin, rmax)
            e = rng.uniform(0.6, 1.0)
            draw.ellipse((x - r, y - r * e, x + r, y + r * e), fill=colour)
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.8))
    arr = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 5, (h, w, 3)).astype(np.float32)
    arr[~tissue] = np.clip(arr[~tissue], 225, 255)
    rgb = np.clip(arr, 0, 255).astype(np.uint8)
    slide = Path(out)
    slide.parent.mkdir(parents=True, exist_ok=True)
    write_pyramid_tiff(slide, rgb, mpp=mpp)
    mask_path = slide.with_name(slide.stem + "_mask.png")
    write_png(mask_path, lesion.astype(np.uint8) * 255, overwrite=True)
    return slide, mask_path


def _farthest(points: npt.NDArray[np.float64], n: int) -> list[int]:
    """Greedy farthest-point choice of ``n`` rows, starting from the first (best-ranked) one."""
    chosen = [0]
    d = np.linalg.norm(points - points[0], axis=1)
    while len(chosen) < min(n, len(points)):
        i = int(d.argmax())
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(points - points[i], axis=1))
    return chosen


def pick_seed_points(
    centres: npt.NDArray[np.float64],
    inside_fraction: npt.NDArray[np.float64],
    depth: npt.NDArray[np.float64],
    *,
    n_positive: int = 3,
    n_negative: int = 3,
    tissue: npt.NDArray[np.floating[Any]] | None = None,
) -> tuple[list[int], list[int]]:
    """Choose seed patches as a pathologist would click: clear cases, spread over the slide.

    Parameters
    ----------
    centres : ndarray of shape (n, 2)
        Patch centres (level-0 pixels).
    inside_fraction : ndarray of shape (n,)
        Fraction of each patch inside the lesion.
    depth : ndarray of shape (n,)
        Distance of each patch centre from the lesion boundary (any unit; larger = clearer).
    n_positive, n_negative : int, default 3
    tissue : ndarray of shape (n,), optional
        Tissue fraction of each patch; where given, seeds go on patches with at least 90% tissue
        when there are enough (a pathologist clicks inside the tissue, not on its edge).

    Returns
    -------
    (positive patch indices, negative patch indices)
    """
    out: list[list[int]] = []
    solid = np.ones(inside_fraction.shape[0], bool) if tissue is None else tissue >= 0.9
    for want, clear, fair in (
        (n_positive, inside_fraction >= 0.99, inside_fraction >= 0.75),
        (n_negative, inside_fraction <= 0.01, inside_fraction <= 0.25),
    ):
        # Wholly inside (outside) where the slide has such patches, else mostly.
        idx = np.flatnonzero(clear & solid)
        if idx.size < want:
            idx = np.flatnonzero(clear)
        if idx.size < want:
            idx = np.flatnonzero(fair)
        if idx.size == 0:
            raise InvalidInputError(
                "the demo slide has no patch mostly inside (or outside) the lesion"
            )
        # The clearest half of the candidates, then spread out over the slide.
        order = idx[np.argsort(-depth[idx], kind="stable")]
        pool = order[: max(want, order.size // 2)]
        out.append([int(pool[i]) for i in _farthest(centres[pool], want)])
    return out[0], out[1]


def _depth(
    mask: npt.NDArray[np.bool_], centres: npt.NDArray[np.float64], scale: tuple[float, float]
) -> npt.NDArray[np.float64]:
    from scipy.ndimage import distance_transform_edt

    inside = distance_transform_edt(mask)
    outside = distance_transform_edt(~mask)
    d = np.where(mask, inside, outside)
    col = np.clip((centres[:, 0] / scale[0]).astype(int), 0, mask.shape[1] - 1)
    row = np.clip((centres[:, 1] / scale[1]).astype(int), 0, mask.shape[0] - 1)
    return np.asarray(d[row, col], dtype=np.float64)


def run_demo(
    out_dir: str | os.PathLike[str] = "histosic-demo",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    generated: bool = False,
    model: str = DEFAULT_MODEL,
    method: str | None = None,
    generated_size: tuple[int, int] = (3072, 2304),
    colors_method: str = "umap",
) -> DemoReport:
    """Run the demo and return its report (see the module docstring).

    Parameters
    ----------
    out_dir : path-like, default "histosic-demo"
        Receives every output; existing demo outputs there are replaced.
    data_dir : path-like, optional
        Where to look for ``digestpath/0.jpg`` first.
    generated : bool, default False
        Use a generated slide even when DigestPath is available.
    model : str, default config.DEFAULT_MODEL
        Embedding backbone (offline ones: he-features, handcrafted, resnet18-random); the default
        is the product's (no weights to download; on DigestPath image 0 the default clustering
        on it scores best of the offline backbones, docs/EVALUATION.md).
    method : str, optional
        Clustering method (default: :data:`histosic.cluster.DEFAULT_METHOD`).
    generated_size : (int, int)
        Size of the generated slide (smaller is faster; tests use a small one).
    colors_method : {"umap", "pca"}, default "umap"
    """
    from PIL import Image

    from histosic.atomic import write_atomic
    from histosic.cluster import DEFAULT_METHOD, PAPER_PREPROCESS, ClusterOptions, cluster_slide
    from histosic.cluster.metrics import all_positive_f1, binary_scores
    from histosic.colors import colors_geojson, patch_colors, render_colors
    from histosic.embed.pipeline import embed_slide
    from histosic.evaluation.truth import load_truth
    from histosic.outputs.geojson import to_geojson_bytes, write_geojson
    from histosic.outputs.overlay import write_overlay
    from histosic.outputs.raster import slide_thumbnail, write_png
    from histosic.outputs.seedfile import read_seeds
    from histosic.store import read_embeddings
    from histosic.tiling import TilingConfig

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = None if generated else find_demo_data(data_dir)
    if found is not None:
        slide, mask_path = found
        source, slide_mpp = "digestpath", 0.5
    else:
        slide, mask_path = make_demo_slide(out / "demo-slide.tiff", size=generated_size)
        source, slide_mpp = "generated", 0.5
    log.info("demo slide: %s (%s)", slide, source)

    # 256 px patches at 20x (0.5 um/px) with 50% overlap: the paper's DigestPath setting.
    tiling = TilingConfig(target_mpp=0.5, patch_size=256, overlap=0.5)
    emb_path = out / f"embeddings-{model}.h5"
    emb_path = embed_slide(
        slide,
        emb_path,
        model=model,
        tiling=tiling,
        slide_mpp=slide_mpp,
        workers=0,
        device="cpu",
        overwrite=True,
    )
    emb = read_embeddings(emb_path)
    truth = load_truth(
        mask_path,
        emb.coords,
        emb.meta.patch_size_level0,
        slide_size=(emb.meta.level0_width, emb.meta.level0_height),
    )
    with Image.open(mask_path) as im:
        mask = np.asarray(im.convert("L")) > 127
    scale = (emb.meta.level0_width / mask.shape[1], emb.meta.level0_height / mask.shape[0])
    centres = emb.centers()
    pos, neg = pick_seed_points(
        centres, truth.fractions[:, 1], _depth(mask, centres, scale), tissue=emb.tissue_fraction
    )

    # The seeds as a QuPath point export, read back through the same path a user's file takes.
    seeds_doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {
                    "type": "Point",
                    "coordinates": [float(centres[i][0]), float(centres[i][1])],
                },
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": colour},
                },
            }
            for idx, name, colour in (
                (pos, POSITIVE_NAME, [200, 0, 0]),
                (neg, NEGATIVE_NAME, [150, 200, 150]),
            )
            for i in idx
        ],
    }
    seeds_path = write_atomic(
        out / "seeds.geojson", json.dumps(seeds_doc, indent=1).encode(), overwrite=True
    )
    points = read_seeds(seeds_path).points

    chosen = method or DEFAULT_METHOD
    options = ClusterOptions(method=chosen, positive_class=POSITIVE_NAME, suggest=5)
    clustering = cluster_slide(emb, points, options)
    pred = clustering.labels == clustering.result.positive
    scores = binary_scores(truth.labels, pred)
    paper = cluster_slide(
        emb, points, options, method="sic", preprocess=PAPER_PREPROCESS, suggest=0
    )
    paper_f1 = binary_scores(truth.labels, paper.labels == paper.result.positive)["f1"]

    outputs: dict[str, Path] = {"seeds": seeds_path, "embeddings": emb_path}
    outputs["geojson"] = write_atomic(
        out / "clusters.geojson", to_geojson_bytes(emb, clustering, output="both"), overwrite=True
    )
    outputs["overlay"] = write_overlay(
        out / "overlay.png",
        emb,
        clustering,
        slide_path=slide,
        seeds=points,
        max_size=1600,
        overwrite=True,
    )
    colours = patch_colors(emb.features, method=colors_method)
    outputs["colors geojson"] = write_geojson(
        out / "colors.geojson", colors_geojson(emb, colours, method=colors_method), overwrite=True
    )
    w, h = emb.meta.level0_width, emb.meta.level0_height
    s = min(1.0, 1600 / max(w, h))
    thumb = slide_thumbnail(slide, (max(1, round(w * s)), max(1, round(h * s))), mpp=slide_mpp)
    background = None if thumb is None else np.asarray(thumb.convert("RGB"), dtype=np.uint8)
    outputs["colors png"] = write_png(
        out / "colors.png",
        render_colors(emb, colours, background=background, alpha=0.8),
        overwrite=True,
    )
    report = DemoReport(
        slide=slide,
        truth=mask_path,
        source=source,
        model=model,
        method=chosen,
        n_patches=emb.n_patches,
        f1=scores["f1"],
        precision=scores["precision"],
        recall=scores["recall"],
        paper_f1=paper_f1,
        all_positive_f1=all_positive_f1(truth.positive_ratio),
        seconds=time.perf_counter() - t0,
        outputs=outputs,
    )
    summary: dict[str, Any] = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in report.__dict__.items()
        if k != "outputs"
    }
    summary["outputs"] = {k: str(v) for k, v in outputs.items()}
    outputs["report"] = write_atomic(
        out / "report.json", json.dumps(summary, indent=1).encode(), overwrite=True
    )
    return report
