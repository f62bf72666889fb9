"""Text → video: the sampling pipeline behind `vidcli generate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vidcli.errors import StageFailed, UsageError
from vidcli.recipe import Recipe, load_recipe


@dataclass
class GenerateOptions:
    prompts: list[str]
    out: Path | None = None
    output_format: str = "mp4"
    image: Path | None = None
    batch_size: int = 1
    overwrite: bool = False
    snap: bool = False
    offload: bool = False


def load_generate_recipe(
    recipe_path: Path | None, checkpoint: Path | None, overrides: list[str]
) -> Recipe:
    return load_recipe(recipe_path, overrides)


def collect_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    collected = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise UsageError(f"{prompts_file}: prompts file not found")
        collected += [
            line.strip() for line in prompts_file.read_text().splitlines() if line.strip()
        ]
    if not collected:
        raise UsageError(
            "generate needs a prompt", hint='vidcli generate "a red circle moving right"'
        )
    return collected


def run(recipe: Recipe, options: GenerateOptions) -> None:
    raise StageFailed("generate is not built yet (issue #7)")
