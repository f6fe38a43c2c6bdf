"""Subcommands of the ``histosic`` CLI: one module each, with ``register(subparsers)``."""
