"""Core modules load neither torch nor grpc (DESIGN.md section 2: the direction of imports)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

CORE = [
    "histosic.cluster",
    "histosic.cluster.engine",
    "histosic.store",
    "histosic.slides",
    "histosic.tiling",
]
HEAVY = ["torch", "grpc", "paquo", "openslide", "tiffslide", "skimage"]


@pytest.mark.parametrize("module", CORE)
def test_core_module_is_light(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet")
    code = (
        f"import sys, {module}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"import {module} loaded {r.stdout.strip()}"


def test_embed_commands_import_lazily() -> None:
    code = (
        "import sys\n"
        "import histosic.commands.embed, histosic.commands.models\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_clustering_imports_numpy_only() -> None:
    # scikit-learn and scipy load where a step needs them (spreading, PCA, the estimator, the
    # grid steps), not when the package is imported.
    code = (
        "import sys, histosic.cluster\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'h5py'}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_client_is_a_library_without_the_command_line() -> None:
    code = (
        "import sys, histosic.service.client\n"
        "print(sorted(m for m in sys.modules if m.startswith('histosic.commands')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
