"""The per-patch labels CSV of ``histosic cluster --labels-csv``: centre, class and confidence.

One row per patch, ``x,y,class,confidence`` (level-0 centre with one decimal, the QuPath class
name, the confidence with four decimals); a class name with a comma, quote or line break is quoted
as RFC 4180 says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histosic.atomic import write_atomic
from histosic.store import Embeddings

if TYPE_CHECKING:
    from histosic.cluster import SlideClustering

__all__ = ["csv_field", "labels_csv", "write_labels_csv"]


def csv_field(text: str) -> str:
    """``text`` as a CSV field: quoted (quotes doubled) when it holds ``,``, ``"`` or a newline."""
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def labels_csv(emb: Embeddings, clustering: SlideClustering) -> bytes:
    """The CSV as UTF-8 bytes (header line included)."""
    centres = emb.centers()
    names = clustering.label_names()
    conf = np.asarray(clustering.confidence, dtype=np.float64)
    lines = ["x,y,class,confidence"]
    lines.extend(
        f"{x:.1f},{y:.1f},{csv_field(n)},{c:.4f}"
        for (x, y), n, c in zip(centres.tolist(), names, conf.tolist(), strict=True)
    )
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_labels_csv(
    path: str | os.PathLike[str],
    emb: Embeddings,
    clustering: SlideClustering,
    *,
    overwrite: bool = False,
) -> Path:
    """Write :func:`labels_csv` to ``path`` atomically; returns the path."""
    return write_atomic(path, labels_csv(emb, clustering), overwrite=overwrite)
