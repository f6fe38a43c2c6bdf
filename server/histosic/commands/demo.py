"""``histosic demo``: embed a slide with ground truth, cluster from sample seeds, write outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from histosic.config import DEFAULT_MODEL

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end offline (slide -> seeds -> QuPath GeoJSON, overlays, F1)",
        description=(
            "Embed the DigestPath image (from $HISTOSIC_DEMO_DATA or <repo>/../shared/data) or, "
            "when it is absent, a generated slide; place a few seed points inside and outside the "
            "lesion; cluster; write QuPath GeoJSON, an overlay PNG and the colour view; print the "
            "F1 against the ground truth and where every output is. No network needed."
        ),
    )
    p.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        default=Path("histosic-demo"),
        help="output folder (default: ./histosic-demo)",
    )
    p.add_argument("--data", type=Path, default=None, help="folder holding digestpath/0.jpg")
    p.add_argument("--generated", action="store_true", help="use a generated slide")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"backbone (default: {DEFAULT_MODEL})")
    p.add_argument("--method", default=None, help="clustering method (default: the product's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histosic.demo import run_demo

    report = run_demo(
        args.out_dir,
        data_dir=args.data,
        generated=args.generated,
        model=args.model,
        method=args.method,
    )
    print(report.text())
    return 0
