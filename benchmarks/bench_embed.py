"""End-to-end embedding speed against the bare model's forward pass, measured in one run.

Generates a synthetic JPEG-tiled pyramidal TIFF (tissue over most of it), then measures

1. the bare model: ``model(x)`` on ready, normalised tensors of the slide's own patches (the
   pipeline's grid, reader and preprocessing, read once before timing) under
   ``torch.inference_mode`` (same model, memory format, batch size and threads);
2. the pipeline: :func:`histosic.embed.pipeline.embed_slide` from the slide file to the finished
   HDF5 file (tissue detection, model set-up, DataLoader workers reading and resizing patches,
   inference, writing), both for the whole call and for its steady state (first to last batch);

and prints patches/s and the ratios, then a JSON line for scripts. Target on a CPU with
resnet18: the whole call reaches at least 90% of the bare model's rate.

Usage::

    python benchmarks/bench_embed.py [--model resnet18-random] [--patches 512] [--batch-size 64]
        [--threads N] [--workers N] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

_TILE = 256
_TEXTURE = 2048  # side of the periodic texture the slide is tiled from (a multiple of _TILE)


def _texture(seed: int) -> npt.NDArray[np.uint8]:
    """An H&E-like texture: pink stroma with shading, noise and purple nuclei-sized specks."""
    rng = np.random.default_rng(seed)
    n = _TEXTURE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    # Periodic shading so that tiling the texture leaves no seams.
    shade = (np.sin(2 * np.pi * 5 * xx / n) + np.cos(2 * np.pi * 9 * yy / n)) * 12.0
    base = np.array([214, 120, 170], np.float32)
    img: npt.NDArray[np.uint8] = np.clip(
        base + shade[..., None] + rng.normal(0, 14, (n, n, 3)), 0, 255
    ).astype(np.uint8)
    img[rng.random((n, n)) < 0.08] = (110, 60, 150)
    return img


def _half(img: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    p = img.astype(np.float32)
    return ((p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) / 4).astype(np.uint8)


def make_slide(path: Path, n_patches: int, mpp: float = 0.5, seed: int = 0) -> Path:
    """A pyramidal TIFF at ``mpp`` whose tissue fills a 256-px, 50%-overlap grid of ~n patches.

    Tiles are generated lazily from a periodic texture, so a slide of any size takes little
    memory; JPEG tiles when imagecodecs is installed (as scanners write), else deflate.
    """
    import tifffile

    try:
        import imagecodecs  # noqa: F401

        compression = "jpeg"
    except ImportError:
        compression = "zlib"
    side = int(math.ceil(math.sqrt(n_patches)))
    cols, rows = side, int(math.ceil(n_patches / side))
    w, h = 128 * (cols + 1), 128 * (rows + 1)
    textures = [_texture(seed)]
    level_sizes = [(h, w)]
    while max(level_sizes[-1]) > 1024:
        lh, lw = level_sizes[-1]
        level_sizes.append((lh // 2, lw // 2))
        textures.append(np.tile(_half(textures[-1]), (2, 2, 1)))  # keep it _TEXTURE wide

    def tiles(level: int):  # type: ignore[no-untyped-def]
        tex = textures[level]
        lh, lw = level_sizes[level]
        for ty in range(0, lh, _TILE):
            for tx in range(0, lw, _TILE):
                yield tex[
                    ty % _TEXTURE : ty % _TEXTURE + _TILE, tx % _TEXTURE : tx % _TEXTURE + _TILE
                ]

    ppcm = 1e4 / mpp
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, (lh, lw) in enumerate(level_sizes):
            r = ppcm / 2**i
            tw.write(
                tiles(i), shape=(lh, lw, 3), dtype=np.uint8, tile=(_TILE, _TILE),
                photometric="rgb", compression=compression, resolution=(r, r),
                compressionargs={"level": 80} if compression == "jpeg" else None,
                resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1,
            )  # fmt: skip
    return path


def ready_batches(slide_path: Path, model_name: str, n: int, batch: int) -> list[Any]:
    """The first ``n`` patches the pipeline embeds, read once and preprocessed as it does them
    (same grid, reader, resize and normalisation): the bare model's input."""
    import torch

    from histosic.embed.pipeline import _Preprocess, _read_size, read_patches, slide_grid
    from histosic.embed.registry import load_model
    from histosic.slides import open_slide
    from histosic.tiling import TilingConfig

    loaded = load_model(model_name)
    cpu = torch.device("cpu")
    with open_slide(slide_path) as slide:
        tiling = TilingConfig(tissue_threshold=0.5)
        grid, _ = slide_grid(slide, tiling)
        coords = grid.coords[:n]
        size = _read_size(tiling.patch_size, loaded.info, cpu)
        patches = read_patches(slide, coords, grid.patch_size_level0, size)
    prep = _Preprocess(loaded, cpu)
    return [prep(torch.from_numpy(patches[i : i + batch])) for i in range(0, len(patches), batch)]


