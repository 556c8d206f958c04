"""The shape of the code base: module size, import cycles and layering (issue #15).

Read from the source with :mod:`ast`, nothing is imported, so the checks see modules for every
platform. What is checked:

- no Python module of the repository is over :data:`MAX_LINES` lines (httpcore's habit: a
  module a reader can hold in their head);
- no import cycle between first-party modules (``tunplug``, the ``tunplug_*`` plugin packages),
  counting every import, also inside functions, except those under ``if TYPE_CHECKING:``
  (types only, never executed);
- the core (``tunplug``) never imports a plugin package (``tunplug_*``) nor, outside
  ``tunplug.cli``, a CLI module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600
#: Where Python files live (the rest of the tree is build output, virtualenvs, caches).
SOURCE_DIRS = ("core", "plugins", "examples", "benchmarks", "fuzz", "scripts", "tests")
#: Folders (relative to ROOT) that hold importable first-party packages.
PACKAGE_ROOTS = (
    "core",
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "plugins").glob("*")) if p.is_dir()),
    "plugins/fastpath/python",
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "examples").glob("*/src"))),
)
SKIP_PARTS = {".venv", "target", "__pycache__", "build", "dist", ".git"}


def python_files() -> Iterator[Path]:
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if not SKIP_PARTS & set(path.relative_to(ROOT).parts):
                yield path


@cache
def first_party_modules() -> dict[str, Path]:
    """Module name -> file, for every first-party package under :data:`PACKAGE_ROOTS`."""
    modules: dict[str, Path] = {}
    for root in PACKAGE_ROOTS:
        base = ROOT / root
        for package in sorted(base.glob("tunplug*/__init__.py")):
            # A ``.pyi`` stands for a compiled module (``tunplug_fastpath._native``).
            for path in sorted([*package.parent.rglob("*.py"), *package.parent.rglob("*.pyi")]):
                if SKIP_PARTS & set(path.parts):
                    continue
                parts = list(path.relative_to(base).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                modules.setdefault(".".join(parts), path)
    return modules


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path) -> set[str]:
    """The first-party modules ``module`` imports (at any depth, not for type checking)."""
    known = first_party_modules()
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := resolve(alias.name)) is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            for alias in node.names:
                # ``from pkg import submodule`` depends on the submodule, else on pkg.
                target = resolve(f"{base}.{alias.name}") or resolve(base)
                if target is not None:
                    found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    found.discard(module)
    return found


@cache
def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in first_party_modules().items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


# -- the checks ------------------------------------------------------------------------------
def test_the_checks_see_the_whole_code_base():
    modules = first_party_modules()
    for expected in (
        "tunplug",
        "tunplug.wireguard",
        "tunplug.cli.main",
        "tunplug_tun_linux_mq.plugin",
        "tunplug_fastpath",
        "tunplug_fastpath._native",
        "tunplug_example_pcap.plugin",
    ):
        assert expected in modules
    assert "tunplug.plugins" in import_graph()["tunplug.app"]
    assert len(list(python_files())) > 250


def test_no_module_is_over_600_lines():
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in python_files()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert too_long == {}, f"split these along a seam (max {MAX_LINES} lines): {too_long}"


def test_no_import_cycle_between_first_party_modules():
    assert find_cycles(import_graph()) == []


def test_the_core_imports_no_plugin_package():
    wrong = {
        module: sorted(t for t in targets if t.startswith("tunplug_"))
        for module, targets in import_graph().items()
        if module.split(".")[0] == "tunplug"
    }
    assert {module: targets for module, targets in wrong.items() if targets} == {}


def test_only_the_cli_imports_cli_modules():
    def is_cli(name: str) -> bool:
        return name == "tunplug.cli" or name.startswith("tunplug.cli.")

    wrong = {
        module: sorted(t for t in targets if is_cli(t))
        for module, targets in import_graph().items()
        if not is_cli(module)
    }
    assert {module: targets for module, targets in wrong.items() if targets} == {}


# -- the checker itself ----------------------------------------------------------------------
def test_find_cycles_finds_a_cycle_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import tunplug.app\n", {"tunplug.app"}),
        ("from tunplug import hookimpl\n", {"tunplug"}),
        ("from tunplug import app\n", {"tunplug.app"}),
        ("def f():\n    from tunplug.cli import main\n", {"tunplug.cli.main"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tunplug.app\n", set()),
        ("from . import app\n", {"tunplug.app"}),
    ],
)
def test_imports_are_read_as_python_resolves_them(tmp_path, source, expected):
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert imports_of("tunplug.mod", path) == expected
