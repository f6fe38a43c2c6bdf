"""``histosic batch``: cluster every image of a QuPath project that has seed points (paquo)."""

from __future__ import annotations

import argparse
import sys

from histosic.commands._args import add_cluster_options, cluster_options


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "batch",
        help="cluster every image of a QuPath project from its point annotations (needs QuPath)",
        description=(
            "For each image of a QuPath project: read its classified point annotations, find its "
            "embedding in --store (by slide fingerprint), cluster, and write the result into the "
            "project (replacing an earlier histosic run). Images whose seeds and options did not "
            "change are skipped unless --overwrite. Needs paquo and QuPath (PAQUO_QUPATH_DIR)."
        ),
    )
    p.add_argument("project", help="QuPath project folder or project.qpproj")
    p.add_argument(
        "--store", required=True, help="folder with embedding files (histosic embed --out)"
    )
    add_cluster_options(
        p, output_help="objects written into the project", raw_features_and_seed=False
    )
    p.add_argument("--model", default="", help="use only embeddings of this model")
    p.add_argument("--overwrite", action="store_true", help="re-cluster unchanged images too")
    p.add_argument("--report", default=None, help="where to write the run's JSON report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histosic.batch import run_batch

    def progress(done: int, total: int, name: str) -> None:
        if name:
            print(f"[{done + 1}/{total}] {name}", file=sys.stderr)

    report = run_batch(
        args.project,
        cluster_options(args),
        store=args.store,
        model=args.model,
        overwrite=args.overwrite,
        report_path=args.report,
        progress=progress,
    )
    for o in report.images:
        print(f"{o.image}: {o.status}" + (f" ({o.detail})" if o.detail else ""))
    counts = report.counts()
    print("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if counts.get("error") else 0
