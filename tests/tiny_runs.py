"""Tiny training runs started as subprocesses: recipe overrides, arguments, environment."""

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_ae_values(tmp_path: Path, source: str = "synthetic:shapes:4") -> dict[str, object]:
    """Recipe overrides: the tiny random DC-AE on 8-frame clips of `source`, with the data cache
    and the run folder under tmp_path (`cache`, `run`)."""
    return {
        "ae.preset": "dc-ae-tiny",
        "data.source": source,
        "data.cache_dir": str(tmp_path / "cache"),
        "data.num_frames": 8,
        "train.output": str(tmp_path / "run"),
    }


def tiny_dit_values(tmp_path: Path, clips: int = 4) -> dict[str, object]:
    """Recipe overrides: a tiny DiT on a fresh tiny DC-AE (`ae.path` cleared) and `clips`
    synthetic clips, batches of 2, 8 text tokens; folders as in `tiny_ae_values`."""
    return {
        "ae.path": "",
        **tiny_ae_values(tmp_path, f"synthetic:shapes:{clips}"),
        "dit.preset": "mmdit-tiny",
        "train.batch_size": 2,
        "text.max_length": 8,
    }


def recipe_args(recipe: str, values: dict[str, object]) -> list[str]:
    """`recipes/<recipe>` followed by one `--set key=<json value>` per entry."""
    args = [str(REPO / "recipes" / recipe)]
    for key, value in values.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment without the launcher's rank variables (a child run is a fresh launch),
    plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(extra)
    return env
