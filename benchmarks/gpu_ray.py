"""For a GPU session: Ray end to end with JPEG tiles decoded on the GPU, against the bare model.

In one run on one machine (a local Ray; all its GPUs become actors):

1. the bare model's rate on ready tensors (``bench_embed.bare_rate``: same model, batch, bf16);
2. ``embed_archive`` with ``decode='cpu'`` (the readers decode, as before) and with
   ``decode='auto'`` (compressed tiles to the GPU actors, nvJPEG), patches/s after the actors'
   start, on the same generated JPEG-tiled slides;
3. the pixels: one batch decoded on the device against the CPU reader's (max difference, share
   of differing values), and the features of both runs (cosine of the first slide).

The issue's goal: decode='auto' reaches at least 80% of the bare model's rate per GPU. On a machine
without a GPU it runs too (``--device cpu`` and small sizes: a check of the script, not a
measurement of the goal). The last line is the machine-readable result.

Usage::

    python benchmarks/gpu_ray.py [--slides 4] [--patches 20000] [--model resnet50-random]
        [--batch-size 256] [--device cuda]
    # the script's check on a CPU machine:
    python benchmarks/gpu_ray.py --device cpu --slides 2 --patches 64 --model resnet18-random \
        --batch-size 16 --ray-cpus 3 --object-store-mb 200
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _stamp(times: list[float], _driver: object) -> None:
    times.append(time.perf_counter())


def _pixels(slide: Path, device: str) -> tuple[int, float]:
    """Max |difference| and share of differing values, device decoding against the CPU reader."""
    import torch

    from histosic.embed.jpeg_tiles import decode_batch, jpeg_level, read_jpeg_batch
    from histosic.embed.pipeline import read_patches, slide_grid
    from histosic.slides import open_slide
    from histosic.tiling import TilingConfig, patch_size_level0

    tiling = TilingConfig()
    with open_slide(slide) as s:
        grid, _ = slide_grid(s, tiling)
        size0 = patch_size_level0(tiling, s.mpp)
        layout = jpeg_level(s, s.best_level_for_downsample(size0 / tiling.patch_size))
        if layout is None:
            raise SystemExit(f"{slide} has no JPEG tiles at the read level (is imagecodecs there?)")
        coords = grid.coords[:256]
        want = read_patches(s, coords, size0, tiling.patch_size)
        batch = read_jpeg_batch(s, coords, size0, tiling.patch_size, layout)
        got = decode_batch(batch, torch.device(device)).cpu().numpy()
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    return int(diff.max()), float((diff > 0).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--patches", type=int, default=20000, help="patches per slide (about)")
    ap.add_argument("--model", default="resnet50-random")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reader-cpus", type=float, default=1.0)
    ap.add_argument("--ray-cpus", type=int, default=None, help="default: all cores")
    ap.add_argument("--object-store-mb", type=int, default=None, help="default: Ray's")
    args = ap.parse_args(argv)

    import ray
    from bench_embed import bare_rate, make_slide, ready_batches

    from histosic.embed.ray_run import RayOptions, embed_archive
    from histosic.store import read_embeddings

    cuda = args.device.startswith("cuda")
    measured: dict[str, float | int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        slides = [make_slide(root / f"s{i}.tiff", args.patches, seed=i) for i in range(args.slides)]
        print(f"{len(slides)} slides of about {args.patches} patches; cores {os.cpu_count()}")
        # The bare model on ready batches of the first slide's own patches.
        ready = ready_batches(
            slides[0], args.model, min(args.patches, 20 * args.batch_size), args.batch_size
        )
        bare = bare_rate(args.model, ready, args.device)
        measured["bare_patches_per_s"] = round(bare, 1)
        print(f"bare model: {bare:9.1f} patches/s")
        max_diff, share = _pixels(slides[0], args.device)
        measured["pixels_max_diff"] = max_diff
        measured["pixels_share_differing"] = round(share, 6)
        print(f"device decoding vs CPU reader: max |diff| {max_diff}, {100 * share:.3f}% differ")

        ray.init(
            num_cpus=args.ray_cpus,
            object_store_memory=None
            if args.object_store_mb is None
            else args.object_store_mb << 20,
            include_dashboard=False,
            log_to_driver=False,
        )
        outputs: dict[str, Path] = {}
        try:
            for decode in ("cpu", "auto" if cuda else "device"):
                started: list[float] = []
                t0 = time.perf_counter()
                report = embed_archive(
                    slides,
                    root / decode,
                    ray=RayOptions(address="auto", decode=decode, reader_cpus=args.reader_cpus),
                    model=args.model,
                    batch_size=args.batch_size,
                    device="cuda" if cuda else "cpu",
                    on_start=functools.partial(_stamp, started),
                )
                t_end = time.perf_counter()
                assert report.count("done") == len(slides), report.summary()
                n = report.patches_embedded()
                rate = n / (t_end - started[0])
                measured[f"decode_{decode}_patches_per_s"] = round(rate, 1)
                measured[f"decode_{decode}_of_bare"] = round(rate / bare, 3)
                print(
                    f"Ray, decode={decode:6s}: {rate:9.1f} patches/s after the actors' start "
                    f"({100 * rate / bare:5.1f}% of bare; whole call {n / (t_end - t0):.1f}/s; "
                    f"{report.cluster.get('actors')} actors, {report.cluster.get('gpus')} GPUs)"
                )
                outputs[decode] = Path(report.slides[0].output or "")
        finally:
            ray.shutdown()
        a, b = (read_embeddings(p).features.astype(np.float64) for p in outputs.values())
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        measured["features_min_cosine"] = round(float(cos.min()), 6)
        print(f"features, device vs CPU decoding: min cosine {cos.min():.6f}")
    key = "decode_auto_of_bare" if cuda else "decode_device_of_bare"
    result = {
        "benchmark": "gpu_ray",
        "target": "decode=auto (nvJPEG on the actors) >= 80% of the bare model's rate per GPU",
        "measured": measured,
        "holds": bool(cuda and measured.get(key, 0.0) >= 0.8),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
