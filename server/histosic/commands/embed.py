"""``histosic embed``: turn slides into HDF5 patch-embedding files (the remote, GPU side)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from histosic.commands._args import add_device, add_slides, check_outputs_not_inputs
from histosic.config import DEFAULT_MODEL

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "embed",
        help="embed the tissue patches of slides with a backbone (HDF5 per slide)",
        description=(
            "Cut each slide into patches at a target resolution, keep those on tissue, embed them "
            "with a backbone and write one HDF5 file per slide (features, level-0 coords, tissue "
            "and white fractions). A killed run resumes; slides already embedded with the same "
            "settings are skipped unless --overwrite. See `histosic models` for model names."
        ),
    )
    add_slides(p)
    p.add_argument(
        "--out",
        "-o",
        type=Path,
        required=True,
        help="output folder (one file per slide), or an .h5 file name for a single slide",
    )
    p.add_argument(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        help="backbone: resnet18, resnet50, histossl, efficientnet-lite0, he-features, "
        f"handcrafted, resnet18-random, timm:<name>, checkpoint:<path> (default: {DEFAULT_MODEL}, "
        "which needs no download and scored best in docs/EVALUATION.md), or a pathology "
        "foundation model (uni, virchow2, h-optimus-0, ...: `histosic models`, docs/MODELS.md)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="PATH",
        help="the model's weights: a file, or a folder laid out as the Hugging Face cache "
        "(for foundation models and histossl; no download)",
    )
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="target microns per pixel of the patches (default: the model's training "
        "resolution, else 0.5, i.e. 20x)",
    )
    p.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="patch side in pixels (default: the side the model sees unresampled, else 256)",
    )
    p.add_argument(
        "--overlap", type=float, default=0.5, help="overlap of neighbouring patches (default 0.5)"
    )
    p.add_argument(
        "--tissue-threshold",
        type=float,
        default=0.5,
        help="keep patches with at least this tissue fraction (default 0.5; 0 keeps all)",
    )
    p.add_argument(
        "--tissue-method",
        choices=("otsu", "saturation", "all"),
        default="otsu",
        help="tissue detection on the thumbnail (default: Otsu on saturation)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="patches per batch (default 64)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="patch-reading worker processes (default: 1 on CPU, most cores with a GPU; 0 = none)",
    )
    add_device(p)
    p.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="stored feature type (default float32)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="re-embed slides whose output exists (and ignore unfinished runs)",
    )
    from histosic.commands.embed_ray import add_ray_flags

    add_ray_flags(p)
    p.set_defaults(func=run)


class _Bar:
    """A tqdm bar (patches/s on stderr) created at the first progress report."""

    def __init__(self, desc: str, disable: bool) -> None:
        self.desc = desc
        self.disable = disable
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=total,
                initial=done,
                unit="patch",
                desc=self.desc,
                file=sys.stderr,
                disable=self.disable,
                dynamic_ncols=True,
                smoothing=0.1,
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    from histosic.embed.pipeline import embed_slide
    from histosic.embed.registry import get_model_info, with_weights
    from histosic.errors import HistosicError, InvalidInputError
    from histosic.slides import TissueConfig
    from histosic.tiling import TilingConfig

    model = with_weights(args.model, args.weights) if args.weights else args.model
    info = get_model_info(model, check=False)
    tiling = TilingConfig(
        target_mpp=args.mpp if args.mpp is not None else (info.mpp or 0.5),
        patch_size=args.patch_size if args.patch_size is not None else (info.patch_size or 256),
        overlap=args.overlap,
        tissue_threshold=args.tissue_threshold,
    ).validate()
    tissue = TissueConfig(method=args.tissue_method)
    out: Path = args.out
    check_outputs_not_inputs({"--out": out}, {f"slide {s}": s for s in args.slides})
    if len(args.slides) > 1 and out.suffix.lower() in (".h5", ".hdf5"):
        raise InvalidInputError(
            f"--out {out} is a file name but {len(args.slides)} slides were given; give a folder"
        )
    if getattr(args, "ray", None) is not None:
        from histosic.commands.embed_ray import run_ray

        return run_ray(args, tiling, tissue)
    failed = 0
    quiet = bool(getattr(args, "quiet", False))
    for slide in args.slides:
        bar = _Bar(slide.name, disable=quiet)
        try:
            path = embed_slide(
                slide,
                out,
                model=model,
                tiling=tiling,
                slide_mpp=args.slide_mpp,
                batch_size=args.batch_size,
                workers=args.workers,
                device=args.device,
                overwrite=args.overwrite,
                progress=bar,
                tissue=tissue,
                dtype=args.dtype,
            )
        except HistosicError as err:
            bar.close()
            if len(args.slides) == 1:
                raise
            failed += 1
            print(f"histosic embed: error: {slide}: {err}", file=sys.stderr)
            continue
        bar.close()
        print(path)
    if failed:
        print(f"histosic embed: {failed} of {len(args.slides)} slides failed", file=sys.stderr)
        return 1
    return 0
