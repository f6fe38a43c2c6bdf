#!/usr/bin/env python3
"""Generate the Python code for ``protos/histosic/v1/*.proto`` into ``server/histosic/api/v1/``.

The one pinned generator of the project: ``grpc_tools.protoc`` with its bundled ``protoc`` writes
the message classes (``*_pb2.py``) and gRPC stubs (``*_pb2_grpc.py``), ``mypy-protobuf`` writes
their type stubs (``*.pyi``), and ``protoc-gen-connectrpc`` (``--connectrpc_opt=protobuf=google``)
writes the Connect server and client (``*_connect.py``) on the same ``_pb2`` classes, so grpcio
and Connect share one set of messages.

The output is committed. ``tests/test_service_protos.py`` regenerates into a temporary folder and
fails when the result differs from the committed files, so change the protos, then run::

    .venv/bin/python scripts/gen_protos.py            # write server/histosic/api/v1/
    .venv/bin/python scripts/gen_protos.py --check    # exit 1 when the committed code is stale

The versions are pinned because each generator's output changes between releases; a different
installed version is an error rather than a silently different output.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["PINS", "generate", "main"]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "server" / "histosic" / "api" / "v1"
# protoc writes modules named after the proto package (histosic.v1); the package lives at
# histosic.api.v1, so absolute imports are rewritten.
PROTO_PACKAGE = "histosic.v1"
PYTHON_PACKAGE = "histosic.api.v1"

PINS = {
    "grpcio-tools": "1.85.1",
    "mypy-protobuf": "5.1.0",
    "protoc-gen-connectrpc": "0.13.0",
}

INIT_TEXT = '"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n'


def check_pins() -> None:
    """Raise SystemExit when an installed generator is not the pinned version."""
    wrong = []
    for dist, want in PINS.items():
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            have = "not installed"
        if have != want:
            wrong.append(f"{dist}=={want} (installed: {have})")
    if wrong:
        raise SystemExit(
            "gen_protos: the generators must be the pinned versions: "
            + ", ".join(wrong)
            + f"; run: {sys.executable} -m pip install "
            + " ".join(f"{d}=={v}" for d, v in PINS.items())
        )


def _plugin(name: str) -> str:
    # The plugins are console scripts installed beside this interpreter.
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"gen_protos: plugin {name} not found next to {sys.executable} or on PATH")
    return found


def _rewrite(text: str) -> str:
    return text.replace(f"from {PROTO_PACKAGE} import", f"from {PYTHON_PACKAGE} import").replace(
        f"import {PROTO_PACKAGE}.", f"import {PYTHON_PACKAGE}."
    )


def generate(out: Path) -> list[Path]:
    """Generate all protos into ``out`` (created, stale generated files removed).

    Returns the files written.
    """
    check_pins()
    protos = sorted(PROTO_ROOT.glob("histosic/v1/*.proto"))
    if not protos:
        raise SystemExit(f"gen_protos: no .proto files under {PROTO_ROOT / 'histosic/v1'}")
    with tempfile.TemporaryDirectory(prefix="histosic-protos-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--plugin=protoc-gen-connectrpc={_plugin('protoc-gen-connectrpc')}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            f"--connectrpc_out={tmp}",
            "--connectrpc_opt=protobuf=google",
            *(str(p.relative_to(PROTO_ROOT)) for p in protos),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PROTO_ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"gen_protos: protoc failed:\n{proc.stderr}")
        generated = Path(tmp) / "histosic" / "v1"
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.iterdir():
            if stale.is_file() and stale.suffix in (".py", ".pyi"):
                stale.unlink()
        written = []
        for src in sorted(generated.iterdir()):
            if src.suffix not in (".py", ".pyi"):
                continue
            dst = out / src.name
            dst.write_text(_rewrite(src.read_text()))
            written.append(dst)
    (out / "__init__.py").write_text(INIT_TEXT)
    written.append(out / "__init__.py")
    # histosic/api/__init__.py makes the parent a package too.
    parent_init = out.parent / "__init__.py"
    if out == DEFAULT_OUT:
        parent_init.write_text(INIT_TEXT)
    return written


def diff_trees(a: Path, b: Path) -> list[str]:
    """Unified diffs between the generated files of two folders (empty when identical)."""
    names = sorted({p.name for p in a.glob("*.py*")} | {p.name for p in b.glob("*.py*")})
    out: list[str] = []
    for name in names:
        pa, pb = a / name, b / name
        ta = pa.read_text().splitlines(keepends=True) if pa.exists() else []
        tb = pb.read_text().splitlines(keepends=True) if pb.exists() else []
        if ta != tb:
            out.extend(difflib.unified_diff(ta, tb, f"committed/{name}", f"regenerated/{name}"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "--check", action="store_true", help="regenerate to a temp folder and diff with --out"
    )
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            diffs = diff_trees(args.out, Path(tmp))
        if diffs:
            sys.stdout.writelines(diffs)
            print(f"\ngen_protos: {args.out} is stale; run scripts/gen_protos.py", file=sys.stderr)
            return 1
        print(f"gen_protos: {args.out} is current")
        return 0
    files = generate(args.out)
    print(f"gen_protos: wrote {len(files)} files to {os.path.relpath(args.out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
