"""Atomic checkpoints: `checkpoints/step-NNNNNNN/` complete or absent, `latest` names the newest.

A checkpoint folder holds the DeepSpeed engine state (`deepspeed/`, every rank's shards),
`model.safetensors` + `config.json` (loadable alone), `ema.safetensors`, the resolved
`recipe.toml`, `trainer_state.json` (step, data position, counters) and `manifest.json`, the
sha256 of every other file. It is written under a temporary name and renamed into place only once
every rank has finished, so a kill -9 during a save leaves the previous checkpoint loadable.

Resuming checks the manifest first: DeepSpeed reads its shards with
`torch.load(weights_only=False)`, which runs whatever code a pickle holds, so only folders this
program wrote, unchanged since, are handed to it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from vidcli.errors import UsageError
from vidcli.fileio import atomic_symlink, atomic_write_text, replace_folder

STEP_DIR = re.compile(r"^step-(\d{7})$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "vidcli-checkpoint-v1"


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
    replace_folder(staging_dir(checkpoints, step), final)
    atomic_symlink(checkpoints / "latest", final.name)
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
    """`latest` -> the newest complete checkpoint (None on a fresh run); a path -> that folder.

    Either way the folder must hold a manifest that matches every file in it (`verify_manifest`).
    """
    if resume is None:
        return None
    if resume == "latest":
        done = complete_checkpoints(checkpoints)
        if not done:
            return None
        folder = done[-1]
    else:
        folder = Path(resume)
        if not folder.is_dir():
            raise UsageError(
                f"--resume {resume}: no such checkpoint folder",
                hint=f"use --resume latest or a folder under {checkpoints}",
            )
    verify_manifest(folder)
    return folder


def write_manifest(folder: Path) -> None:
    """Record the size and sha256 of every file under `folder` (rank 0, after every rank saved)."""
    files = {
        _relative(path, folder): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in _files(folder)
    }
    atomic_write_text(
        folder / MANIFEST, json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1)
    )


def verify_manifest(folder: Path) -> None:
    """Raise UsageError unless `folder` is a vidcli checkpoint whose files match its manifest."""
    hint = (
        "resume only from checkpoints vidcli wrote: --resume latest, or a checkpoints/step-* folder"
    )
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        listed = manifest["files"] if manifest.get("format") == MANIFEST_FORMAT else None
    except (OSError, ValueError, AttributeError, KeyError):
        listed = None
    if not isinstance(listed, dict):
        raise UsageError(
            f"--resume {folder}: not a vidcli checkpoint (no valid {MANIFEST})", hint=hint
        )
    present = {_relative(path, folder): path for path in _files(folder)}
    links = sorted(name for name, path in present.items() if path.is_symlink())
    if links:
        raise UsageError(
            f"--resume {folder}: symlinks are not allowed in a checkpoint ({links[:3]})", hint=hint
        )
    unlisted = sorted(set(present) - set(listed))
    missing = sorted(set(listed) - set(present))
    if unlisted or missing:
        raise UsageError(
            f"--resume {folder}: files differ from its {MANIFEST} "
            f"(not listed: {unlisted[:3]}, missing: {missing[:3]})",
            hint=hint,
        )
    for name, entry in sorted(listed.items()):
        path = present[name]
        entry = entry if isinstance(entry, dict) else {}
        if path.stat().st_size != entry.get("bytes") or _sha256(path) != entry.get("sha256"):
            raise UsageError(
                f"--resume {folder}: {name} changed since the checkpoint was written "
                f"(sha256 differs from {MANIFEST})",
                hint=hint,
            )


def _files(folder: Path) -> list[Path]:
    """Every file under `folder` but the manifest (symlinks too: `verify_manifest` refuses them)."""
    manifest = folder / MANIFEST
    return sorted(p for p in folder.rglob("*") if (p.is_file() or p.is_symlink()) and p != manifest)


def _relative(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
