"""``histosic pretrain``: self-supervised (SimCLR) training of a backbone on your own slides."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histosic.commands._args import add_device, add_slides, check_outputs_not_inputs

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train a ResNet on your own slides with SimCLR (no labels; a GPU is advised)",
        description=(
            "Self-supervised pretraining as in the paper's best backbone (SimCLR on the dataset): "
            "tissue regions are cut from the slides, kept in memory, and a ResNet learns to match "
            "two augmented views of a region (crops, flips, stain and colour jitter, blur). The "
            "checkpoint is then used with `histosic embed --model checkpoint:<path>`; it records "
            "its input size and normalisation. Training needs no labels and no internet."
        ),
    )
    add_slides(p)
    p.add_argument("--out", "-o", type=Path, required=True, help="checkpoint file to write (.pt)")
    p.add_argument(
        "--arch",
        choices=("resnet18", "resnet34", "resnet50"),
        default="resnet18",
        help="backbone (default resnet18)",
    )
    p.add_argument(
        "--mpp",
        type=float,
        default=1.0,
        help="microns per pixel of the training regions (default 1.0; a 128 px input then sees "
        "128 um, like a 256 px patch at 0.5 um/px)",
    )
    p.add_argument(
        "--region-size", type=int, default=192, help="tissue region side in pixels (default 192)"
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=128,
        help="network input side in pixels, in training and for embedding (default 128)",
    )
    p.add_argument(
        "--overlap",
        type=float,
        default=0.5,
        help="overlap of neighbouring regions (default 0.5; more gives more regions from "
        "small images)",
    )
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps (default 2000)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="train for at most this many seconds (the steps are cut to fit)",
    )
    p.add_argument(
        "--batch-size", type=int, default=256, help="pairs of views per step (default 256)"
    )
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (1e-3)")
    p.add_argument(
        "--temperature", type=float, default=0.2, help="NT-Xent temperature (default 0.2)"
    )
    p.add_argument(
        "--stain-jitter",
        type=float,
        default=0.08,
        help="H&E optical-density jitter range (default 0.08; 0 turns it off)",
    )
    p.add_argument(
        "--max-regions",
        type=int,
        default=20000,
        help="at most this many regions in memory (default 20000)",
    )
    add_device(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histosic.embed.pretrain import PretrainConfig, collect_regions, pretrain_simclr

    check_outputs_not_inputs({"--out": args.out}, {f"slide {s}": s for s in args.slides})
    config = PretrainConfig(
        arch=args.arch,
        target_mpp=args.mpp,
        region_size=args.region_size,
        input_size=args.input_size,
        overlap=args.overlap,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        stain_jitter=args.stain_jitter,
        max_regions=args.max_regions,
        time_limit=args.time_limit,
        seed=args.seed,
    ).validate()
    out: Path = args.out
    if out.exists() and not args.overwrite:
        from histosic.errors import OutputExistsError

        raise OutputExistsError(f"{out} exists; give another --out or --overwrite")
    quiet = bool(getattr(args, "quiet", False))

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    regions = collect_regions(args.slides, config, slide_mpp=args.slide_mpp, progress=say)
    say(f"{regions.shape[0]} regions of {config.region_size} px at {config.target_mpp} um/px")

    def progress(step: int, total: int, loss: float) -> None:
        if step % 100 == 0 or step == total:
            say(f"step {step}/{total}  loss {loss:.4f}")

    result = pretrain_simclr(
        args.slides,
        out,
        config,
        device=args.device,
        overwrite=args.overwrite,
        progress=progress,
        regions=regions,
    )
    print(
        f"{result.path}: {config.arch} after {result.steps} steps on {result.n_regions} regions "
        f"({result.seconds:.0f} s, {result.views_per_second:.0f} views/s, final loss "
        f"{result.losses[-1] if result.losses else float('nan'):.3f}); embed with "
        f"--model checkpoint:{result.path} --mpp {config.target_mpp}"
    )
    return 0
