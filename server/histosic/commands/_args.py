"""Command-line arguments that several subcommands share, declared once."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from histosic.cluster.options import ClusterOptions

__all__ = ["add_cluster_options", "add_device", "add_slides", "cluster_options"]


def add_slides(p: argparse.ArgumentParser) -> None:
    """The slide files (positional) and ``--slide-mpp``."""
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDE", help="slide or image files")
    p.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        help="level-0 microns per pixel of the slides; overrides metadata, needed for JPEG/PNG",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device`` for the commands that run PyTorch."""
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def add_cluster_options(
    p: argparse.ArgumentParser, *, output_help: str, raw_features_and_seed: bool = True
) -> None:
    """The clustering flags (``--positive``, ``--multiclass``, ``--method``, ``--output``,
    ``--suggest``, and unless ``raw_features_and_seed`` is False ``--raw-features`` and
    ``--random-state``), with :class:`~histosic.cluster.ClusterOptions`' defaults.

    :func:`cluster_options` turns the parsed flags into a ``ClusterOptions``.
    """
    from histosic import config
    from histosic.cluster.options import METHODS, ClusterOptions

    defaults = ClusterOptions()
    p.add_argument(
        "--positive",
        default=defaults.positive_class,
        help="positive class for binary clustering; all other seed classes form the negative "
        "class (default: %(default)s)",
    )
    p.add_argument(
        "--multiclass", action="store_true", help="keep every seed class as its own class"
    )
    p.add_argument(
        "--method",
        default=defaults.method,
        help=f"clustering method: {', '.join(METHODS)} (sic is the paper's; default: %(default)s)",
    )
    if raw_features_and_seed:
        p.add_argument(
            "--raw-features",
            action="store_true",
            help="cluster the raw embeddings as the paper does (no nuisance regression or "
            "smoothing)",
        )
    p.add_argument(
        "--output",
        choices=config.OUTPUT_KINDS,
        default=defaults.output,
        help=output_help + " (default: %(default)s)",
    )
    p.add_argument(
        "--suggest",
        type=int,
        default=defaults.suggest,
        metavar="N",
        help="add the N most useful new seed positions as points of class "
        "'histosic: suggested seed'",
    )
    if raw_features_and_seed:
        p.add_argument(
            "--random-state",
            type=int,
            default=defaults.random_state,
            help="seed (default: %(default)s)",
        )
    else:
        p.set_defaults(raw_features=False, random_state=defaults.random_state)


def cluster_options(args: argparse.Namespace) -> ClusterOptions:
    """The :class:`~histosic.cluster.ClusterOptions` of flags added by :func:`add_cluster_options`.

    Raises
    ------
    InvalidInputError
        A value the options reject (unknown method, ``--suggest`` out of range, ...).
    """
    from histosic.cluster.options import PAPER_PREPROCESS, ClusterOptions

    options = ClusterOptions(
        method=args.method,
        positive_class=args.positive,
        multiclass=args.multiclass,
        suggest=args.suggest,
        random_state=args.random_state,
        output=args.output,
    )
    if args.raw_features:
        options = replace(options, preprocess=PAPER_PREPROCESS)
    return options
