"""The foundation-model table of docs/MODELS.md, from ``histosic.embed.foundation`` (no torch).

Usage::

    python scripts/models_table.py          # print the table
    python scripts/models_table.py --write  # replace the table in docs/MODELS.md

``tests/test_foundation.py`` checks that docs/MODELS.md holds the current table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "MODELS.md"
HEADER = (
    "| name | model | dim | input px | um/px | pooling | GPU precision | licence | gated | "
    "weights | paper |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)
_POOL = {
    "token": "class token",
    "cls+mean": "class + mean patch token",
    "pooler": "pooler output",
    "avg": "mean of the last stage tokens",
    "attn-pool": "attentional pooler, layer norm",
}


def table() -> str:
    from histosic.embed.foundation import FOUNDATION

    rows = []
    for f in FOUNDATION:
        size = f"{f.crop_from} → crop {f.input_size}" if f.crop_from else str(f.input_size)
        if f.tile:
            size = f"{f.tile} → {f.input_size}"
        cells = [
            f"`{f.name}`",
            f.title,
            str(f.dim),
            size,
            f"{f.mpp:g}",
            _POOL[f.pool],
            f.precision,
            f.licence,
            "yes" if f.gated else "no",
            f"[{f.repo}]({f.page})",
            f.paper,
        ]
        rows.append("| " + " | ".join(cells) + " |\n")
    return HEADER + "".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help="replace the table in docs/MODELS.md")
    args = ap.parse_args(argv)
    new = table()
    if not args.write:
        print(new, end="")
        return 0
    text = DOC.read_text()
    start = text.index(HEADER.splitlines()[0])
    end = text.index("\n\n", start) + 1
    DOC.write_text(text[:start] + new + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
