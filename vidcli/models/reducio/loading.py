"""Building, loading and saving Reducio-VAEs.

Weights load strictly from
- the released pickles (`reducio-ft4-fs32-attn23.ckpt`, `reducio-ft2-...`): read with
  `torch.load(weights_only=True)` only — a file that needs anything else is refused, never run —
  and converted once to a `.safetensors` file beside it (reused while the .ckpt is unchanged);
- a `.safetensors` file with the released key names, plus a preset;
- a folder from `save_reducio`: config.json (upstream's layout + `_class_name`) and
  model.safetensors.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from vidcli.errors import CheckpointError, UsageError
from vidcli.fileio import atomic_folder, atomic_path
from vidcli.models.kl_autoencoder import check_keys
from vidcli.models.reducio.config import REDUCIO_PRESETS, ReducioConfig
from vidcli.models.reducio.layers import FusionBlock, sinusoid_table
from vidcli.models.reducio.model import ReducioVAE

CLASS_NAME = "ReducioVAE"
"""`_class_name` in the config.json of a saved folder (how `load_autoencoder` recognises it)."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".ckpt",)
"""Released pickle checkpoints (read with weights_only=True only)."""
TRAINING_PREFIX = "loss."
"""Keys of upstream's training loss (LPIPS + discriminator) in a Lightning checkpoint: skipped."""


def resolve_config(preset: str | ReducioConfig, **overrides: Any) -> ReducioConfig:
    """A preset name or config, with overrides (`ddconfig` / `ddconfig_2d` take dicts)."""
    if isinstance(preset, str):
        if preset not in REDUCIO_PRESETS:
            names = ", ".join(REDUCIO_PRESETS)
            raise UsageError(f"unknown Reducio-VAE preset {preset!r}; presets: {names}")
        preset = REDUCIO_PRESETS[preset]
    return preset.with_overrides(**overrides) if overrides else preset.validate()


def build_reducio(
    preset: str | ReducioConfig, device: torch.device | str | None = None, **overrides: Any
) -> ReducioVAE:
    """A randomly initialised Reducio-VAE; `device='meta'` builds the full size for free."""
    with torch.device(device or "cpu"):
        return ReducioVAE(resolve_config(preset, **overrides))


def read_pickle_checkpoint(path: Path) -> dict[str, Tensor]:
    """A flat state dict (or Lightning's {"state_dict": ...}) read with weights_only=True.

    Anything a restricted unpickler refuses (code, arbitrary classes) raises a one-line
    CheckpointError naming the file; nothing in the file is executed.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused: not a plain tensor checkpoint (weights_only load failed: {first})"
        ) from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {k: v for k, v in raw.items() if not k.startswith(TRAINING_PREFIX)}


def _stamp(source: Path) -> dict[str, str]:
    info = source.stat()
    return {
        "converted_from": source.name,
        "source_bytes": str(info.st_size),
        "source_mtime_ns": str(info.st_mtime_ns),
    }


def converted_safetensors(ckpt: Path) -> Path | None:
    """The `.safetensors` conversion of a pickle checkpoint, cached beside it.

    Reused while its recorded size and mtime match the source; None when the folder is not
    writable (the caller then reads the pickle itself).
    """
    out = ckpt.with_suffix(".safetensors")
    stamp = _stamp(ckpt)
    if out.is_file():
        with safe_open(str(out), "pt") as f:
            if (f.metadata() or {}) == stamp:
                return out
    state = read_pickle_checkpoint(ckpt)
    try:
        with atomic_path(out) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=stamp)
    except OSError:
        return None
    return out


def read_weights(path: Path) -> dict[str, Tensor]:
    """fp32 state dict of a .safetensors file or a pickle checkpoint (converted once, cached)."""
    if path.suffix in PICKLE_SUFFIXES:
        converted = converted_safetensors(path)
        state = read_pickle_checkpoint(path) if converted is None else load_file(str(converted))
    elif path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        raise UsageError(f"{path}: Reducio-VAE weights must be .safetensors or .ckpt")
    return {k: v.float() for k, v in state.items()}


def is_reducio_folder(folder: Path) -> bool:
    """A folder whose config.json names the ReducioVAE class."""
    try:
        return json.loads((folder / CONFIG_NAME).read_text()).get("_class_name") == CLASS_NAME
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def _folder_files(folder: Path) -> tuple[ReducioConfig, Path]:
    path = folder / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the Reducio-VAE config ({e})") from None
    raw.pop("_class_name", None)
    config = ReducioConfig.from_dict(raw, str(path))
    if (folder / WEIGHTS_NAME).is_file():
        return config, folder / WEIGHTS_NAME
    found = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", *PICKLE_SUFFIXES))
    if len(found) != 1:
        raise CheckpointError(
            f"{folder}: expected {WEIGHTS_NAME} or exactly one weights file, "
            f"found {[p.name for p in found] or 'none'}"
        )
    return config, found[0]


def _check_positional_tables(model: ReducioVAE, source: str) -> None:
    """The fusion blocks' stored pos_embed must be the fixed sinusoid tables."""
    for name, block in model.named_modules():
        if isinstance(block, FusionBlock):
            want = sinusoid_table(block.pos_embed.shape[1], block.pos_embed.shape[-1])
            if not torch.allclose(block.pos_embed[0, :, 0], want, rtol=0, atol=1e-6):
                raise CheckpointError(f"{source}: {name}.pos_embed is not the sinusoid table")


def load_reducio(path: str | Path, preset: str | None = None, **overrides: Any) -> ReducioVAE:
    """Load strictly, eval mode, fp32: a .ckpt / .safetensors file with a preset, or a folder."""
    path = Path(path)
    if path.is_dir():
        config, weights = _folder_files(path)
        config = config.with_overrides(**overrides) if overrides else config
    elif path.is_file():
        if preset is None:
            names = ", ".join(REDUCIO_PRESETS)
            raise UsageError(f"{path}: a bare weights file needs a preset; presets: {names}")
        config, weights = resolve_config(preset, **overrides), path
    else:
        raise UsageError(f"{path}: Reducio-VAE weights not found (a file or a folder)")
    state = read_weights(weights)
    model = build_reducio(config, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_keys(expected, state, str(weights), "Reducio-VAE config (preset / ae.overrides)")
    model.load_state_dict(state, strict=True, assign=True)
    _check_positional_tables(model, str(weights))
    return model.float().eval()


def save_reducio(model: ReducioVAE, folder: str | Path) -> Path:
    """Write config.json + model.safetensors (released key names) atomically; returns folder."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        write_reducio_files(model, tmp)
    return folder


def write_reducio_files(
    model: ReducioVAE,
    folder: Path,
    write_weights: Callable[[dict[str, Tensor], Path, dict[str, str] | None], None] | None = None,
) -> None:
    """config.json + model.safetensors written straight into `folder`, for callers that publish
    it atomically themselves (a training checkpoint's staging folder).

    write_weights: (tensors, path, metadata) -> the same safetensors file as `save_file` (a
    checkpoint's hashes it as it writes it)."""
    config = {"_class_name": CLASS_NAME, **model.config.to_dict()}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if write_weights is None:
        save_file(state, str(folder / WEIGHTS_NAME))
    else:
        write_weights(state, folder / WEIGHTS_NAME, None)
