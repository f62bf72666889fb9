"""Atomic checkpoints: `checkpoints/step-NNNNNNN/` complete or absent, `latest` names the newest.

A checkpoint folder holds the DeepSpeed engine state (`deepspeed/`, every rank's shards),
`model.safetensors` + `config.json` (loadable alone), `ema.safetensors`, the resolved
`recipe.toml`, `trainer_state.json` (step, data position, counters, lineage) and
`manifest.json`, the sha256 of every other file. It is written under a temporary name and renamed
into place only once every rank has finished, so a kill -9 during a save leaves the previous
checkpoint loadable.

Files are hashed as they are written (`hashed_file`, `hashing_saves`): each rank hashes its own
DeepSpeed shards, so nobody re-reads hundreds of GB before the manifest can be written.

Resuming checks the manifest first: DeepSpeed reads its shards with
`torch.load(weights_only=False)`, which runs whatever code a pickle holds, so only folders this
program wrote, unchanged since, are handed to it.

Each checkpoint records its lineage: the ids of the checkpoints it descends from, then its own.
After a resume from an earlier step the folder holds two branches; `latest` names the newest
checkpoint of the run that saved last, and pruning only removes that run's own ancestors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from vidcli.errors import UsageError
from vidcli.fileio import atomic_path, atomic_symlink, atomic_write_text, replace_folder

STEP_DIR = re.compile(r"^step-(\d{7})$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "vidcli-checkpoint-v1"
STATE_FILE = "trainer_state.json"

Digests = dict[str, dict[str, Any]]
"""A file's path relative to its checkpoint folder -> {"bytes": size, "sha256": hex digest}."""


@dataclass
class TrainerState:
    """What the loop needs besides the engine to continue exactly."""

    step: int
    samples_seen: int
    consecutive_bad_steps: int = 0
    lineage: list[str] = field(default_factory=list)
    """Ids of the checkpoints this state descends from, oldest first; a saved one's own id last."""


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


