"""histosic: seeded iterative clustering of whole-slide image patches.

A few point seeds placed by a pathologist in QuPath become a dense tissue map of the slide. Patches
are embedded once by a pretrained network (:mod:`histosic.embed`, the only part that needs torch),
then clustered locally from the seeds in about a second (:mod:`histosic.cluster`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:  # the one place the version is written is pyproject.toml
    __version__ = version("histosic")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
