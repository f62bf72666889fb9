"""Build DC-AEs from presets, load checkpoints in four layouts, save atomically."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vidcli.errors import CheckpointError, UsageError
from vidcli.fileio import atomic_folder
from vidcli.models.dcae.config import DCAEConfig, config_from_dict, config_to_dict
from vidcli.models.dcae.convert import (
    config_from_diffusers,
    config_from_reference,
    state_dict_from_diffusers,
)
from vidcli.models.dcae.model import DCAE
from vidcli.models.dcae.presets import AE_PRESETS

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OWN_FILES = (CONFIG_FILE, WEIGHTS_FILE)
DIFFUSERS_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def resolve_config(preset: str | DCAEConfig, **overrides: Any) -> DCAEConfig:
    """A preset name or config, with field overrides (lists become tuples)."""
    if isinstance(preset, str):
        if preset not in AE_PRESETS:
            raise UsageError(f"unknown DC-AE preset {preset!r}; presets: {', '.join(AE_PRESETS)}")
        preset = AE_PRESETS[preset]
    if not overrides:
        return preset
    return config_from_dict({**config_to_dict(preset), **overrides})


def build_autoencoder(preset: str | DCAEConfig, **overrides: Any) -> DCAE:
    """A randomly initialised DC-AE from a preset name or config (weights in the default dtype)."""
    return DCAE(resolve_config(preset, **overrides))


def load_state_dict_strict(model: nn.Module, sd: dict[str, Tensor], source: str) -> None:
    """Copy `sd` into `model` (cast to its dtypes; assigned where the model is on `meta`); any
    missing, unexpected or misshaped key raises CheckpointError naming `source`."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)}!={tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: weights do not match the model: {len(missing)} missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(wrong)} shape mismatches {wrong[:3]}"
        )
    model.load_state_dict(sd, strict=True, assign=any(v.is_meta for v in own.values()))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read DC-AE config ({e})") from None


def _folder_weights(folder: Path, preferred: str) -> Path:
    if (folder / preferred).is_file():
        return folder / preferred
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise CheckpointError(
            f"{folder}: expected {preferred} or exactly one .safetensors file, found {len(found)}"
        )
    return found[0]


def load_autoencoder(path: str | Path, preset: str | None = None, **overrides: Any) -> DCAE:
    """Load a DC-AE in eval mode, fp32; `overrides` replace config fields (e.g. scaling_factor).

    Accepts: (a) a folder from `save_autoencoder`; (b) a diffusers AutoencoderDC folder;
    (c) a .safetensors file with Open-Sora / MIT key names plus `preset`; (d) a folder whose
    config.json is Open-Sora's nested DCAEConfig beside one .safetensors file.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UsageError(f"{path}: DC-AE weights must be a .safetensors file")
        if preset is None:
            raise UsageError(
                f"{path}: a bare weights file needs a preset; presets: {', '.join(AE_PRESETS)}"
            )
        cfg, weights, convert = resolve_config(preset), path, None
    elif (path / CONFIG_FILE).is_file():
        raw = _read_json(path / CONFIG_FILE)
        if raw.get("_class_name") == "AutoencoderDC" or "encoder_block_out_channels" in raw:
            cfg, weights = config_from_diffusers(raw), _folder_weights(path, DIFFUSERS_WEIGHTS_FILE)
            convert = state_dict_from_diffusers
        elif isinstance(raw.get("encoder"), dict):
            cfg, weights, convert = (
                config_from_reference(raw),
                _folder_weights(path, WEIGHTS_FILE),
                None,
            )
        else:
            cfg, weights, convert = config_from_dict(raw), _folder_weights(path, WEIGHTS_FILE), None
        if preset is not None:
            raise UsageError(f"{path}: a folder carries its own config; drop preset={preset!r}")
    else:
        raise UsageError(f"{path}: not a .safetensors file nor a folder with {CONFIG_FILE}")
    if overrides:
        cfg = resolve_config(cfg, **overrides)
    sd = load_file(str(weights))
    if convert is not None:
        sd = convert(sd, cfg)
    model = DCAE(cfg)
    load_state_dict_strict(model, sd, str(weights))
    return model.float().eval()


def save_autoencoder(model: DCAE, out_dir: str | Path) -> Path:
    """Publish config.json + model.safetensors as `out_dir` in one step.

    Both files are written into a staging folder that is then renamed to `out_dir`
    (`fileio.atomic_folder`), so a reader never pairs a new config with old weights. An existing
    `out_dir` is replaced whole; one that holds other files is refused rather than emptied.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in OWN_FILES)
        if foreign:
            raise UsageError(
                f"{out_dir}: holds {', '.join(foreign[:3])}, not only an autoencoder's "
                f"{' + '.join(OWN_FILES)}; save to an empty or new folder"
            )
    with atomic_folder(out_dir) as staging:
        write_autoencoder_files(model, staging)
    return out_dir


def write_autoencoder_files(
    model: DCAE,
    folder: Path,
    write_weights: Callable[[dict[str, Tensor], Path, dict[str, str] | None], None] | None = None,
) -> None:
    """config.json + model.safetensors written straight into `folder`.

    For callers that publish `folder` atomically themselves (a training checkpoint's staging
    folder); everyone else uses `save_autoencoder`. write_weights: (tensors, path, metadata) ->
    the same safetensors file as `save_file` (a checkpoint's hashes it as it writes it).
    """
    (folder / CONFIG_FILE).write_text(json.dumps(config_to_dict(model.config), indent=2) + "\n")
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "vidcli": "dcae"}
    if write_weights is None:
        save_file(sd, str(folder / WEIGHTS_FILE), metadata=metadata)
    else:
        write_weights(sd, folder / WEIGHTS_FILE, metadata)
