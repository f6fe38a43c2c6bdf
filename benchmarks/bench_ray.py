"""Slides per minute on a local Ray (1 and 2 inference actors) against the plain pipeline.

In one run, on the same generated JPEG-tiled slides and the same model:

1. the single-process pipeline (``embed_slide`` per slide, reading in-process: ``--workers 0``);
2. ``embed_archive`` on a local Ray with 1 actor (and its readers), then with 2 actors.

Ray's start (the cluster, once) and each run's actor start (the model loaded) are timed apart;
the overhead Ray adds per slide is ``(Ray run - actor start - single-process) / slides``. Each
run writes its own folder, so every slide is embedded in every run. The last line is the
machine-readable result. On a 2-core machine the second actor has no core of its own; the figure
for N GPUs is in docs/RAY.md.

Usage::

    python benchmarks/bench_ray.py [--slides 6] [--patches 64] [--model he-features]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _stamp(times: list[float], _driver: object) -> None:
    times.append(time.perf_counter())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--patches", type=int, default=64, help="patches per slide (about)")
    ap.add_argument("--model", default="he-features")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--actors", default="1,2", help="comma-separated actor counts")
    ap.add_argument("--object-store-mb", type=int, default=200)
    args = ap.parse_args(argv)

    import ray
    import torch
    from bench_embed import make_slide

    from histosic.embed.pipeline import embed_slide
    from histosic.embed.ray_run import RayOptions, embed_archive

    torch.set_num_threads(1)
    actor_counts = [int(a) for a in args.actors.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        slides = [make_slide(root / f"s{i}.tiff", args.patches, seed=i) for i in range(args.slides)]
        print(f"{len(slides)} slides of about {args.patches} patches; cores {os.cpu_count()}")

        t0 = time.perf_counter()
        for s in slides:
            embed_slide(s, root / "single", model=args.model, batch_size=args.batch_size, workers=0)
        t_single = time.perf_counter() - t0
        print(f"single process: {t_single:7.2f} s  {60 * len(slides) / t_single:6.2f} slides/min")

        # One logical CPU per actor plus one for the readers.
        t0 = time.perf_counter()
        ray.init(
            num_cpus=max(actor_counts) + 1,
            object_store_memory=args.object_store_mb << 20,
            include_dashboard=False,
            log_to_driver=False,
        )
        t_cluster = time.perf_counter() - t0
        print(f"Ray start:      {t_cluster:7.2f} s (once)")
        measured: dict[str, float] = {
            "single_slides_per_min": round(60 * len(slides) / t_single, 3),
            "ray_start_s": round(t_cluster, 2),
        }
        try:
            for n in actor_counts:
                started: list[float] = []
                t0 = time.perf_counter()
                report = embed_archive(
                    slides,
                    root / f"ray{n}",
                    ray=RayOptions(actors=n),
                    model=args.model,
                    batch_size=args.batch_size,
                    on_start=functools.partial(_stamp, started),
                )
                t_run = time.perf_counter() - t0
                t_actors = started[0] - t0
                assert report.count("done") == len(slides), report.summary()
                per_slide = (t_run - t_actors - t_single) / len(slides)
                print(
                    f"Ray, {n} actor{'s' if n > 1 else ' '}: {t_run:7.2f} s  "
                    f"{60 * len(slides) / t_run:6.2f} slides/min  (actor start {t_actors:.2f} s, "
                    f"{60 * len(slides) / (t_run - t_actors):6.2f} slides/min after it; "
                    f"overhead {per_slide:+.3f} s per slide)"
                )
                measured[f"ray{n}_slides_per_min"] = round(60 * len(slides) / t_run, 3)
                measured[f"ray{n}_actor_start_s"] = round(t_actors, 2)
                measured[f"ray{n}_overhead_s_per_slide"] = round(per_slide, 3)
        finally:
            ray.shutdown()
    result = {
        "benchmark": "ray",
        "target": "Ray (1 actor) adds at most 1 s per slide over the single-process pipeline, "
        "actor start aside",
        "measured": measured,
        "holds": measured.get("ray1_overhead_s_per_slide", 1e9) <= 1.0,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
