"""What importing a 100k-patch clustering costs in real QuPath: GeoJSON via PathIO vs tiles built
from the compact answer, side by side in one run.

``qupath-scripts/histosic_cluster.groovy`` runs unchanged on QuPath's own classes (the jars of
``../shared/qupath/<version>/``, through ``tests/qupath/run_script.groovy``) against a real
``histosic serve`` process holding a synthetic 100k-patch embedding. In one JVM, the script runs in
turns with ``compact=false`` (the server writes the tiles GeoJSON; the script reads it with
``PathIO.readObjectsFromGeoJSON``) and ``compact=true`` (the server sends cells, labels and
confidences; the script builds the tiles with ``PathObjects.createTileObject``). The script prints
its own timings: the answer (request, clustering, transfer, JSON parse), making the objects, and
putting them in the hierarchy (removing the previous run's 100k tiles first). The first round
warms the JVM up and is left out; the best of the other rounds is reported.

Target: the compact answer at least halves what the script spends on the answer and the objects
(answer + objects made) compared with GeoJSON.

Run: ``PYTHONPATH=server .venv/bin/python benchmarks/bench_qupath_import.py [--patches 100000
--rounds 3 --version 0.5.1]``. The last line is JSON for scripts: target, measured, holds.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from qupath_jars import run_qupath_script, versions  # noqa: E402

from histosic.store import EmbeddingMeta, Embeddings, file_fingerprint, write_embeddings  # noqa: E402

SCRIPT = ROOT / "qupath-scripts" / "histosic_cluster.groovy"
SCENARIO = """
def lines = []
(0..<(System.getenv('BENCH_ROUNDS') as int)).each { r ->
    ['false', 'true'].each { c ->
        def w = new StringWriter()
        runScript(['compact=' + c], w)
        lines << w.toString().readLines().find { it.startsWith('histosic: timings:') }
    }
}
new File(outDir, 'timings.txt').text = lines.join('\\n')
"""
TIMINGS = re.compile(
    r"answer ([\d.]+) MB in ([\d.]+) s, objects made in ([\d.]+) s, "
    r"put in the hierarchy in ([\d.]+) s \((compact cells|GeoJSON)\)"
)


def make_slide_and_store(d: Path, n: int) -> tuple[Path, Path, list[dict[str, object]]]:
    from PIL import Image

    root, store = d / "slides", d / "store"
    root.mkdir()
    store.mkdir()
    slide = root / "bench.png"
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(slide)
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    stride = 128
    idx = np.arange(n)
    coords = np.stack([(idx % side) * stride, (idx // side) * stride], 1).astype(np.int64)
    left = (idx % side) < side // 2
    feats = rng.normal(size=(n, 16)).astype(np.float32)
    feats[:, 0] += 4.0 * left
    meta = EmbeddingMeta(
        slide_path=str(slide),
        slide_fingerprint=file_fingerprint(slide),
        level0_width=side * stride + stride,
        level0_height=side * stride + stride,
        mpp=0.5,
        target_mpp=0.5,
        patch_size=256,
        patch_size_level0=256,
        stride_level0=stride,
        overlap=0.5,
        model="bench",
    )
    write_embeddings(
        store / "bench.h5",
        Embeddings(feats, coords, meta, rng.uniform(0.5, 1, n).astype(np.float32), None),
    )
    points: list[dict[str, object]] = []
    for k in range(10):
        y = float((5 + k * (side - 10) // 10) * stride + 64)
        points.append({"x": float(5 * stride + 64), "y": y, "class": "Tumor"})
        points.append({"x": float((side - 5) * stride + 64), "y": y, "class": "Stroma"})
    return slide, store, points


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patches", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of both; the first is warm-up")
    ap.add_argument("--version", default=None, help="QuPath version folder (default: oldest)")
    args = ap.parse_args()
    target = (
        "compact answer: answer + objects made <= 0.5 x GeoJSON's, "
        f"{args.patches} tiles in real QuPath"
    )
    found = versions()
    if not found or shutil.which("groovy") is None:
        why = "no QuPath jars in ../shared/qupath" if not found else "groovy is not installed"
        print(f"skipped: {why}")
        print(json.dumps({"benchmark": "qupath_import", "target": target,
                          "measured": {"skipped": why}, "holds": None}))  # fmt: skip
        return 0
    import pytest
    from qupath_jars import qupath_jars

    version = args.version or found[0]
    try:
        jars = qupath_jars(version)
    except pytest.skip.Exception as err:
        print(f"skipped: {err}")
        print(json.dumps({"benchmark": "qupath_import", "target": target,
                          "measured": {"skipped": str(err)}, "holds": None}))  # fmt: skip
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        slide, store, points = make_slide_and_store(d, args.patches)
        http_port, grpc_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "histosic", "serve", "--store", str(store)]
        cmd += ["--slide-root", str(slide.parent), "--port", str(grpc_port)]
        cmd += ["--http-port", str(http_port)]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            scenario = d / "scenario.groovy"
            scenario.write_text(SCENARIO)
            out = d / "out"
            env = {
                "HISTOSIC_URL": f"http://127.0.0.1:{http_port}",
                "QUPATH_TEST_SKIP_FIRST": "1",
                "BENCH_ROUNDS": str(args.rounds),
                # a long run: the full JIT, and heap for two 100k-object answers
                "JAVA_OPTS": "-Djava.awt.headless=true -Xmx8g",
            }
            proc = run_qupath_script(
                jars, SCRIPT, slide, points, out, env=env, scenario=scenario, timeout=1800
            )
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                return 1
            lines = (out / "timings.txt").read_text().splitlines()
        finally:
            server.terminate()
            server.wait(timeout=60)
    best: dict[str, dict[str, float]] = {}
    for line in lines[2:]:  # the first round warms the JVM up
        m = TIMINGS.search(line)
        assert m, line
        mb, answer, made, put = (float(m.group(i)) for i in range(1, 5))
        mode = "cells" if m.group(5) == "compact cells" else "geojson"
        row = {"answer_mb": mb, "answer_s": answer, "made_s": made, "hierarchy_s": put}
        if mode not in best or answer + made < best[mode]["answer_s"] + best[mode]["made_s"]:
            best[mode] = row
    for mode, row in best.items():
        print(
            f"{mode:8s} answer {row['answer_mb']:6.1f} MB in {row['answer_s']:.3f} s, objects made "
            f"in {row['made_s']:.3f} s, hierarchy {row['hierarchy_s']:.3f} s"
        )
    g, c = best["geojson"], best["cells"]
    ratio = (c["answer_s"] + c["made_s"]) / (g["answer_s"] + g["made_s"])
    print(f"compact / GeoJSON (answer + objects made): {ratio:.2f} (QuPath {version})")
    measured = {
        "qupath": version,
        "patches": args.patches,
        "geojson": g,
        "cells": c,
        "ratio_answer_and_objects": round(ratio, 3),
        "ratio_objects_made": round(c["made_s"] / g["made_s"], 3),
    }
    print(json.dumps({"benchmark": "qupath_import", "target": target, "measured": measured,
                      "holds": ratio <= 0.5}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
