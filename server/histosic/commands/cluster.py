"""``histosic cluster``: cluster one embedding file from QuPath seed points, locally."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

__all__ = ["register", "run"]

_METHODS_HELP = "sic (the paper), seeded-kmeans, centroid, logreg, spreading"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cluster",
        help="cluster a slide's patches from QuPath seed points (local, no server)",
        description=(
            "Map QuPath point annotations (GeoJSON export) to patches of an embedding file, run "
            "seeded iterative clustering and write the result as QuPath GeoJSON (tiles, detections "
            "or region annotations). Import the result in QuPath with File > Import objects or "
            "drag and drop."
        ),
    )
    p.add_argument("embeddings", type=Path, help="embedding file (.h5) from `histosic embed`")
    p.add_argument(
        "--seeds",
        type=Path,
        required=True,
        help="seed points: GeoJSON as QuPath exports point annotations (level-0 pixels)",
    )
    p.add_argument("--out", type=Path, required=True, help="result GeoJSON file to write")
    p.add_argument(
        "--positive",
        default="Tumor",
        help="positive class for binary clustering; all other seed classes form the negative "
        "class (default: %(default)s)",
    )
    p.add_argument(
        "--multiclass", action="store_true", help="keep every seed class as its own class"
    )
    p.add_argument(
        "--method",
        default=None,
        help=f"clustering method: {_METHODS_HELP} (default: histosic.sic.DEFAULT_METHOD)",
    )
    p.add_argument(
        "--raw-features",
        action="store_true",
        help="cluster the raw embeddings as the paper does (no nuisance regression or smoothing)",
    )
    p.add_argument(
        "--output",
        choices=("tiles", "detections", "regions", "both"),
        default="tiles",
        help="QuPath objects to write: a tile or detection per patch, merged region annotations "
        "per class, or tiles and regions (default: %(default)s)",
    )
    p.add_argument("--overlay", type=Path, default=None, metavar="PNG", help="also write a PNG")
    p.add_argument(
        "--slide",
        type=Path,
        default=None,
        help="slide file for the overlay background (default: the path in the embedding file)",
    )
    p.add_argument(
        "--suggest",
        type=int,
        default=0,
        metavar="N",
        help="add the N most useful new seed positions as points of class "
        "'histosic: suggested seed'",
    )
    p.add_argument(
        "--labels-csv",
        type=Path,
        default=None,
        metavar="CSV",
        help="also write x, y (patch centre, level-0 px), class, confidence per patch",
    )
    p.add_argument("--random-state", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--server",
        default=None,
        metavar="HOST:PORT",
        help="cluster on a histosic server instead of locally (the embedding file is then a "
        "name the server knows)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histosic.errors import InvalidInputError, OutputExistsError
    from histosic.outputs.seedfile import read_seeds
    from histosic.store import read_meta

    start = time.perf_counter()
    # Inputs first, so a typo in an input path is reported before an existing output is.
    seed_file = read_seeds(args.seeds)
    if not args.server:
        read_meta(args.embeddings)  # exists and is an embedding file (metadata only: fast)
    outputs = [p for p in (args.out, args.overlay, args.labels_csv) if p is not None]
    if not args.overwrite:
        for p in outputs:
            if p.exists():
                raise OutputExistsError(f"output {p} exists; pass --overwrite to replace it")
    if len({os.path.abspath(p) for p in outputs}) != len(outputs):
        raise InvalidInputError("--out, --overlay and --labels-csv must be different files")
    if args.suggest < 0:
        raise InvalidInputError(f"--suggest must be 0 or more, got {args.suggest}")

    print(seed_file.summary())

    if args.server:
        from histosic.service.client import cluster_via_server

        return int(cluster_via_server(args.server, args=args, seed_file=seed_file))

    from histosic import pipeline
    from histosic.atomic import write_atomic
    from histosic.outputs.geojson import to_geojson_bytes
    from histosic.outputs.labels_csv import write_labels_csv
    from histosic.store import read_embeddings

    t_read = time.perf_counter()
    emb = read_embeddings(args.embeddings)
    read_s = time.perf_counter() - t_read
    preprocess = None
    if args.raw_features:
        from histosic.sic import PAPER_PREPROCESS

        preprocess = PAPER_PREPROCESS
    clustering = pipeline.cluster_slide(
        emb,
        seed_file.points,
        positive=args.positive,
        multiclass=args.multiclass,
        method=args.method,
        suggest=args.suggest,
        random_state=args.random_state,
        preprocess=preprocess,
    )
    print(clustering.summary())
    t_write = time.perf_counter()
    data = to_geojson_bytes(emb, clustering, output=args.output, suggest_points=True)
    write_atomic(args.out, data, overwrite=args.overwrite)
    written = [f"{args.out} ({len(data) / 1e6:.1f} MB, {args.output})"]
    if args.labels_csv is not None:
        write_labels_csv(args.labels_csv, emb, clustering, overwrite=args.overwrite)
        written.append(str(args.labels_csv))
    if args.overlay is not None:
        from histosic.outputs.overlay import write_overlay

        write_overlay(
            args.overlay, emb, clustering, overwrite=args.overwrite, slide_path=args.slide
        )
        written.append(str(args.overlay))
    write_s = time.perf_counter() - t_write
    total = time.perf_counter() - start
    print("wrote " + ", ".join(written))
    print(
        f"total {total:.2f} s (read {read_s:.2f} s, cluster {clustering.elapsed_s:.2f} s, "
        f"write {write_s:.2f} s) for {emb.n_patches} patches"
    )
    return 0
