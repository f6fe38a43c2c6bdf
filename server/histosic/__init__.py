"""histosic: seeded iterative clustering of whole-slide image patches.

A few point seeds placed by a pathologist in QuPath become a dense tissue map of the slide. Patches
are embedded once by a pretrained network (:mod:`histosic.embed`, the only part that needs torch),
then clustered locally from the seeds in about a second (:mod:`histosic.cluster`).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # The version is read from the package metadata (written once, in pyproject.toml) when first
    # asked for: importlib.metadata costs a sixth of `histosic --help`, which does not need it.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("histosic")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        value = "0+unknown"
    globals()["__version__"] = value
    return value


__all__ = ["__version__"]
