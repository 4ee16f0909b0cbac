"""The import structure of ledger: each subpackage imports only the layers below it, no module imports
itself through others, and the package's top level stays small.

Run it as a script for the measures (``python tests/test_layers.py [ROOT]``): modules, layers, the
longest import chain, cycles, upward imports and the largest module.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ledger", "projections")
# Bottom to top. A module may import its own layer and the layers below it, never one above.
LAYERS = (
    ("ledger.settings", "ledger.metrics", "ledger.pauses", "ledger.hops"),
    ("ledger.contract",),
    ("ledger.kafka",),
    ("projections",),
    ("ledger.engine",),
    ("ledger.service",),
    ("ledger.mcp",),
    ("ledger.http",),
    ("ledger.cli",),
    ("ledger",),  # the public API re-exports what sits below it
)
MAX_TOP_LEVEL_MODULES = 10


class Module(NamedTuple):
    name: str
    path: Path
    lines: int
    imports: frozenset[str]


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT) -> dict[str, Module]:
    found: dict[str, Module] = {}
    paths = [path for package in PACKAGES for path in sorted((root / package).rglob("*.py"))]
    names = {module_name(root, path) for path in paths}
    for path in paths:
        name = module_name(root, path)
        source = path.read_text()
        found[name] = Module(name, path, source.count("\n"), frozenset(_imports(ast.parse(source), name, names)))
    return found


def _imports(tree: ast.Module, importer: str, names: set[str]) -> Iterator[str]:
    """Every ledger or projections module ``tree`` imports, at any depth (lazy and type-only imports too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for target in targets:
            if target in names and target != importer and not importer.startswith(target + "."):
                yield target


def layer_of(name: str) -> int:
    """The layer of the longest prefix that names the module."""
    matches = [(len(prefix), rank) for rank, prefixes in enumerate(LAYERS) for prefix in prefixes
               if name == prefix or name.startswith(prefix + ".")]
    return max(matches)[1]


def upward_imports(found: dict[str, Module]) -> list[tuple[str, str]]:
    return sorted((module.name, target) for module in found.values() for target in module.imports
                  if layer_of(target) > layer_of(module.name))


def cycles(found: dict[str, Module]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in found[name].imports:
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for name in sorted(found):
        if name not in index:
            visit(name)
    return components


def longest_chain(found: dict[str, Module]) -> int:
    """How many modules the longest chain of imports passes through (the number of import layers);
    modules in a cycle count once."""
    depth: dict[str, int] = {}

    def walk(name: str, seen: frozenset[str]) -> int:
        if name not in depth:
            below = [walk(target, seen | {name}) for target in found[name].imports if target not in seen | {name}]
            depth[name] = 1 + max(below, default=0)
        return depth[name]

    return max((walk(name, frozenset()) for name in found), default=0)


def top_level_modules(root: Path = ROOT) -> list[str]:
    return sorted(path.name for path in (root / "ledger").glob("*.py"))


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward_imports(modules()) == []


def test_no_import_cycles() -> None:
    assert cycles(modules()) == []


def test_every_module_belongs_to_a_layer() -> None:
    for name in modules():
        layer_of(name)  # raises ValueError (max of nothing) for a module no layer names


def test_the_package_top_level_stays_small() -> None:
    assert len(top_level_modules()) <= MAX_TOP_LEVEL_MODULES, top_level_modules()


def test_the_measures_see_what_they_measure(tmp_path: Path) -> None:
    package = tmp_path / "ledger"
    (package / "kafka").mkdir(parents=True)
    (tmp_path / "projections").mkdir()
    (package / "__init__.py").write_text("")
    (package / "kafka" / "__init__.py").write_text("")
    (package / "settings.py").write_text("from ledger.kafka.a import x\n")
    (package / "kafka" / "a.py").write_text("def f():\n    from ledger.kafka import b\n")
    (package / "kafka" / "b.py").write_text("import ledger.kafka.a\nimport ledger.settings\n")
    found = modules(tmp_path)
    assert upward_imports(found) == [("ledger.settings", "ledger.kafka.a")]
    assert cycles(found) == [["ledger.kafka.a", "ledger.kafka.b", "ledger.settings"]]


def report(root: Path) -> str:
    found = modules(root)
    largest = max(found.values(), key=lambda module: module.lines)
    layered = any((root / "ledger" / package).is_dir() for package in ("contract", "kafka", "engine"))
    upward = len(upward_imports(found)) if layered else "n/a (one flat package)"
    lines = [
        f"modules: {len(found)} ({len(top_level_modules(root))} at the top of ledger/)",
        f"longest import chain: {longest_chain(found)} modules",
        f"cycles: {len(cycles(found))} {cycles(found) or ''}".rstrip(),
        f"upward imports: {upward}",
        f"largest module: {largest.path.relative_to(root)} ({largest.lines} lines)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT))
