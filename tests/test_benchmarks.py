"""Every CPU benchmark runs and ends with its machine-readable line (on tiny inputs: this checks
the contract, never a speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "bench_sic.py": ["--sizes", "3000x16", "--repeat", "1"],
    "bench_cluster.py": ["--sizes", "1500", "--dim", "16", "--repeats", "1"],
    "bench_server.py": ["--patches", "2000", "--dim", "16", "--repeat", "1"],
    "bench_embed.py": ["--patches", "40", "--batch-size", "16"],
    "bench_loader.py": ["--patches", "60", "--batch-size", "16", "--workers", "1"],
    "bench_deadlines.py": ["--grid", "200", "--deadlines", "0.05"],
    "bench_seeds.py": [
        *("--patches", "2000", "--dim", "16", "--seeds", "2", "50", "--classes", "2", "3"),
        *("--class-seeds", "30", "--repeat", "1"),
    ],
    # real QuPath classes in a JVM (or a skipped line where ../shared/qupath is absent)
    "bench_qupath_import.py": ["--patches", "2000", "--rounds", "2"],
}


def test_every_cpu_benchmark_is_covered() -> None:
    on_disk = {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")}
    # UMAP's numba compilation alone takes minutes; bench_ray starts Ray clusters (tests/test_ray.py
    # runs the same code on a local Ray); bench_foundation builds a ViT-L (tests/test_foundation.py
    # checks every model's output).
    slow_to_run_here = {"bench_colors.py", "bench_ray.py", "bench_foundation.py"}
    assert on_disk - slow_to_run_here == set(CASES), "add the new benchmark to CASES"
    makefile = (ROOT / "Makefile").read_text()
    assert all(f"benchmarks/{name}" in makefile for name in on_disk), "make bench runs them all"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_ends_with_its_json_line(script: str) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *CASES[script]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    last = json.loads(run.stdout.strip().splitlines()[-1])
    assert last["benchmark"] and isinstance(last["target"], str)
    assert isinstance(last["measured"], dict) and last["measured"]
    assert last["holds"] in (True, False, None)
