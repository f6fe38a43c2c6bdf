"""Colour view: time of the subsample UMAP against full UMAP, and the quality traded.

Run: ``.venv/bin/python benchmarks/bench_colors.py [--n 100000] [--no-full]``

Data: ``n`` synthetic embeddings (512-D, 24 clusters each with its own low-rank spread, like
patch embeddings of a few tissue types with continuous variation), or ``--features FILE.h5`` to
tile a real embedding file's features up to ``n`` rows with a little noise.
Quality: trustworthiness (scikit-learn, 10 neighbours) of each 3-D embedding against the 512-D
features on the same random sample of 2,000 patches; 1.0 = local neighbourhoods fully kept.
Timings are wall-clock, in one process, side by side: ``patch_colors`` (subsample UMAP) is
timed twice, the first call paying numba's compilation of UMAP's layout code.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import numpy.typing as npt


def synthetic(n: int, dim: int = 512, clusters: int = 24, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 3.0
    bases = rng.normal(size=(clusters, 4, dim))
    lab = rng.integers(0, clusters, n)
    latent = rng.normal(size=(n, 4)) * 2.0
    X = centres[lab] + np.einsum("nk,nkd->nd", latent, bases[lab]) + rng.normal(size=(n, dim))
    return np.asarray(X, dtype=np.float32)


def from_file(path: str, n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    from histosic.store import read_embeddings

    F = read_embeddings(path).features.astype(np.float32)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, F.shape[0], n)
    return F[idx] + rng.normal(scale=0.05 * F.std(), size=(n, F.shape[1])).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--features", default=None)
    ap.add_argument("--no-full", action="store_true", help="skip full UMAP (slow)")
    ap.add_argument("--sample", type=int, default=2000)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from sklearn.manifold import trustworthiness

    from histosic.colors import embed_3d, patch_colors

    X = from_file(args.features, args.n) if args.features else synthetic(args.n)
    rng = np.random.default_rng(1)
    sample = rng.choice(X.shape[0], min(args.sample, X.shape[0]), replace=False)

    def trust(Y: npt.NDArray[np.floating]) -> float:
        return float(trustworthiness(X[sample], np.asarray(Y)[sample], n_neighbors=10))

    rows: list[tuple[str, float, float]] = []
    t = time.perf_counter()
    patch_colors(X, method="umap")
    first = time.perf_counter() - t
    t = time.perf_counter()
    Y = embed_3d(X, method="umap")
    second = time.perf_counter() - t
    rows.append(("subsample UMAP (5k fit), first call in process", first, trust(Y)))
    rows.append(("subsample UMAP (5k fit), second call", second, trust(Y)))
    t = time.perf_counter()
    Y = embed_3d(X, method="umap", max_fit=20_000)
    rows.append(("subsample UMAP (20k fit)", time.perf_counter() - t, trust(Y)))
    t = time.perf_counter()
    Y = embed_3d(X, method="pca")
    rows.append(("PCA", time.perf_counter() - t, trust(Y)))
    if not args.no_full:
        import umap
        from sklearn.decomposition import PCA

        t = time.perf_counter()
        Z = PCA(32, svd_solver="randomized", random_state=0).fit_transform(X)
        Y = umap.UMAP(n_components=3, random_state=0).fit_transform(Z)
        rows.append(
            (
                "full UMAP (umap-learn defaults, all points, PCA-32 input)",
                time.perf_counter() - t,
                trust(Y),
            )
        )
    print(
        f"n = {X.shape[0]} patches x {X.shape[1]} dims; "
        f"trustworthiness on {sample.size} patches, k = 10"
    )
    print(f"{'method':60s} {'seconds':>8s} {'trust':>6s}")
    for name, sec, tr in rows:
        print(f"{name:60s} {sec:8.1f} {tr:6.3f}")
    full = [r for r in rows if r[0].startswith("full")]
    if full:
        print(
            f"speed-up of the default (second call) over full UMAP: {full[0][1] / rows[1][1]:.1f}x"
        )
    # The last line, for scripts: target, measured, holds (the colour view of a slide in 15 s).
    result = {
        "benchmark": "colors",
        "target": "colour view (subsample UMAP, first call in process) <= 15 s",
        "measured": {name: {"s": round(sec, 2), "trust": round(tr, 4)} for name, sec, tr in rows},
        "holds": first <= 15.0,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
