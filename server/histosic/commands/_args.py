"""Command-line arguments that several subcommands share, declared once."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_device", "add_slides"]


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