def bare_rate(model_name: str, batches: list[Any], device: str) -> float:
    """Patches/s of the bare model on ready batches of real patches (after warm-up), the
    pipeline's upper bound.

    Same precision as the pipeline (the model's own on CUDA, fp32 on the CPU), the same memory
    format and the same cuDNN autotuning; only the forward passes are
    timed. Some extractors' cost depends on the pixels (he-features), so the input is the
    slide's own patches, never random numbers.
    """
    import torch

    from histosic.embed.pipeline import autocast, resolve_device
    from histosic.embed.registry import load_model

    dev = resolve_device(device)
    loaded = load_model(model_name)
    module = loaded.module.to(dev)
    if dev.type != "cpu" or any(p.dim() == 4 for p in module.parameters()):
        module = module.to(memory_format=torch.channels_last)
    xs = [x.to(dev) for x in batches]
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ctx = autocast(dev, loaded.info.precision)  # the pipeline's precision for this model
    with torch.inference_mode(), ctx:
        module(xs[0])  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in xs:
            module(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return sum(int(x.shape[0]) for x in xs) / dt


def pipeline_rate(
    slide: Path, out: Path, model_name: str, batch: int, workers: int | None, device: str
) -> tuple[float, float, int]:
    """(whole-call patches/s, steady-state patches/s, n patches) of embed_slide."""
    from histosic.embed.pipeline import embed_slide
    from histosic.store import read_meta
    from histosic.tiling import TilingConfig

    stamps: list[tuple[float, int]] = []

    def progress(done: int, total: int) -> None:
        stamps.append((time.perf_counter(), done))

    t0 = time.perf_counter()
    path = embed_slide(
        slide, out, model=model_name, tiling=TilingConfig(tissue_threshold=0.5),
        batch_size=batch, workers=workers, device=device, overwrite=True, progress=progress,
    )  # fmt: skip
    total_dt = time.perf_counter() - t0
    n = stamps[-1][1]
    assert read_meta(path).patch_size == 256
    # Steady state: from the end of the first batch to the end of the last (excludes set-up and
    # the first batch's worker start-up).
    (t1, d1), (t2, d2) = stamps[1], stamps[-1]
    steady = (d2 - d1) / (t2 - t1) if t2 > t1 else float("nan")
    return n / total_dt, steady, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="resnet18-random")
    ap.add_argument("--patches", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: auto)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (median reported)")
    ap.add_argument(
        "--slide", type=Path, default=None, help="use this slide instead of a synthetic one"
    )
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        t0 = time.perf_counter()
        slide = args.slide or make_slide(tmpd / "bench.tiff", args.patches)
        print(
            f"slide: {slide} ({os.path.getsize(slide) / 1e6:.1f} MB, "
            f"made in {time.perf_counter() - t0:.1f} s)"
        )
        print(
            f"model {args.model}, batch {args.batch_size}, "
            f"torch threads {torch.get_num_threads()}, device {args.device}, "
            f"cores {os.cpu_count()}, torch {torch.__version__}"
        )
        # Bare model before and after each pipeline run: load from other processes shows as a
        # gap between the two; with --repeat the median of the rounds is reported.
        n_bare = min(args.patches, 20 * args.batch_size)
        ready = ready_batches(slide, args.model, n_bare, args.batch_size)
        rounds: list[tuple[float, float, float]] = []
        n = 0
        for r in range(args.repeat):
            bare1 = bare_rate(args.model, ready, args.device)
            whole, steady, n = pipeline_rate(
                slide, tmpd / "out.h5", args.model, args.batch_size, args.workers, args.device
            )
            bare2 = bare_rate(args.model, ready, args.device)
            bare = (bare1 + bare2) / 2
            rounds.append((bare, steady, whole))
            print(
                f"round {r + 1}: bare {bare:.1f} (before {bare1:.1f}, after {bare2:.1f}), "
                f"pipeline steady {steady:.1f}, whole call {whole:.1f} patches/s"
            )
    bare, steady, whole = (float(np.median([x[i] for x in rounds])) for i in range(3))
    ratio_steady = float(np.median([x[1] / x[0] for x in rounds]))
    ratio_whole = float(np.median([x[2] / x[0] for x in rounds]))
    print(f"patches embedded:            {n}")
    print(f"bare model forward:          {bare:8.1f} patches/s")
    print(f"pipeline, steady state:      {steady:8.1f} patches/s  ({ratio_steady:6.1%} of bare)")
    print(f"pipeline, whole call:        {whole:8.1f} patches/s  ({ratio_whole:6.1%} of bare)")
    # The last line, for scripts: target, measured, holds.
    result = {
        "benchmark": "embed",
        "model": args.model,
        "target": "pipeline whole call >= 90% of the bare model's rate on the same real patches",
        "measured": {
            "patches": n,
            "bare_per_s": round(bare, 1),
            "steady_per_s": round(steady, 1),
            "whole_per_s": round(whole, 1),
            "steady_ratio": round(ratio_steady, 4),
            "whole_ratio": round(ratio_whole, 4),
        },
        "holds": ratio_whole >= 0.9,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
