"""``histosic models``: the backbones, their dimensions, and whether each is usable now."""

from __future__ import annotations

import argparse
import dataclasses
import json

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "models",
        help="list embedding models and whether they are usable here",
        description=(
            "List the backbones `histosic embed --model` accepts: output dimension, input size, "
            "training resolution, licence and gating, and whether each is usable now and why "
            "not (libraries installed; weights cached, downloadable, gated without HF_TOKEN, "
            "offline without a cache). Works without torch: then it says what to install. "
            "docs/MODELS.md has the table with sources."
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histosic.embed.registry import list_models  # torch-free

    models = list_models()
    if args.json:
        print(json.dumps([dataclasses.asdict(m) for m in models], indent=2))
        return 0
    width = max(len(m.name) for m in models)
    print(f"{'model':<{width}}  {'dim':>5}  {'input':>5}  {'um/px':>5}  usable  notes")
    pad = f"{'':<{width}}  {'':>5}  {'':>5}  {'':>5}  {'':<6}"
    for m in models:
        dim = str(m.dim) if m.dim else "-"
        mpp = f"{m.mpp:g}" if m.mpp else "-"
        usable = "yes" if m.available else "no"
        print(
            f"{m.name:<{width}}  {dim:>5}  {m.input_size:>5}  {mpp:>5}  {usable:<6}  "
            f"{m.description}"
        )
        if m.licence:
            terms = f"licence {m.licence}" + ("; gated (request access, set HF_TOKEN)" * m.gated)
            print(f"{pad}  {terms}; {m.page}")
        print(f"{pad}  ({m.reason})")
    return 0
