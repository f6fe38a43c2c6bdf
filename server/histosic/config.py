"""Defaults of the product and their ``HISTOSIC_*`` environment overrides, in one place.

The library never reads the environment. The command line (:func:`histosic.cli.main`) and the
server bootstrap call :func:`from_env` once and :func:`configure` the process with the result;
library code asks :func:`current` (which gives the built-in defaults unless configured). A Python
user who wants the environment honoured calls ``configure(from_env())`` the same way.

========================== ==========================================================
variable                   what it sets
========================== ==========================================================
``HISTOSIC_TOKEN``         the bearer token of ``histosic serve`` and of its clients
``HISTOSIC_CACHE``         the evaluation's embedding cache (default
                           ``$XDG_CACHE_HOME/histosic/eval`` or ``~/.cache/histosic/eval``)
``HISTOSIC_DATA``          the shared data folder (DigestPath, WSSS4LUAD) of ``mosaic``,
                           ``evaluate`` and the tests (default ``<repo>/../shared/data``)
``HISTOSIC_DEMO_DATA``     where ``histosic demo`` looks first for the DigestPath image
``HISTOSIC_OFFLINE``       ``1``: never try the network for weights (fail at once instead)
``HISTOSIC_HISTOSSL_WEIGHTS`` a local file of the ``histossl`` backbone's weights
========================== ==========================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_CONNECT_PORT",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HOST",
    "DEFAULT_MODEL",
    "DEFAULT_OUTPUT",
    "DEFAULT_POSITIVE_CLASS",
    "DEFAULT_SHUTDOWN_GRACE_S",
    "ENV_VARS",
    "MAX_PATCHES_PER_JOB",
    "MPP_RANGE",
    "OUTPUT_KINDS",
    "Settings",
    "configure",
    "current",
    "from_env",
]

#: The backbone of ``histosic embed``, ``evaluate`` and ``demo`` (docs/EVALUATION.md says why).
DEFAULT_MODEL = "he-features"
#: The QuPath class of the positive seeds in binary clustering.
DEFAULT_POSITIVE_CLASS = "Tumor"
#: What the clustering's QuPath GeoJSON holds: tiles, detections, merged regions, or tiles+regions.
OUTPUT_KINDS: tuple[str, ...] = ("tiles", "detections", "regions", "both")
DEFAULT_OUTPUT = "tiles"
#: ``histosic serve`` binds to loopback by default.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 50051
DEFAULT_CONNECT_PORT = 50052
#: Resolutions (microns per pixel, level 0 and target) that StartEmbedding and ``embed`` accept:
#: finer than 0.05 um/px is beyond any light microscope, coarser than 100 um/px is not histology.
MPP_RANGE: tuple[float, float] = (0.05, 100.0)
#: Default of ``histosic serve --max-patches-per-job``: the patch grid (before the tissue filter)
#: a StartEmbedding may ask for. A 100,000 px square slide at 0.25 um/px cut at 0.5 um/px with
#: 256 px patches and 50% overlap is about 152,000 patches; 40x with 50% overlap about 610,000.
MAX_PATCHES_PER_JOB = 2_000_000
#: Default of ``histosic serve --shutdown-grace``: seconds from SIGTERM to a stopped process.
DEFAULT_SHUTDOWN_GRACE_S = 10.0

#: Every environment variable histosic reads, with what it sets.
ENV_VARS: dict[str, str] = {
    "HISTOSIC_TOKEN": "bearer token of histosic serve and its clients",
    "HISTOSIC_CACHE": "embedding cache folder of histosic evaluate",
    "HISTOSIC_DATA": "shared data folder (DigestPath, WSSS4LUAD)",
    "HISTOSIC_DEMO_DATA": "where histosic demo looks first for the DigestPath image",
    "HISTOSIC_OFFLINE": "1 = never try the network for pretrained weights",
    "HISTOSIC_HISTOSSL_WEIGHTS": "local weights file of the histossl backbone",
}

_REPO_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _default_cache(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "histosic" / "eval"


_DEFAULT_CACHE = _default_cache({})


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class Settings:
    """What the environment may override; the defaults are the product's."""

    token: str | None = None
    cache_dir: Path = _DEFAULT_CACHE
    data_dir: Path = _REPO_SHARED
    demo_data: Path | None = None
    offline: bool = False
    histossl_weights: Path | None = None


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``HISTOSIC_*`` variables (``os.environ`` unless given)."""
    env = os.environ if environ is None else environ
    return Settings(
        token=env.get("HISTOSIC_TOKEN") or None,
        cache_dir=_path(env.get("HISTOSIC_CACHE")) or _default_cache(env),
        data_dir=_path(env.get("HISTOSIC_DATA")) or _REPO_SHARED,
        demo_data=_path(env.get("HISTOSIC_DEMO_DATA")),
        offline=_truthy(env.get("HISTOSIC_OFFLINE")),
        histossl_weights=_path(env.get("HISTOSIC_HISTOSSL_WEIGHTS")),
    )


_current = Settings()


def configure(settings: Settings) -> Settings:
    """Make ``settings`` the process's settings; returns the previous ones."""
    global _current
    previous, _current = _current, settings
    return previous


def current() -> Settings:
    """The process's settings (the defaults unless :func:`configure` was called)."""
    return _current
