"""Layering: lower packages never import the layers above them, and no modules import in a circle.

`vidcli.data` is used by the trainers and must not know them; `vidcli.models` takes its own
config dataclasses and never reads a recipe (recipe sections become models in `vidcli.builders`),
nor knows the samplers that drive it (they implement its hooks). Generation (`generate.py` and
`vidcli.sampling`) runs without the training code.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

import vidcli

PACKAGE = Path(vidcli.__file__).parent

FORBIDDEN = {
    "data": ("vidcli.train", "vidcli.builders", "vidcli.generate", "vidcli.cli"),
    "models": (
        "vidcli.recipe",
        "vidcli.builders",
        "vidcli.train",
        "vidcli.data",
        "vidcli.cli",
        "vidcli.sampling",
    ),
    "generate.py": ("vidcli.train",),
    "sampling": ("vidcli.train",),
}
"""Package folder or module file (relative to vidcli/) -> the modules it must never import."""
# `data/stage.py` is the prepare-data stage itself: like every stage it builds models from recipe
# sections (for --encode), so it alone may use the builders.
ALLOWED = {"vidcli/data/stage.py": ("vidcli.builders",)}


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, at any depth (function-local imports count too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(package):
    offenders = []
    folder_or_file = PACKAGE / package
    paths = [folder_or_file] if folder_or_file.is_file() else sorted(folder_or_file.rglob("*.py"))
    for path in paths:
        where = str(path.relative_to(PACKAGE.parent))
        for name in _imports(path):
            if name.startswith(ALLOWED.get(where, ("-",))):
                continue
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package]):
                offenders.append(f"{where} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_builders_live_beside_the_stages():
    from vidcli.builders import autoencoder_from_section, dit_from_section

    assert callable(autoencoder_from_section) and callable(dit_from_section)
    assert not (PACKAGE / "models" / "recipe_builders.py").exists()


def module_name(path: Path, root: Path) -> str:
    """Dotted name of a source file under `root` (the folder holding the top package); a
    package's `__init__.py` is the package itself."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, module-level and function-local.

    `from x import y` points at module `x.y` when that is a module, else at `x`; a package's
    `__init__` is a module of its own, and importing a submodule adds no arrow to its package.
    """
    root = package_dir.parent
    paths = {module_name(p, root): p for p in sorted(package_dir.rglob("*.py"))}

    def known(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `.` is this module's package, `..` its parent, ...
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    here = package[: len(package) - node.level + 1]
                    base = ".".join(here + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in paths else known(base))
        graph[module] = targets - {None, module}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
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
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(circles)


def describe_circles(graph: dict[str, set[str]], circles: list[list[str]]) -> str:
    """Each circle with the imports that close it, one `a -> b` line per import."""
    lines = []
    for n, members in enumerate(circles, 1):
        lines.append(f"circle {n}: {', '.join(members)}")
        lines += [f"  {a} -> {b}" for a in members for b in sorted(graph[a]) if b in members]
    return "\n".join(lines)


def test_no_import_circles():
    graph = import_graph(PACKAGE)
    circles = import_circles(graph)
    assert not circles, describe_circles(graph, circles)


def test_a_planted_import_circle_is_reported(tmp_path):
    """The circle finder on a tiny package: a function-local and a relative import close circles;
    `from package import name` of a non-module points at the package's `__init__`."""
    files = {
        "__init__.py": "from pkg.a import A\n",
        "a.py": "from pkg import b\nA = 1\n",
        "b.py": "def f():\n    from pkg.c import C\n",
        "c.py": "import pkg.a\nC = 2\n",
        "leaf.py": "from pkg import A\nimport os\n",
        "sub/__init__.py": "",
        "sub/x.py": "from ..leaf import *\nfrom . import y\n",
        "sub/y.py": "from pkg.sub.x import X\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(textwrap.dedent(text))
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.leaf"] == {"pkg"} and graph["pkg.sub.x"] == {"pkg.leaf", "pkg.sub.y"}
    circles = import_circles(graph)
    assert circles == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.sub.x", "pkg.sub.y"]]
    report = describe_circles(graph, circles)
    assert "  pkg.b -> pkg.c" in report and "  pkg.sub.y -> pkg.sub.x" in report
