"""The ``histosic`` command line.

Each subcommand lives in its own module under :mod:`histosic.commands` and exposes
``register(subparsers)``; that module imports heavy libraries (torch, grpc) only inside the
function it runs, so ``histosic --help`` stays fast. This is the only place that configures logging
and turns :class:`~histosic.errors.HistosicError` into a message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import histosic
from histosic import config
from histosic.errors import HistosicError

__all__ = ["main"]

# Subcommand modules, in the order `histosic --help` lists them.
_COMMANDS = (
    "demo",
    "embed",
    "pretrain",
    "models",
    "cluster",
    "colors",
    "evaluate",
    "mosaic",
    "serve",
    "batch",
)

EXIT_USAGE = 2
EXIT_ERROR = 1


class _Version(argparse.Action):
    """``--version``: the version is looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"histosic {histosic.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histosic",
        description="Seeded iterative clustering of whole-slide image patches.",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"histosic.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"histosic.commands.{name}":
                raise
            continue  # command not part of this build yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The one place (with the server bootstrap it calls) where HISTOSIC_* variables are read. The
    # previous settings come back afterwards, so an in-process call leaves the process as it was.
    previous = config.configure(config.from_env())
    try:
        return _run(argv)
    finally:
        config.configure(previous)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.DEBUG if args.verbose > 0 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except HistosicError as err:
        print(f"histosic {args.command}: error: {err}", file=sys.stderr)
        _exit_if_hdf5_is_broken()
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"histosic {args.command}: interrupted", file=sys.stderr)
        return 130


def _exit_if_hdf5_is_broken() -> None:
    """End the process now when an HDF5 file failed for want of space (disk full).

    HDF5 cannot close such a file and crashes (a segmentation fault) when the interpreter
    finalises it, so the process ends here, its error already reported, without finalisers.
    """
    store = sys.modules.get("histosic.store")
    if store is not None and store.unclosable_files():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
