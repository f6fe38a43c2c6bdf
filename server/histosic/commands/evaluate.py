"""``histosic evaluate``: the paper's protocol (simulated seeds, F1 vs ground truth) on slides."""

from __future__ import annotations

import argparse
from pathlib import Path

from histosic.commands._args import random_state
from histosic.config import DEFAULT_MODEL

__all__ = ["register", "run"]

_DEFAULT_VARIANTS = (
    "sic:pre=none,sic:pre=none:stop=strict,sic:pre=both,logreg:pre=both,centroid:pre=both"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="the paper's evaluation protocol: simulated seeds, F1 against ground truth",
        description=(
            "For each slide (with a mask image, a label image or QuPath GeoJSON of the positive "
            "class) and each model: embed once (cached), draw k seed patches per class inside and "
            "outside the positive region (R repetitions, the same draws for every variant), run "
            "each clustering variant and score it on every patch. Writes results.json, results.md, "
            "f1_vs_seeds.png and an overlay PNG per slide and model."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "variant syntax: METHOD[:pre=NAME][:stop=drop|strict][:constrained][:multiclass|:ovr]\n"
            "  METHOD: sic (the paper), seeded-kmeans, centroid, logreg, spreading\n"
            "  pre: default, none (the paper), nuisance, smooth, both, smooth2, both2, l2, pca,\n"
            "       both+l2, both+pca\n"
            "examples:\n"
            "  histosic evaluate --case ../shared/data/digestpath/0.jpg "
            "../shared/data/digestpath/0_mask.jpg --mpp 0.5 out/\n"
            "  histosic evaluate --case m.tiff m_labels.png --labels --target-mpp 1 "
            "--patch-size 128 out/"
        ),
    )
    p.add_argument("out_dir", type=Path, help="folder for the reports")
    p.add_argument(
        "--case",
        nargs=2,
        action="append",
        metavar=("SLIDE", "TRUTH"),
        required=True,
        help="a slide and its ground truth (mask image, label image or GeoJSON); repeatable",
    )
    p.add_argument("--mpp", type=float, default=None, help="slide um/px for plain images")
    p.add_argument(
        "--labels",
        action="store_true",
        help="truth files are label images (0 none, 1 positive, 2.. other classes)",
    )
    p.add_argument(
        "--area-rule",
        action="store_true",
        help="label images: a patch is positive when the positive class covers 50%% of its area "
        "(default: 50%% of the labelled tissue in it)",
    )
    p.add_argument("--positive", default=None, help="GeoJSON class name of the positive region")
    p.add_argument(
        "--models",
        default=DEFAULT_MODEL,
        help=f"comma-separated model names (default {DEFAULT_MODEL})",
    )
    p.add_argument("--variants", default=_DEFAULT_VARIANTS, help="comma-separated variant specs")
    p.add_argument("--seeds", default="1,3,5", help="seed patches per class (default 1,3,5)")
    p.add_argument("--repeats", type=int, default=5, help="seed draws per setting (default 5)")
    p.add_argument("--target-mpp", type=float, default=0.5, help="patch resolution (default 0.5)")
    p.add_argument("--patch-size", type=int, default=256, help="patch side in px (default 256)")
    p.add_argument("--overlap", type=float, default=0.5, help="patch overlap (default 0.5)")
    p.add_argument("--tissue-threshold", type=float, default=0.5, help="default 0.5")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="embedding cache (default: $HISTOSIC_CACHE or ~/.cache/histosic/eval)",
    )
    p.add_argument("--random-state", type=random_state, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--seed-draw",
        choices=("random", "pure", "boundary"),
        default="random",
        help="where the simulated clicks fall: random inside/outside the positive region (the "
        "paper, default), pure patches (>= 90%% one side) or boundary patches (mixed, within 0.3 "
        "of the threshold)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histosic.errors import InvalidInputError
    from histosic.evaluation.protocol import parse_variant
    from histosic.evaluation.runner import Case, EvalConfig, default_cache_dir, evaluate_cases
    from histosic.mosaic import LABEL_NAMES

    try:
        ks = tuple(int(k) for k in args.seeds.split(","))
    except ValueError as err:
        raise InvalidInputError(
            f"--seeds must be comma-separated integers, got {args.seeds!r}"
        ) from err
    variants = tuple(parse_variant(v) for v in args.variants.split(",") if v.strip())
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if not variants or not models:
        raise InvalidInputError("give at least one model (--models) and one variant (--variants)")
    cases = [
        Case(
            Path(s),
            Path(t),
            mpp=args.mpp,
            labels=args.labels,
            positive=args.positive,
            relative_to_tissue=not args.area_rule,
        )
        for s, t in args.case
    ]
    cfg = EvalConfig(
        models=models,
        variants=variants,
        ks=ks,
        repeats=args.repeats,
        target_mpp=args.target_mpp,
        patch_size=args.patch_size,
        overlap=args.overlap,
        tissue_threshold=args.tissue_threshold,
        random_state=args.random_state,
        cache_dir=args.cache_dir or default_cache_dir(),
        device=args.device,
        seed_draw=args.seed_draw,
    )
    evaluate_cases(cases, cfg, args.out_dir, label_names=LABEL_NAMES if args.labels else None)
    print((args.out_dir / "results.md").read_text().split("\n\n")[0])
    print(f"\nreports: {args.out_dir}/results.json, results.md, f1_vs_seeds.png, overlay-*.png")
    return 0
