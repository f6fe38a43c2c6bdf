"""Foundation-model embedding on the CPU against the bare model's forward pass, in one run.

For a ViT-S/16 (``kaiko-vits16``) and a ViT-L/16 (``uni``), each with random weights in the exact
architecture given as ``--weights`` (no hub), measures side by side on one synthetic pyramidal
slide per model (``bench_embed.make_slide``, 256 px patches at 0.5 um/px, resized to 224 px by
the readers):

1. the bare model: ``module(x)`` on ready, normalised ``channels_last`` tensors (the pooled
   foundation module histosic runs), before and after the pipeline run;
2. the pipeline: ``embed_slide`` from the slide to the finished HDF5 file, steady state (first to
   last batch) and whole call.

The issue's target: on a CPU the pipeline keeps at least 90% of the bare model's forward rate
(steady state), for both sizes. Ends with one machine-readable JSON line.

Usage::

    python benchmarks/bench_foundation.py [--small-patches 192] [--large-patches 48]
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

from bench_embed import bare_rate, make_slide, pipeline_rate, ready_batches

TARGET = 0.90


def _random_weights(name: str, path: Path) -> Path:
    """Random weights of the model's exact architecture, as the hub would hold them."""
    import torch
    from safetensors.torch import save_file

    from histosic.embed.builders.foundation import architecture
    from histosic.embed.foundation import by_name

    torch.manual_seed(0)
    model, _ = architecture(by_name(name))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--small-patches", type=int, default=192, help="patches for the ViT-S/16")
    ap.add_argument("--large-patches", type=int, default=48, help="patches for the ViT-L/16")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: auto)")
    args = ap.parse_args(argv)

    import torch

    cases = (
        ("kaiko-vits16", "ViT-S/16", args.small_patches, 32),
        ("uni", "ViT-L/16", args.large_patches, 16),
    )
    measured: dict[str, dict[str, float]] = {}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cores {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        for name, arch, n_patches, batch in cases:
            weights = _random_weights(name, tmpd / f"{name}.safetensors")
            model = f"{name}:{weights}"
            slide = make_slide(tmpd / f"{name}.tiff", n_patches)
            n_bare = min(n_patches, 4 * batch)
            ready = ready_batches(slide, model, n_bare, batch)  # the slide's own patches
            bare1 = bare_rate(model, ready, "cpu")
            t0 = time.perf_counter()
            whole, steady, n = pipeline_rate(
                slide, tmpd / f"{name}.h5", model, batch, args.workers, "cpu"
            )
            took = time.perf_counter() - t0
            bare2 = bare_rate(model, ready, "cpu")
            bare = (bare1 + bare2) / 2
            measured[arch] = {
                "patches": n,
                "batch": batch,
                "bare_patches_per_s": round(bare, 2),
                "bare_before": round(bare1, 2),
                "bare_after": round(bare2, 2),
                "pipeline_steady_patches_per_s": round(steady, 2),
                "pipeline_whole_patches_per_s": round(whole, 2),
                "steady_ratio": round(steady / bare, 3),
                "whole_ratio": round(whole / bare, 3),
                "pipeline_s": round(took, 1),
            }
            print(
                f"{arch} ({name}): {n} patches, bare {bare:.2f} (before {bare1:.2f}, after "
                f"{bare2:.2f}), pipeline steady {steady:.2f} ({steady / bare:.1%}), whole call "
                f"{whole:.2f} ({whole / bare:.1%}) patches/s"
            )
    holds = all(m["steady_ratio"] >= TARGET for m in measured.values())
    line = {
        "benchmark": "bench_foundation",
        "target": "CPU pipeline steady state >= 90% of the bare forward, ViT-S/16 and ViT-L/16",
        "measured": measured,
        "holds": holds,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