def publish(
    checkpoints: Path,
    step: int,
    keep_last: int,
    lineage: list[str],
    resumed_from: Path | None = None,
) -> Path:
    """Rename the staged checkpoint into place and point `latest` at it (rank 0).

    Then prune: of the checkpoints in `lineage` (this one and its ancestors), all but the newest
    `keep_last`, never `resumed_from`. Another branch's checkpoints (those of a run this one
    abandoned by resuming from an earlier step) are left alone: they are not this run's to drop.
    """
    final = step_dir(checkpoints, step)
    replace_folder(staging_dir(checkpoints, step), final)
    atomic_symlink(checkpoints / "latest", final.name)
    ours = set(lineage)
    kept = resumed_from.resolve() if resumed_from is not None else None
    mine = [p for p in complete_checkpoints(checkpoints) if checkpoint_id(p) in ours]
    for old in mine[:-keep_last]:
        if old.resolve() != kept:
            shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints.glob(".incomplete-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoint_id(folder: Path) -> str | None:
    """The id a checkpoint recorded for itself (last in its lineage); None for older folders."""
    try:
        lineage = json.loads((folder / STATE_FILE).read_text()).get("lineage")
    except (OSError, ValueError, AttributeError):
        return None
    return lineage[-1] if isinstance(lineage, list) and lineage else None


def write_state(folder: Path, state: TrainerState, written: Digests | None = None) -> None:
    """`trainer_state.json`, hashed into `written` as it is written when given."""
    write_text_hashed(folder / STATE_FILE, folder, json.dumps(asdict(state)), written)


def read_state(folder: Path) -> TrainerState:
    return TrainerState(**json.loads((folder / STATE_FILE).read_text()))


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The checkpoint `latest` names: the newest of the run that saved last, which need not hold
    the highest step. Without the link (a first save killed before linking) the highest step;
    None when there is no checkpoint."""
    link = checkpoints / "latest"
    if not os.path.islink(link):
        done = complete_checkpoints(checkpoints)
        return done[-1] if done else None
    target = os.readlink(link)
    folder = checkpoints / target
    if not STEP_DIR.match(target) or not folder.is_dir():
        raise UsageError(
            f"--resume latest: {link} points at {target!r}, not a checkpoint in {checkpoints}",
            hint=f"name a checkpoint folder: --resume {checkpoints}/step-NNNNNNN",
        )
    return folder


def resolve_resume(resume: str | None, checkpoints: Path) -> Path | None:
    """`latest` -> the checkpoint the `latest` link names (None on a fresh run); a path -> that
    folder.

    Either way the folder must hold a manifest that matches every file in it (`verify_manifest`).
    """
    if resume is None:
        return None
    if resume == "latest":
        folder = latest_checkpoint(checkpoints)
        if folder is None:
            return None
    else:
        folder = Path(resume)
        if not folder.is_dir():
            raise UsageError(
                f"--resume {resume}: no such checkpoint folder",
                hint=f"use --resume latest or a folder under {checkpoints}",
            )
    verify_manifest(folder)
    return folder


def write_manifest(folder: Path, written: Digests | None = None) -> None:
    """Record the size and sha256 of every file under `folder` (rank 0, after every rank saved).

    Files in `written` were hashed while they were written and are not read again; the others
    (those DeepSpeed copies or a stage writes with its own writer) are read and hashed here.
    """
    written = written or {}
    files = {}
    for path in _files(folder):
        name = _relative(path, folder)
        entry = written.get(name)
        size = path.stat().st_size
        if entry is None or entry["bytes"] != size:
            entry = {"bytes": size, "sha256": _sha256(path)}
        files[name] = entry
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


class HashingFile:
    """A binary file open for writing that hashes every byte on its way to disk.

    It has no `fileno`, so `torch.save` writes through `write` rather than past it to the fd.
    """

    def __init__(self, file: BinaryIO):
        self._file = file
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self._digest.update(data)
        written = self._file.write(data)
        self.size += written
        return written

    def flush(self) -> None:
        self._file.flush()

    def entry(self) -> dict[str, Any]:
        return {"bytes": self.size, "sha256": self._digest.hexdigest()}


@contextmanager
def hashed_file(path: Path, folder: Path, written: Digests) -> Iterator[HashingFile]:
    """Write `path` (under `folder`) through a temp file beside it, hashing the bytes as they go.

    When the block completes the temp file is renamed to `path` and its size and sha256 are
    recorded in `written` under its name relative to `folder`; on an error nothing is recorded.
    """
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        out = HashingFile(f)
        yield out
    written[_relative(path, folder)] = out.entry()


SAFETENSORS_DTYPES = {
    torch.int64: "I64",
    torch.float64: "F64",
    torch.float32: "F32",
    torch.int32: "I32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int16: "I16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
"""torch dtype -> safetensors dtype, in the order safetensors lays tensors out (its dtype enum,
descending; by name within a dtype)."""
_DTYPE_RANK = {dtype: i for i, dtype in enumerate(SAFETENSORS_DTYPES)}


def write_safetensors_hashed(
    tensors: dict[str, torch.Tensor],
    path: Path,
    folder: Path,
    written: Digests,
    metadata: dict[str, str] | None = None,
) -> None:
    """`tensors` as a safetensors file, hashed on its way to disk (`hashed_file`), so the
    manifest never reads a checkpoint's largest files back.

    The format: an 8-byte little-endian header length, the JSON header (`__metadata__`, then per
    tensor its dtype, shape and byte range in the data), padded with spaces to 8 bytes, then the
    tensors' bytes back to back in header order. The tensors are in safetensors' own order and
    the header is serialised as it does, so the bytes are `safetensors.torch.save_file`'s (whose
    `__metadata__` keys come in hash order: with two or more, one of its outcomes). One tensor is
    on the host at a time.
    """
    header: dict[str, Any] = {"__metadata__": metadata} if metadata is not None else {}
    order = sorted(tensors, key=lambda name: (_DTYPE_RANK[tensors[name].dtype], name))
    offset = 0
    for name in order:
        t = tensors[name]
        end = offset + t.numel() * t.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    with hashed_file(path, folder, written) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            data = tensors[name].detach().to("cpu").contiguous().reshape(-1)
            f.write(memoryview(data.view(torch.uint8).numpy()))


def write_text_hashed(path: Path, folder: Path, text: str, written: Digests | None) -> None:
    """Write `text` (UTF-8) to `path` atomically, recording its digest in `written` if given."""
    if written is None:
        atomic_write_text(path, text)
        return
    with hashed_file(path, folder, written) as f:
        f.write(text.encode("utf-8"))


class HashingCheckpointEngine:
    """DeepSpeed's torch checkpoint engine, with each file hashed as `torch.save` writes it."""

    def __init__(self, inner: Any, folder: Path, written: Digests):
        self._inner, self._folder, self._written = inner, folder, written

    def save(self, state_dict: Any, path: str) -> None:
        import torch

        with hashed_file(Path(path), self._folder, self._written) as f:
            torch.save(
                state_dict, f, _use_new_zipfile_serialization=self._inner.zipfile_serialization
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextmanager
def hashing_saves(engine: Any, folder: Path, written: Digests) -> Iterator[None]:
    """Inside, `engine.save_checkpoint` records the digest of every file it saves in `written`.

    Only DeepSpeed's default (torch) checkpoint engine is wrapped: another engine (or an engine
    object without one) writes on its own terms, and `write_manifest` hashes its files afterwards.
    """
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    inner = getattr(engine, "checkpoint_engine", None)
    if not isinstance(inner, TorchCheckpointEngine):
        yield
        return
    engine.checkpoint_engine = HashingCheckpointEngine(inner, folder, written)
    try:
        yield
    finally:
        engine.checkpoint_engine = inner


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
