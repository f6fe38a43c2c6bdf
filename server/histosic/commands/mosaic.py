"""``histosic mosaic``: virtual slides from WSSS4LUAD tiles (real tissue, exact ground truth)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def _default_data() -> Path:
    from histosic import config

    return config.current().data_dir / "wsss4luad"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mosaic",
        help="build virtual slides (pyramidal TIFF + masks) from WSSS4LUAD tiles",
        description=(
            "Pack real WSSS4LUAD tiles on a white background into a pyramidal TIFF with "
            "resolution metadata, plus NAME_mask.png (tumour 255), NAME_labels.png (0 background, "
            "1 tumour, 2 stroma, 3 normal) and NAME.json (layout)."
        ),
    )
    p.add_argument("out_dir", type=Path, help="folder for the mosaics")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="WSSS4LUAD folder with index.csv "
        "(default: $HISTOSIC_DATA/wsss4luad or <repo>/../shared/data/wsss4luad)",
    )
    p.add_argument("-n", "--count", type=int, default=1, help="number of mosaics (default 1)")
    p.add_argument("--tiles", type=int, default=12, help="tiles per mosaic (default 12)")
    p.add_argument(
        "--normal-tiles",
        type=int,
        default=0,
        help="tiles drawn among those with normal tissue, for three-class mosaics (default 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the first mosaic")
    p.add_argument("--mpp", type=float, default=1.0, help="level-0 um/px to record (default 1.0)")
    p.add_argument("--row-width", type=int, default=1600, help="mosaic width in px (default 1600)")
    p.add_argument(
        "--split",
        action="append",
        choices=("validation", "testing"),
        default=None,
        help="draw tiles only from this WSSS4LUAD split (repeatable; default: all)",
    )
    p.add_argument("--prefix", default="mosaic", help="file name prefix (default 'mosaic')")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histosic.mosaic import build_mosaic, read_tile_index, select_tiles

    sources = read_tile_index(args.data or _default_data(), splits=args.split)
    for i in range(args.count):
        tiles = select_tiles(
            sources, args.tiles, random_state=args.seed + i, normal_tiles=args.normal_tiles
        )
        res = build_mosaic(
            tiles,
            args.out_dir / f"{args.prefix}-{args.seed + i:02d}.tiff",
            mpp=args.mpp,
            row_width=args.row_width,
            overwrite=args.overwrite,
        )
        print(f"{res.slide}  {res.width}x{res.height} px, {len(res.tiles)} tiles; mask {res.mask}")
    return 0
