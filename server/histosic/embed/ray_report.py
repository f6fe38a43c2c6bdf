"""The whole-archive run's bookkeeping: each slide's outcome, progress, the report and the table.

Plain data (no ray, no torch): :mod:`histosic.embed.ray_run` fills it, the CLI prints it and the
report is written as JSON, atomically, beside the outputs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from histosic.atomic import write_text_atomic

__all__ = ["ArchiveProgress", "ArchiveReport", "SlideOutcome", "format_table"]

#: Outcomes of a slide: embedded now, already there, or failed (reason in ``error``).
STATUSES = ("done", "skipped", "failed")


@dataclass
class SlideOutcome:
    """What became of one slide."""

    slide: str
    status: str = "pending"
    output: str | None = None
    patches: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    error: str | None = None
    error_type: str | None = None
    #: Where its JPEG tiles were decoded: 'actor' (on the model's device) or 'reader'.
    decoded_on: str | None = None


@dataclass(frozen=True)
class ArchiveProgress:
    """Progress over the whole archive, reported after every batch written and every slide."""

    slides_total: int
    slides_finished: int
    slides_failed: int
    patches_done: int
    patches_per_s: float
    eta_s: float | None
    current: str | None = None
    current_done: int = 0
    current_total: int = 0


@dataclass
class ArchiveReport:
    """Every slide's outcome and the run's totals; ``to_json`` is the report file's content."""

    slides: list[SlideOutcome]
    cluster: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    #: The exception of each failed slide (not in the JSON; the message and type are).
    exceptions: dict[str, BaseException] = field(default_factory=dict, repr=False)

    def count(self, status: str) -> int:
        return sum(1 for s in self.slides if s.status == status)

    @property
    def failed(self) -> list[SlideOutcome]:
        return [s for s in self.slides if s.status == "failed"]

    def patches_embedded(self) -> int:
        """Patches embedded in this run (a resumed slide counts only what was added)."""
        return sum(s.patches - s.resumed_from for s in self.slides if s.status == "done")

    def summary(self) -> dict[str, Any]:
        n = self.patches_embedded()
        return {
            "slides": len(self.slides),
            **{status: self.count(status) for status in STATUSES},
            "patches_embedded": n,
            "seconds": round(self.seconds, 3),
            "patches_per_s": round(n / self.seconds, 2) if self.seconds > 0 else 0.0,
            "slides_per_min": (
                round(60 * self.count("done") / self.seconds, 3) if self.seconds > 0 else 0.0
            ),
        }

    def to_json(self) -> str:
        doc = {
            "summary": self.summary(),
            "cluster": self.cluster,
            "settings": self.settings,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "slides": [asdict(s) for s in self.slides],
        }
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically (a reader never sees half of it)."""
        return write_text_atomic(path, self.to_json(), overwrite=True)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def format_table(report: ArchiveReport) -> str:
    """The final summary: one row per slide, then the totals."""
    rows = [("slide", "status", "patches", "seconds", "output / error")]
    for s in report.slides:
        detail = s.error if s.status == "failed" else (s.output or "")
        rows.append(
            (
                _short(Path(s.slide).name, 40),
                s.status + (f" (resumed at {s.resumed_from})" if s.resumed_from else ""),
                str(s.patches),
                f"{s.seconds:.1f}",
                detail or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    ]
    t = report.summary()
    lines.append(
        f"{t['slides']} slides: {t['done']} done, {t['skipped']} skipped, {t['failed']} failed; "
        f"{t['patches_embedded']} patches in {t['seconds']:.1f} s "
        f"({t['patches_per_s']:.1f} patches/s, {t['slides_per_min']:.2f} slides/min)"
    )
    return "\n".join(line.rstrip() for line in lines)


def format_progress(p: ArchiveProgress) -> str:
    """One progress line: slides finished, patches/s, ETA."""
    eta = "?" if p.eta_s is None else time.strftime("%H:%M:%S", time.gmtime(max(0.0, p.eta_s)))
    failed = f", {p.slides_failed} failed" if p.slides_failed else ""
    return (
        f"slides {p.slides_finished}/{p.slides_total}{failed}; {p.patches_done} patches, "
        f"{p.patches_per_s:.1f} patches/s; ETA {eta}"
    )
