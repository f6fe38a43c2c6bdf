"""Core modules load neither torch nor grpc nor scikit-learn (docs/ARCHITECTURE.md, imports)."""

from __future__ import annotations

import subprocess
import sys

#: Every core module; tests/test_layering.py checks their source, this checks what importing them
#: really loads (a third-party import can pull torch in behind the source's back).
CORE = [
    "histosic.atomic",
    "histosic.catalog",
    "histosic.diskspace",
    "histosic.cluster",
    "histosic.cluster.engine",
    "histosic.cluster.slide",
    "histosic.colors",
    "histosic.config",
    "histosic.evaluation.protocol",
    "histosic.evaluation.report",
    "histosic.evaluation.runner",
    "histosic.evaluation.truth",
    "histosic.features.handcrafted",
    "histosic.features.hefeatures",
    "histosic.mosaic",
    "histosic.outputs.geojson",
    "histosic.outputs.labels_csv",
    "histosic.outputs.overlay",
    "histosic.outputs.qupath_classes",
    "histosic.outputs.raster",
    "histosic.outputs.seedfile",
    "histosic.seeds",
    "histosic.slides",
    "histosic.store",
    "histosic.tiling",
]
HEAVY = ["torch", "grpc", "paquo", "openslide", "tiffslide", "skimage", "sklearn", "umap"]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (what it imports is all that is loaded); must succeed."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def test_core_modules_are_light() -> None:
    # One fresh interpreter per module would take a second each; one that imports them one after
    # another, recording what each adds, tells the same.
    code = (
        "import importlib, sys\n"
        f"heavy = {HEAVY!r}\n"
        f"for m in {CORE!r}:\n"
        "    importlib.import_module(m)\n"
        "    loaded = [h for h in heavy if h in sys.modules]\n"
        "    if loaded:\n"
        "        print(m, ','.join(loaded))\n"
        "        break\n"
    )
    r = _python(code)
    assert r.stdout.strip() == "", f"importing {r.stdout.strip()}"


def test_embed_commands_import_lazily() -> None:
    code = (
        "import sys\n"
        "import histosic.commands.embed, histosic.commands.models\n"
        "print('torch' in sys.modules)\n"
    )
    r = _python(code)
    assert r.stdout.strip() == "False"


def test_ray_driver_imports_neither_ray_nor_torch() -> None:
    # ray (an optional extra) loads when a run starts; the driver never needs torch.
    code = (
        "import sys\n"
        "import histosic.embed.ray_run, histosic.embed.ray_report, histosic.commands.embed_ray\n"
        "import histosic.commands.serve\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch'}))\n"
    )
    r = _python(code)
    assert r.stdout.strip() == "[]"


def test_reading_side_of_embedding_is_torch_free() -> None:
    # Ray's reading tasks and planning import these; only the inference actors load torch.
    code = (
        "import sys\n"
        "import histosic.embed.ray_workers, histosic.embed.reading, histosic.embed.jpeg_tiles\n"
        "import histosic.embed.output_file\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'torchvision'}))\n"
    )
    r = _python(code)
    assert r.stdout.strip() == "[]"


def test_clustering_imports_numpy_only() -> None:
    # scikit-learn and scipy load where a step needs them (spreading, PCA, the estimator, the
    # grid steps), not when the package is imported.
    code = (
        "import sys, histosic.cluster\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'h5py'}))\n"
    )
    r = _python(code)
    assert r.stdout.strip() == "[]"


def test_client_is_a_library_without_the_command_line() -> None:
    code = (
        "import sys, histosic.service.client\n"
        "print(sorted(m for m in sys.modules if m.startswith('histosic.commands')))\n"
    )
    r = _python(code)
    assert r.stdout.strip() == "[]"
