"""``histosic colors``: colour each patch by a 3-D UMAP (or PCA) of its embedding."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from histosic.commands._args import check_outputs_not_inputs, random_state

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "colors",
        help="colour patches by a 3-D UMAP or PCA of their embeddings (QuPath GeoJSON, PNG)",
        description=(
            "Reduce the embeddings to three dimensions (UMAP fitted on a subsample, or PCA), scale "
            "them to RGB and write one coloured QuPath detection per patch (GeoJSON) and/or a PNG "
            "of the slide painted with the colours. Similar tissue gets similar colours."
        ),
    )
    p.add_argument("embeddings", type=Path, help="embedding file (.h5) from `histosic embed`")
    p.add_argument("--out", type=Path, default=None, help="GeoJSON file of coloured detections")
    p.add_argument("--png", type=Path, default=None, help="PNG of the colours over the slide")
    p.add_argument("--method", choices=("umap", "pca"), default="umap", help="default: umap")
    p.add_argument(
        "--max-fit",
        type=int,
        default=5000,
        help="UMAP is fitted on at most this many patches, the rest placed by neighbours "
        "(default 5000)",
    )
    p.add_argument("--random-state", type=random_state, default=0)
    p.add_argument("--slide", type=Path, default=None, help="slide for the PNG background")
    p.add_argument("--max-size", type=int, default=2048, help="PNG longer side (default 2048)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from histosic.colors import colors_geojson, patch_colors, render_colors
    from histosic.errors import InvalidInputError, OutputExistsError
    from histosic.outputs.geojson import write_geojson
    from histosic.outputs.raster import slide_thumbnail, write_png
    from histosic.store import read_embeddings

    if args.out is None and args.png is None:
        raise InvalidInputError("nothing to write: give --out FILE.geojson and/or --png FILE.png")
    check_outputs_not_inputs(
        {"--out": args.out, "--png": args.png},
        {"the embedding file": args.embeddings, "--slide": args.slide},
    )
    for path in (args.out, args.png):
        if path is not None and path.exists() and not args.overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    emb = read_embeddings(args.embeddings)
    t0 = time.perf_counter()
    rgb = patch_colors(
        emb.features, method=args.method, random_state=args.random_state, max_fit=args.max_fit
    )
    print(f"{emb.n_patches} patches coloured by {args.method} in {time.perf_counter() - t0:.1f} s")
    if args.out is not None:
        write_geojson(
            args.out, colors_geojson(emb, rgb, method=args.method), overwrite=args.overwrite
        )
        print(f"detections: {args.out}")
    if args.png is not None:
        w, h = emb.meta.level0_width, emb.meta.level0_height
        s = min(1.0, args.max_size / max(w, h, 1))
        size = (max(1, round(w * s)), max(1, round(h * s)))
        slide = args.slide if args.slide is not None else emb.meta.slide_path
        thumb = slide_thumbnail(slide, size, mpp=emb.meta.mpp)
        background = None if thumb is None else np.asarray(thumb.convert("RGB"), dtype=np.uint8)
        image = render_colors(emb, rgb, max_size=args.max_size, background=background)
        write_png(args.png, image, overwrite=args.overwrite)
        print(f"picture: {args.png}")
    return 0
