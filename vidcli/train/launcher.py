"""Starts training stages on the DeepSpeed ZeRO engine."""

from __future__ import annotations

from pathlib import Path

from vidcli.errors import StageFailed
from vidcli.recipe import Recipe


def launch(stage: str, recipe: Recipe, recipe_path: Path, resume: str | None = None) -> None:
    """Run `stage` ('ae' or 'dit') with the validated recipe."""
    raise StageFailed(
        f"train-{stage} is not built yet (issue #6); the recipe {recipe_path} is valid"
    )
