#!/usr/bin/env python3
"""Compute ``FEATURE_SCALE`` of the ``he-features`` backbone (histosic/features/hefeatures.py).

The scale of each feature is its pooled within-source standard deviation (the root mean of the
two sources' variances) over label-free tissue patches of real H&E images at about 1 um/px, the
backbone's working resolution:

- all 98 WSSS4LUAD images (``wsss4luad/{validation,testing}/img/*.png``, ~1 um/px): 128 px windows
  at stride 64;
- the DigestPath image ``digestpath/0.jpg`` (0.5 um/px): 256 px windows at stride 128, resized to
  128 px (bilinear with antialiasing, as the embedding pipeline does).

A window counts as tissue when at least half its pixels are tissue (``lumen_frac <= 0.5``); no
ground-truth mask is read. The result is printed as a Python tuple to paste into the module::

    .venv/bin/python scripts/he_feature_scales.py [DATA_DIR]

``DATA_DIR`` defaults to ``$HISTOSIC_DATA`` or ``<repo>/../shared/data``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from histosic.features.hefeatures import NAMES, extract_raw

REPO = Path(__file__).resolve().parents[1]
Patches = npt.NDArray[np.uint8]


def windows(img: Patches, size: int, stride: int, out: int) -> Patches:
    """All ``size`` px windows of ``img`` at ``stride``, resized to ``out`` px."""
    h, w = img.shape[:2]
    tiles = []
    for y in range(0, h - size + 1, stride):
        for x in range(0, w - size + 1, stride):
            tile = img[y : y + size, x : x + size]
            if size != out:
                tile = np.asarray(
                    Image.fromarray(tile).resize((out, out), Image.Resampling.BILINEAR)
                )
            tiles.append(tile)
    return np.stack(tiles) if tiles else np.zeros((0, out, out, 3), np.uint8)


def load_rgb(path: Path) -> Patches:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def main() -> int:
    env = os.environ.get("HISTOSIC_DATA")
    default = Path(env) if env else REPO.parent / "shared" / "data"
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    sources: dict[str, list[Patches]] = {"wsss4luad": [], "digestpath": []}
    for path in sorted((data / "wsss4luad").glob("*/img/*.png")):
        sources["wsss4luad"].append(windows(load_rgb(path), 128, 64, 128))
    sources["digestpath"].append(windows(load_rgb(data / "digestpath" / "0.jpg"), 256, 128, 128))
    lumen = NAMES.index("lumen_frac")
    feats = []
    for name, parts in sources.items():
        x = extract_raw(np.concatenate(parts))
        x = x[x[:, lumen] <= 0.5]
        print(f"# {name}: {len(x)} tissue patches", file=sys.stderr)
        feats.append(x.astype(np.float64))
    # Pooled within-source SD, the two sources weighted equally: a shift of the mean between
    # sources (another lab's staining) does not inflate the scale.
    sd = np.sqrt(np.mean([x.var(axis=0) for x in feats], axis=0))
    sd = np.where(sd > 1e-6, sd, 1.0)
    print("FEATURE_SCALE: tuple[float, ...] = (")
    for name, v in zip(NAMES, sd, strict=True):
        print(f"    {float(f'{v:.4g}')!r},  # {name}")
    print(")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
