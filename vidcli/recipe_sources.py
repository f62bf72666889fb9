"""Where recipe values come from: TOML files (with `include`) and `--set section.key=value` items.

Values are gathered as raw `{section: {key: value}}` tables with the source of each key, for
`vidcli.recipe` to validate; later sources replace earlier ones key by key.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from vidcli.errors import RecipeError
from vidcli.recipe_checks import suggest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Values = dict[str, dict[str, Any]]
Origin = dict[tuple[str, str], str]


def merge_file(
    path: Path, values: Values, origin: Origin, sections: Collection[str], chain: tuple[Path, ...]
) -> None:
    """Merge `path` into `values`, its includes first (depth first, cycles refused)."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise RecipeError(f"{path}: include cycle: {cycle}")
    if not path.is_file():
        where = f" (included from {chain[-1]})" if chain else ""
        raise RecipeError(f"{path}: recipe file not found{where}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from None
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise RecipeError(f"{path}: 'include' must be a file name or a list of file names")
    for inc in includes:
        merge_file(path.parent / inc, values, origin, sections, chain=(*chain, resolved))
    merge_table(data, values, origin, sections, str(path))


def merge_table(
    data: dict[str, Any], values: Values, origin: Origin, sections: Collection[str], source: str
) -> None:
    """Merge one parsed TOML table into `values`, recording `source` for each key."""
    for section, table in data.items():
        if section not in sections:
            raise RecipeError(
                f"{source}: unknown section [{section}]{suggest(section, sections)}; "
                f"allowed: {', '.join(sections)}"
            )
        if not isinstance(table, dict):
            raise RecipeError(f"{source}: '{section}' must be a table ([{section}])")
        for key, value in table.items():
            values.setdefault(section, {})[key] = value
            origin[(section, key)] = source


def parse_override(item: str, sections: Collection[str]) -> tuple[str, str, Any]:
    """`section.key=value`, the value read as a TOML literal (bare words become strings)."""
    target, sep, raw = item.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not key:
        raise RecipeError(f"--set {item}: expected section.key=value, e.g. --set train.lr=1e-4")
    if section not in sections:
        raise RecipeError(
            f"--set {item}: unknown section '{section}'{suggest(section, sections)}; "
            f"allowed: {', '.join(sections)}"
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as `cosine` or `runs/x`: validated as a string below
    return section, key.strip(), value
