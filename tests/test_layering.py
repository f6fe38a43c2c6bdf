"""The layout's rules, checked on the source (AST), function-level imports included.

docs/ARCHITECTURE.md states the rules; this test is what keeps them true:

* the core (configuration, files, slides, tiling, store, seeds, clustering, features, outputs,
  evaluation apart from its runner) imports none of torch, grpc, paquo, ``histosic.embed``,
  ``histosic.service`` or ``histosic.commands``;
* torch is imported only under ``histosic.embed``, grpc only under ``histosic.service`` (and the
  generated ``histosic.api``), paquo only by ``histosic.batch``;
* ray only under ``histosic.embed``, and there only inside functions (it is an optional extra);
* no import circles inside the package (``TYPE_CHECKING`` imports aside);
* no hand-written module over 700 lines (the generated ``histosic.api`` aside).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "server"
PACKAGE = ROOT / "histosic"
MAX_LINES = 700

#: Modules (or packages, with every module under them) that form the core.
CORE = (
    "histosic.atomic",
    "histosic.catalog",
    "histosic.diskspace",
    "histosic.cluster",
    "histosic.colors",
    "histosic.config",
    "histosic.errors",
    "histosic.evaluation.protocol",
    "histosic.evaluation.report",
    "histosic.evaluation.truth",
    "histosic.features",
    "histosic.mosaic",
    "histosic.outputs",
    "histosic.patches",
    "histosic.seeds",
    "histosic.slides",
    "histosic.store",
    "histosic.tiling",
)
FORBIDDEN_IN_CORE = (
    "torch",
    "torchvision",
    "timm",
    "grpc",
    "paquo",
    "histosic.embed",
    "histosic.service",
    "histosic.commands",
    "histosic.api",
)
#: Third-party packages and the only parts of histosic that may import them.
ONLY_IN = {
    "torch": ("histosic.embed",),
    "torchvision": ("histosic.embed",),
    "timm": ("histosic.embed",),
    "grpc": ("histosic.service", "histosic.api"),
    "paquo": ("histosic.batch",),
    "ray": ("histosic.embed",),
}
#: Optional extras that may be imported only inside functions, never at a module's top level.
LAZY_ONLY = ("ray",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for p in sorted(PACKAGE.rglob("*.py"))
        if "histosic/api/" not in p.as_posix()
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports anywhere in its file (absolute names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.add(sub if sub in known else mod)
    return out


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def test_core_modules_exist(graph: dict[str, set[str]]) -> None:
    # A renamed core module must be renamed here too, or the rule below checks nothing.
    for prefix in CORE:
        assert any(_within(m, (prefix,)) for m in graph), f"core module {prefix} not found"


def test_core_imports_no_heavy_or_outer_layer(graph: dict[str, set[str]]) -> None:
    bad = [
        f"{mod} imports {imp}"
        for mod, imps in sorted(graph.items())
        if _within(mod, CORE)
        for imp in sorted(imps)
        if _within(imp, FORBIDDEN_IN_CORE)
    ]
    assert bad == []


def test_third_party_only_where_allowed(graph: dict[str, set[str]]) -> None:
    bad = [
        f"{mod} imports {imp}"
        for mod, imps in sorted(graph.items())
        for imp in sorted(imps)
        for lib, allowed in ONLY_IN.items()
        if _within(imp, (lib,)) and not _within(mod, allowed)
    ]
    assert bad == []


def top_level_imports(path: Path) -> set[str]:
    """Modules imported at a module's top level (``if`` and ``try`` blocks included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                out.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                out.add(node.module or "")
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.If):
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return out


def test_optional_extras_are_imported_lazily() -> None:
    bad = [
        f"{name} imports {imp} at the top level"
        for name, path in sorted(modules().items())
        for imp in sorted(top_level_imports(path))
        if _within(imp, LAZY_ONLY)
    ]
    assert bad == []


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    internal = {m: {i for i in imps if i in graph and i != m} for m, imps in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(internal[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(internal):
        if m not in state:
            visit(m)
    assert [" -> ".join(c) for c in cycles] == []


def test_modules_are_small() -> None:
    big = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert big == {}, f"modules over {MAX_LINES} lines: {big}"


def test_rules_catch_a_violation(tmp_path: Path) -> None:
    # The checker itself: a core module that imports torch inside a function is caught, and a
    # TYPE_CHECKING import is not counted.
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import grpc\n"
        "def f():\n    import torch\n    from histosic.embed import pipeline\n"
    )
    found = imports("histosic.seeds", src, {"histosic.embed.pipeline"})
    assert "torch" in found and "histosic.embed.pipeline" in found and "grpc" not in found
    # A top-level ray import is caught, one inside a function or under TYPE_CHECKING is not.
    src.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ray.actor\n"
        "try:\n    import ray\nexcept ImportError:\n    pass\n"
        "def f():\n    from ray import util\n"
    )
    assert top_level_imports(src) & {"ray", "ray.actor", "ray.util"} == {"ray"}
