"""Train the SimCLR backbones of docs/EVALUATION.md on a GPU (``histosic.embed.pretrain``).

Two ResNet-18 checkpoints, each trained for a fixed time budget on unlabelled tissue regions at
1 um/px (192 px regions, 128 px inputs):

- ``simclr-all.pt``: all 98 WSSS4LUAD images and DigestPath image 0, i.e. the slides that are then
  clustered (the paper's "SimCLR on the dataset", and how a user would run ``histosic pretrain``
  on a cohort);
- ``simclr-testing.pt``: only the WSSS4LUAD ``testing`` split and DigestPath, so that mosaics built
  from the ``validation`` split (``histosic mosaic --split validation``) are tiles the network has
  never seen.

The WSSS4LUAD PNGs are 1 um/px, the DigestPath JPEG 0.5 um/px, hence the API rather than the CLI
(whose ``--slide-mpp`` is one value for all slides)::

    python benchmarks/gpu_pretrain.py DATA_DIR OUT_DIR [--seconds 150] [--batch-size 512]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "data", type=Path, help="folder with wsss4luad/{testing,validation}/img, digestpath/0.jpg"
    )
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float, default=150.0, help="training time per model")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--only", choices=("all", "testing"), default=None)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()

    from histosic.embed.pretrain import PretrainConfig, collect_regions, pretrain_simclr

    cfg = PretrainConfig(
        batch_size=args.batch_size,
        steps=100_000,
        time_limit=args.seconds,
        overlap=0.75,
    )
    wsss = args.data / "wsss4luad"
    testing = sorted((wsss / "testing" / "img").glob("*.png"))
    validation = sorted((wsss / "validation" / "img").glob("*.png"))
    dp = [args.data / "digestpath" / "0.jpg"]
    t0 = time.perf_counter()
    r_test = collect_regions(testing, cfg, slide_mpp=1.0)
    r_val = collect_regions(validation, cfg, slide_mpp=1.0)
    r_dp = collect_regions(dp, cfg, slide_mpp=0.5)
    print(
        f"regions: testing {len(r_test)}, validation {len(r_val)}, digestpath {len(r_dp)} "
        f"({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    runs = {
        "all": (testing + validation + dp, np.concatenate([r_test, r_val, r_dp])),
        "testing": (testing + dp, np.concatenate([r_test, r_dp])),
    }
    summary = {}
    for name, (slides, regions) in runs.items():
        if args.only and name != args.only:
            continue

        def progress(step: int, total: int, loss: float, name: str = name) -> None:
            if step % 200 == 0 or step == total:
                print(f"[{name}] step {step}/{total} loss {loss:.4f}", flush=True)

        res = pretrain_simclr(
            slides,
            args.out / f"simclr-{name}.pt",
            cfg,
            device=args.device,
            overwrite=True,
            progress=progress,
            regions=regions,
        )
        summary[name] = {
            "regions": res.n_regions,
            "steps": res.steps,
            "seconds": round(res.seconds, 1),
            "views_per_second": round(res.views_per_second),
            "loss_first": res.losses[0] if res.losses else None,
            "loss_last": res.losses[-1] if res.losses else None,
        }
        print(f"[{name}] {json.dumps(summary[name])}", flush=True)
    (args.out / "pretrain-summary.json").write_text(json.dumps(summary, indent=2))
    # The last line, for scripts: a record of the rate, no target.
    print(
        json.dumps(
            {"benchmark": "gpu_pretrain", "target": "none", "measured": summary, "holds": None}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
