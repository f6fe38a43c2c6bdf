"""Where does embedding time go? Patch reading alone, in one process and in DataLoader workers.

``bench_embed.py`` compares the whole pipeline with the bare model; when the pipeline is far
below the model, this script tells whether patch reading is the limit, and how it scales with
workers and with where the resize happens (in the workers with PIL, or later on the device):

1. one process: batches of ``read_patches`` (+ white fractions) at the network size (224 px,
   resized in the reader) and at the tiling size (256 px, no resize), patches/s per core;
2. the embedding pipeline's DataLoader alone (no model) for several worker counts, at both sizes;
3. the same plus the host-to-device copy and the on-device preprocessing (``_Preprocess``), when a
   GPU is present.

Usage::

    python benchmarks/bench_loader.py [--patches 20000] [--batch-size 256] [--workers 8,15,30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", default="1", help="comma-separated worker counts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--slide", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    from bench_embed import make_slide

    from histosic.embed.pipeline import (
        _iterate,
        _PatchBatches,
        _Preprocess,
        resolve_device,
        slide_grid,
    )
    from histosic.embed.registry import load_model
    from histosic.slides import open_slide
    from histosic.tiling import TilingConfig

    dev = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = args.slide or make_slide(Path(tmp) / "bench.tiff", args.patches)
        print(f"slide {path} made in {time.perf_counter() - t0:.1f} s; cores {os.cpu_count()}")
        with open_slide(path) as slide:
            grid, _ = slide_grid(slide, TilingConfig(tissue_threshold=0.5))
            mpp, backend = slide.mpp, slide.backend
        n = len(grid)
        print(f"{n} patches, reader {backend}, batch {args.batch_size}")

        def dataset(size: int) -> _PatchBatches:
            return _PatchBatches(
                path, mpp, grid.coords, grid.patch_size_level0, size, args.batch_size, 0,
                backend=backend,
            )  # fmt: skip

        measured: dict[str, float] = {}
        for size in (224, 256):
            ds = dataset(size)
            k = min(len(ds), 6)
            ds[0]
            t = time.perf_counter()
            for i in range(1, k):
                ds[i]
            dt = time.perf_counter() - t
            print(f"one process, {size} px: {(k - 1) * args.batch_size / dt:8.0f} patches/s")
            measured[f"one_process_{size}px"] = round((k - 1) * args.batch_size / dt, 1)

        loaded = load_model("resnet18-random")
        prep = _Preprocess(loaded, dev)
        for w in (int(x) for x in args.workers.split(",")):
            for size in (224, 256):
                for with_device in (False, True) if dev.type == "cuda" else (False,):
                    ds = dataset(size)
                    t = time.perf_counter()
                    got = 0
                    first = None
                    for patches, _white, _lo in _iterate(ds, w, dev):
                        if with_device:
                            x = prep(patches)
                            torch.cuda.synchronize(dev)
                            del x
                        got += patches.shape[0]
                        if first is None:
                            first = (time.perf_counter(), got)
                    end = time.perf_counter()
                    assert first is not None
                    steady = (got - first[1]) / max(end - first[0], 1e-9)
                    label = "+ copy & prep on device" if with_device else "loader only"
                    print(
                        f"workers {w:2d}, {size} px, {label:24s}: whole {got / (end - t):8.0f}, "
                        f"steady {steady:8.0f} patches/s",
                        flush=True,
                    )
                    key = f"workers_{w}_{size}px" + ("_device" if with_device else "")
                    measured[key] = round(steady, 1)
    # The last line, for scripts. A diagnosis, not a target: it tells whether reading is the
    # limit of bench_embed.py.
    print(
        json.dumps(
            {
                "benchmark": "loader",
                "target": "none (diagnostic: patch reading rate, patches/s steady)",
                "measured": measured,
                "holds": None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
