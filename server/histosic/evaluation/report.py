"""Reports of an evaluation: summaries over repetitions, paired comparisons, Markdown, plots and
pictures of the predicted labels."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from histosic.atomic import atomic_output, write_text_atomic
from histosic.cluster.metrics import all_positive_f1
from histosic.evaluation.protocol import RunRecord

if TYPE_CHECKING:
    from histosic.store import Embeddings
from histosic.outputs.raster import write_png

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """Runs of one (slide, model, variant, k) over the repetitions."""

    slide: str
    model: str
    variant: str
    k: int
    n: int
    best_f1: float  # the paper's number: best of R
    mean_f1: float
    std_f1: float
    min_f1: float
    precision: float
    recall: float
    predicted_positive: float
    positive_ratio: float
    all_positive_f1: float
    macro_f1: float | None = None


def summarize(records: Sequence[RunRecord], positive_ratio: Mapping[str, float]) -> list[Summary]:
    """Group runs by (slide, model, variant, k) and reduce over repetitions."""
    groups: dict[tuple[str, str, str, int], list[RunRecord]] = {}
    for rec in records:
        groups.setdefault((rec.slide, rec.model, rec.variant, rec.k), []).append(rec)
    out: list[Summary] = []
    for (slide, model, variant, k), rs in groups.items():
        f1 = np.array([r.f1 for r in rs])
        mf = [r.macro_f1 for r in rs if r.macro_f1 is not None]
        pr = positive_ratio.get(slide, float("nan"))
        out.append(
            Summary(
                slide=slide,
                model=model,
                variant=variant,
                k=k,
                n=len(rs),
                best_f1=float(f1.max()),
                mean_f1=float(f1.mean()),
                std_f1=float(f1.std()),
                min_f1=float(f1.min()),
                precision=float(np.mean([r.precision for r in rs])),
                recall=float(np.mean([r.recall for r in rs])),
                predicted_positive=float(np.mean([r.predicted_positive for r in rs])),
                positive_ratio=pr,
                all_positive_f1=all_positive_f1(pr),
                macro_f1=float(np.mean(mf)) if mf else None,
            )
        )
    return out


def paired_comparison(records: Sequence[RunRecord], reference: str) -> list[dict[str, Any]]:
    """Each variant against ``reference`` on the same seed draws (same slide, model, k, rep).

    Returns one row per (model, variant, k) with the number of draws where the variant's F1 is
    higher (``wins``), equal within 0.005 (``ties``) or lower (``losses``) than the reference's,
    the mean difference, and the worst one (most negative).
    """
    ref = {(r.slide, r.model, r.k, r.rep): r.f1 for r in records if r.variant == reference}
    rows: dict[tuple[str, str, int], list[float]] = {}
    for r in records:
        key = (r.slide, r.model, r.k, r.rep)
        if r.variant != reference and key in ref:
            rows.setdefault((r.model, r.variant, r.k), []).append(r.f1 - ref[key])
    out: list[dict[str, Any]] = []
    for (model, variant, k), diffs in rows.items():
        d = np.asarray(diffs)
        out.append(
            {
                "model": model,
                "variant": variant,
                "k": k,
                "reference": reference,
                "wins": int(np.sum(d > 0.005)),
                "ties": int(np.sum(np.abs(d) <= 0.005)),
                "losses": int(np.sum(d < -0.005)),
                "mean_diff": float(d.mean()),
                "worst_diff": float(d.min()),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _pm(values: Sequence[float]) -> str:
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.3f} ± {a.std():.3f}" if a.size > 1 else f"{a.mean():.3f}"


def write_markdown(
    summaries: Sequence[Summary],
    path: str | os.PathLike[str] | None = None,
    *,
    paired: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Markdown tables: per (model, variant, k) over slides, then per slide.

    The first table's "mean F1" is the mean over slides of each slide's mean over repetitions
    (± the spread over slides); "best-of-R" is the mean over slides of the paper's number.
    """
    lines = [
        "| model | variant | k | mean F1 (± over slides) | best-of-R F1 | min F1 | precision "
        "| recall | pred. pos. | all-positive F1 | macro F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys: dict[tuple[str, str, int], list[Summary]] = {}
    for s in summaries:
        keys.setdefault((s.model, s.variant, s.k), []).append(s)
    for (model, variant, k), ss in keys.items():
        mf = [s.macro_f1 for s in ss if s.macro_f1 is not None]
        lines.append(
            f"| {model} | {variant} | {k} | {_pm([s.mean_f1 for s in ss])} | "
            f"{_pm([s.best_f1 for s in ss])} | {np.mean([s.min_f1 for s in ss]):.3f} | "
            f"{np.mean([s.precision for s in ss]):.3f} | {np.mean([s.recall for s in ss]):.3f} | "
            f"{np.mean([s.predicted_positive for s in ss]):.3f} | "
            f"{np.mean([s.all_positive_f1 for s in ss]):.3f} | "
            f"{(f'{np.mean(mf):.3f}' if mf else '')} |"
        )
    lines += [
        "",
        "| slide | model | variant | k | mean F1 ± std over R | best-of-R | positive ratio "
        "| all-positive F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.slide} | {s.model} | {s.variant} | {s.k} | {s.mean_f1:.3f} ± {s.std_f1:.3f} | "
            f"{s.best_f1:.3f} | {s.positive_ratio:.3f} | {s.all_positive_f1:.3f} |"
        )
    if paired:
        lines += [
            "",
            f"Paired with `{paired[0]['reference']}` on the same seed draws (F1 difference):",
            "",
            "| model | variant | k | wins | ties | losses | mean diff | worst diff |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in paired:
            lines.append(
                f"| {p['model']} | {p['variant']} | {p['k']} | {p['wins']} | {p['ties']} | "
                f"{p['losses']} | {p['mean_diff']:+.3f} | {p['worst_diff']:+.3f} |"
            )
    text = "\n".join(lines) + "\n"
    if path is not None:
        write_text_atomic(path, text, overwrite=True)
    return text


def plot_f1(summaries: Sequence[Summary], path: str | os.PathLike[str]) -> Path:
    """F1 (mean over slides of the mean over repetitions, bars = spread) vs seeds, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({s.model for s in summaries})
    variants = list(dict.fromkeys(s.variant for s in summaries))
    all_ks = sorted({s.k for s in summaries})
    # Up to 20 distinguishable colours, then line styles: evaluations compare many variants.
    cmap = plt.get_cmap("tab20")
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(
        1, len(models), figsize=(4.8 * len(models) + 3.5, 4.4), squeeze=False, sharey=True
    )
    for ax, model in zip(axes[0], models, strict=True):
        for i, v in enumerate(variants):
            ss = [s for s in summaries if s.model == model and s.variant == v]
            ks = sorted({s.k for s in ss})
            if not ks:
                continue
            mean = [np.mean([s.mean_f1 for s in ss if s.k == k]) for k in ks]
            std = [np.mean([s.std_f1 for s in ss if s.k == k]) for k in ks]
            ax.errorbar(
                ks,
                mean,
                yerr=std,
                marker="o",
                ms=4,
                capsize=2,
                lw=1.2,
                label=v,
                color=cmap(i % 20),
                ls=styles[(i // 20) % len(styles)],
            )
        base = [s.all_positive_f1 for s in summaries if s.model == model]
        if base:
            ax.axhline(float(np.mean(base)), color="black", ls="--", lw=1, label="all positive")
        ax.set_title(model)
        ax.set_xlabel("seed patches per class")
        ax.set_xticks(all_ks)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("F1 (mean over repetitions and slides)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right", frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 3.3 / (4.8 * len(models) + 3.5), 1))
    out = Path(path)
    try:
        with atomic_output(out, overwrite=True, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return out


def draw_overlay(
    thumbnail: npt.NDArray[np.uint8],
    emb: Embeddings,
    pred: npt.ArrayLike,
    seeds: npt.ArrayLike,
    truth_region: npt.NDArray[np.bool_] | None,
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """Thumbnail with predicted positive patches (red tint), truth outline (yellow), seeds.

    Each patch is drawn as its central stride x stride cell so overlapping patches do not stack
    (:func:`histosic.outputs.raster.paint_patches`). Seeds: green dots positive, blue negative.
    """
    from PIL import Image, ImageDraw

    from histosic.outputs.raster import composite, paint_patches

    th, tw = thumbnail.shape[:2]
    meta = emb.meta
    fx, fy = tw / meta.level0_width, th / meta.level0_height
    p = np.asarray(pred)
    s = np.asarray(seeds)
    ctr = emb.centers()
    rgba = np.where(
        (p == 1)[:, None],
        np.array([230, 30, 30, 110], np.uint8),
        np.array([40, 90, 230, 45], np.uint8),
    ).astype(np.uint8)
    layer = paint_patches(emb, rgba, (tw, th), (fx, fy))
    img = Image.fromarray(composite(thumbnail, layer)).convert("RGBA")
    if truth_region is not None:
        reg = Image.fromarray(truth_region.astype(np.uint8) * 255).resize(
            (tw, th), Image.Resampling.NEAREST
        )
        r = np.asarray(reg) > 0
        edge = r & ~(np.roll(r, 1, 0) & np.roll(r, -1, 0) & np.roll(r, 1, 1) & np.roll(r, -1, 1))
        arr = np.asarray(img).copy()
        edge = edge | np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
        arr[edge] = (255, 220, 0, 255)
        img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    rad = max(3, int(min(tw, th) / 150))
    for i in np.flatnonzero(s >= 0).tolist():
        cx, cy = ctr[i][0] * fx, ctr[i][1] * fy
        colour = (0, 200, 0, 255) if s[i] == 1 else (0, 60, 255, 255)
        draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=colour, outline=(0, 0, 0, 255))
    if title:
        draw.text((5, 5), title, fill=(0, 0, 0, 255))
    return write_png(path, img.convert("RGB"), overwrite=True)
