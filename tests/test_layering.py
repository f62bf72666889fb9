"""Layering: lower packages never import the layers above them.

`vidcli.data` is used by the trainers and must not know them; `vidcli.models` takes its own
config dataclasses and never reads a recipe (recipe sections become models in `vidcli.builders`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vidcli

PACKAGE = Path(vidcli.__file__).parent

FORBIDDEN = {
    "data": ("vidcli.train", "vidcli.builders", "vidcli.generate", "vidcli.cli"),
    "models": ("vidcli.recipe", "vidcli.builders", "vidcli.train", "vidcli.data", "vidcli.cli"),
}
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
    for path in sorted((PACKAGE / package).rglob("*.py")):
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
