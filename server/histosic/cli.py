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
import sys
from collections.abc import Callable, Sequence

from histosic import __version__, config
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histosic",
        description="Seeded iterative clustering of whole-slide image patches.",
    )
    parser.add_argument("--version", action="version", version=f"histosic {__version__}")
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
    config.configure(config.from_env())
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
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"histosic {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
