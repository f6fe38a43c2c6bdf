"""Command-line arguments that several subcommands share, declared once."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from histosic.cluster.options import ClusterOptions

__all__ = [
    "add_cluster_options",
    "add_device",
    "add_slides",
    "check_outputs_not_inputs",
    "cluster_options",
    "random_state",
]


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and ``..`` resolved; a missing path compares by
    its resolved name)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs_not_inputs(
    outputs: Mapping[str, Path | None], inputs: Mapping[str, Path | None]
) -> None:
    """Refuse an output path that is one of the inputs (``--overwrite`` would replace it).

    ``outputs`` and ``inputs`` map a flag (``--out``, ``--seeds``) to its path (None = not
    given).

    Raises
    ------
    InvalidInputError
        An output names the same file as an input.
    """
    from histosic.errors import InvalidInputError

    for out_flag, out in outputs.items():
        for in_flag, src in inputs.items():
            if out is not None and src is not None and _same_file(out, src):
                raise InvalidInputError(
                    f"{out_flag} {out} is the input file of {in_flag}; write the output to "
                    "another file (the input would be replaced)"
                )


def random_state(text: str) -> int:
    """argparse type of ``--random-state``: an integer from 0 to 2**32 - 1 (numpy's seeds), so a
    bad value is a one-line usage error, not a traceback from deep inside numpy."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 .. {2**32 - 1}")
    return value


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
            type=random_state,
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
