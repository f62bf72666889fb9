"""Atomic checkpoints: `checkpoints/step-NNNNNNN/` complete or absent, `latest` names the newest.

A checkpoint folder holds the DeepSpeed engine state (`deepspeed/`, every rank's shards),
`model.safetensors` + `config.json` (loadable alone), `ema.safetensors`, the resolved
`recipe.toml` and `trainer_state.json` (step, data position, counters). It is written under a
temporary name and renamed into place only once every rank has finished, so a kill -9 during a
save leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from vidcli.errors import UsageError

STEP_DIR = re.compile(r"^step-(\d{7})$")


@dataclass
class TrainerState:
    """What the loop needs besides the engine to continue exactly."""

    step: int
    samples_seen: int
    consecutive_bad_steps: int = 0


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:07d}"


def staging_dir(checkpoints: Path, step: int) -> Path:
    """Where a checkpoint is written before it is renamed to `step_dir`."""
    return checkpoints / f".incomplete-step-{step:07d}"


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def publish(checkpoints: Path, step: int, keep_last: int) -> Path:
    """Rename the staged checkpoint into place, point `latest` at it, prune old ones (rank 0)."""
    final = step_dir(checkpoints, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging_dir(checkpoints, step), final)
    link = checkpoints / "latest"
    tmp_link = checkpoints / ".latest.tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(final.name)
    os.replace(tmp_link, link)
    for old in complete_checkpoints(checkpoints)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints.glob(".incomplete-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def write_state(folder: Path, state: TrainerState) -> None:
    (folder / "trainer_state.json").write_text(json.dumps(asdict(state)))


def read_state(folder: Path) -> TrainerState:
    return TrainerState(**json.loads((folder / "trainer_state.json").read_text()))


def resolve_resume(resume: str | None, checkpoints: Path) -> Path | None:
    """`latest` -> the newest complete checkpoint (None on a fresh run); a path -> that folder."""
    if resume is None:
        return None
    if resume == "latest":
        done = complete_checkpoints(checkpoints)
        return done[-1] if done else None
    folder = Path(resume)
    if not (folder / "trainer_state.json").is_file():
        raise UsageError(
            f"--resume {resume}: not a vidcli checkpoint folder (no trainer_state.json)",
            hint=f"use --resume latest or a folder under {checkpoints}",
        )
    return folder
