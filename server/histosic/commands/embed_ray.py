"""``histosic embed --ray``: the flags and the run of an archive on a Ray cluster (docs/RAY.md).

Not a subcommand of its own: :mod:`histosic.commands.embed` adds these flags and hands the run
here when ``--ray`` is given. Ray itself is imported only by :mod:`histosic.embed.ray_run`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from histosic.embed.ray_run import RayOptions
    from histosic.slides import TissueConfig
    from histosic.tiling import TilingConfig

__all__ = ["add_ray_flags", "ray_options", "run_ray"]

#: The report's name in the output folder when --report is not given.
REPORT_NAME = "histosic-embed-report.json"


def add_ray_flags(p: argparse.ArgumentParser, *, report: bool = True) -> None:
    """``--ray [ADDRESS]`` and its companions (shared by ``embed`` and ``serve``)."""
    g = p.add_argument_group("Ray (pip install 'histosic[ray]'; docs/RAY.md)")
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: 'local' (the default when ADDRESS is left out: a Ray started here, on "
        "loopback), 'auto' (this machine's cluster or RAY_ADDRESS) or the head's HOST:PORT",
    )
    g.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    g.add_argument(
        "--ray-object-store-mb",
        type=int,
        default=None,
        help="object store of a local Ray in MiB (default: Ray's)",
    )
    g.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        help="inference actors (default: one per GPU of the cluster, one without GPUs)",
    )
    g.add_argument(
        "--ray-actor-cpus",
        type=float,
        default=1.0,
        help="CPUs each inference actor holds; its torch threads without a GPU (default 1)",
    )
    g.add_argument(
        "--ray-decode",
        choices=("auto", "device", "cpu"),
        default="auto",
        help="where JPEG tiles are decoded: auto (on the actors' GPUs, nvJPEG, where the slide "
        "has JPEG tiles), device (on the actors, also without a GPU) or cpu (the readers)",
    )
    if report:
        g.add_argument(
            "--report",
            type=Path,
            default=None,
            help=f"the run's JSON report: each slide's outcome (default: OUT/{REPORT_NAME})",
        )


def ray_options(args: argparse.Namespace) -> RayOptions:
    """The :class:`~histosic.embed.ray_run.RayOptions` of the parsed flags (validated)."""
    from histosic.embed.ray_run import RayOptions

    return RayOptions(
        address=args.ray,
        num_cpus=args.ray_cpus,
        object_store_mb=args.ray_object_store_mb,
        actors=args.ray_actors,
        actor_cpus=args.ray_actor_cpus,
        decode=args.ray_decode,
    ).validate()


def run_ray(args: argparse.Namespace, tiling: TilingConfig, tissue: TissueConfig) -> int:
    """Embed ``args.slides`` on Ray; progress on stderr, paths and the summary table on stdout."""
    from histosic.embed.ray_report import ArchiveProgress, format_progress, format_table
    from histosic.embed.ray_run import embed_archive

    options = ray_options(args)
    out: Path = args.out
    report_path: Path = args.report or (
        out.parent / REPORT_NAME if out.suffix.lower() in (".h5", ".hdf5") else out / REPORT_NAME
    )
    quiet = bool(getattr(args, "quiet", False))
    last = [0.0]

    def progress(p: ArchiveProgress) -> None:
        now = time.monotonic()
        if quiet or (now - last[0] < 2.0 and p.slides_finished < p.slides_total):
            return
        last[0] = now
        print(f"histosic embed: {format_progress(p)}", file=sys.stderr, flush=True)

    report = embed_archive(
        args.slides,
        out,
        ray=options,
        model=args.model,
        tiling=tiling,
        tissue=tissue,
        slide_mpp=args.slide_mpp,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
        dtype=args.dtype,
        progress=progress,
        report=report_path,
    )
    for s in report.slides:
        if s.status == "failed":
            print(f"histosic embed: error: {s.slide}: {s.error}", file=sys.stderr)
    print(format_table(report))
    print(f"report: {report_path}")
    failed = len(report.failed)
    if failed:
        print(f"histosic embed: {failed} of {len(report.slides)} slides failed", file=sys.stderr)
        return 1
    return 0
