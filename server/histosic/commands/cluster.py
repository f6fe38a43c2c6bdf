"""``histosic cluster``: cluster an embedding file from QuPath seed points (here or on a server)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from histosic.commands._args import add_cluster_options, check_outputs_not_inputs, cluster_options

if TYPE_CHECKING:
    from histosic.cluster import ClusterOptions, SlideClustering
    from histosic.outputs.seedfile import SeedFile
    from histosic.store import Embeddings

__all__ = ["register", "run"]


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
    add_cluster_options(
        p,
        output_help="QuPath objects to write: a tile or detection per patch, merged region "
        "annotations per class, or tiles and regions",
    )
    p.add_argument("--overlay", type=Path, default=None, metavar="PNG", help="also write a PNG")
    p.add_argument(
        "--slide",
        type=Path,
        default=None,
        help="slide file for the overlay background (default: the path in the embedding file)",
    )
    p.add_argument(
        "--labels-csv",
        type=Path,
        default=None,
        metavar="CSV",
        help="also write x, y (patch centre, level-0 px), class, confidence per patch",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="cluster on a histosic server instead of locally (the embedding file is then a "
        "name the server knows): HOST:PORT or grpc://HOST:PORT (gRPC), grpcs://HOST:PORT (gRPC "
        "over TLS), https://HOST:PORT or http://HOST:PORT (the Connect port)",
    )
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="PEM",
        help="with --server: the CA (or self-signed) certificate the server's TLS certificate "
        "must chain to (default: the system's trusted authorities)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histosic.errors import InvalidInputError, OutputExistsError
    from histosic.outputs.seedfile import read_seeds
    from histosic.store import read_meta

    start = time.perf_counter()
    options = cluster_options(args)  # bad flag values first: they need no file
    check_outputs_not_inputs(
        {"--out": args.out, "--overlay": args.overlay, "--labels-csv": args.labels_csv},
        {"the embedding file": args.embeddings, "--seeds": args.seeds, "--slide": args.slide},
    )
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

    print(seed_file.summary())

    if args.server:
        return _run_remote(args, seed_file, options)

    from histosic.atomic import write_atomic
    from histosic.cluster import cluster_slide
    from histosic.outputs.geojson import to_geojson_bytes
    from histosic.store import read_embeddings

    t_read = time.perf_counter()
    emb = read_embeddings(args.embeddings)
    if options.preprocess.regress_nuisance:
        from histosic.patches import complete_fractions

        # Trident and CLAM files carry no tissue or white fractions: compute them from the slide.
        emb, note = complete_fractions(emb, args.slide)
        if note:
            print(note, file=sys.stderr)
    read_s = time.perf_counter() - t_read
    clustering = cluster_slide(emb, seed_file.points, options)
    print(clustering.summary())
    t_write = time.perf_counter()
    data = to_geojson_bytes(emb, clustering, output=options.output, suggest_points=True)
    write_atomic(args.out, data, overwrite=args.overwrite)
    written = [f"{args.out} ({len(data) / 1e6:.1f} MB, {options.output})"]
    written += _write_extras(args, emb, clustering)
    write_s = time.perf_counter() - t_write
    total = time.perf_counter() - start
    print("wrote " + ", ".join(written))
    print(
        f"total {total:.2f} s (read {read_s:.2f} s, cluster {clustering.elapsed_s:.2f} s, "
        f"write {write_s:.2f} s) for {emb.n_patches} patches"
    )
    return 0


def _run_remote(args: argparse.Namespace, seed_file: SeedFile, options: ClusterOptions) -> int:
    """``--server HOST:PORT``: cluster on the server, write the outputs here.

    ``args.embeddings`` is an embedding file present locally (then the server finds its own copy
    by the slide's fingerprint and the model) or an embedding id the server knows. The labels CSV
    and the overlay need the local file: the clustering is rebuilt from the server's answer and it.
    """
    from histosic import config
    from histosic.errors import InvalidInputError
    from histosic.outputs.geojson import write_geojson
    from histosic.service.client import cluster_remote, embedding_ref, to_slide_clustering
    from histosic.store import read_embeddings

    local: Path = args.embeddings
    needs_local = args.labels_csv is not None or args.overlay is not None
    if needs_local and not local.is_file():
        raise InvalidInputError(
            f"--labels-csv and --overlay with --server need the embedding file locally; "
            f"{local} does not exist here"
        )
    remote = cluster_remote(
        args.server,
        embedding_ref(local),
        seed_file.points,
        options,
        token=config.current().token,
        tls_ca=args.tls_ca,
    )
    print(remote.summary())
    if remote.geojson is None:
        raise InvalidInputError(
            f"the server at {args.server} sent no GeoJSON for output {options.output!r}"
        )
    write_geojson(args.out, remote.geojson, overwrite=args.overwrite)
    written = [f"{args.out} ({len(remote.geojson['features'])} objects, {options.output})"]
    if needs_local:
        emb = read_embeddings(local)
        clustering = to_slide_clustering(remote, emb, seed_file.points, options)
        written += _write_extras(args, emb, clustering)
    print("wrote " + ", ".join(written))
    return 0


def _write_extras(
    args: argparse.Namespace, emb: Embeddings, clustering: SlideClustering
) -> list[str]:
    """``--labels-csv`` and ``--overlay``, where asked for; returns what was written."""
    from histosic.outputs.labels_csv import write_labels_csv

    written = []
    if args.labels_csv is not None:
        write_labels_csv(args.labels_csv, emb, clustering, overwrite=args.overwrite)
        written.append(str(args.labels_csv))
    if args.overlay is not None:
        from histosic.outputs.overlay import write_overlay

        write_overlay(
            args.overlay, emb, clustering, overwrite=args.overwrite, slide_path=args.slide
        )
        written.append(str(args.overlay))
    return written
