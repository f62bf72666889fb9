"""Build an MMDiT from a preset, save it as a folder, load folders and released checkpoints."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vidcli.errors import CheckpointError, UsageError
from vidcli.fileio import atomic_folder
from vidcli.models.mmdit.config import MMDiTConfig
from vidcli.models.mmdit.model import MMDiT
from vidcli.models.mmdit.presets import DIT_PRESETS

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FORMAT = "vidcli-mmdit-v1"


def resolve_config(preset: str | MMDiTConfig, **overrides) -> MMDiTConfig:
    """A preset name or config, with field overrides applied (and validated)."""
    if isinstance(preset, MMDiTConfig):
        config = preset
    elif preset in DIT_PRESETS:
        config = DIT_PRESETS[preset]
    else:
        raise UsageError(f"unknown DiT preset {preset!r}; available: {', '.join(DIT_PRESETS)}")
    names = [f.name for f in fields(MMDiTConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UsageError(f"unknown MMDiTConfig field(s) {unknown}; allowed: {', '.join(names)}")
    return replace(config, **overrides)


def build_dit(
    preset: str | MMDiTConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides,
) -> MMDiT:
    """A freshly initialised MMDiT; `device='meta'` builds the full-size models without memory."""
    config = resolve_config(preset, **overrides)
    with torch.device(device or "cpu"):
        model = MMDiT(config)
    return model.to(dtype) if dtype is not None else model


def save_dit(model: MMDiT, out_dir: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` into `out_dir` atomically (temp dir + rename)."""
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as staging:
        config = {"format": FORMAT, **model.config.to_dict()}
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT})
    return out_dir


def _weight_files(folder: Path) -> list[Path]:
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    if (folder / INDEX_FILE).is_file():
        weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise CheckpointError(
            f"{folder}: expected one .safetensors file (or {WEIGHTS_FILE} / {INDEX_FILE}), "
            f"found {[p.name for p in found] or 'none'}"
        )
    return found


def load_dit(
    path: str | Path,
    preset: str | MMDiTConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **overrides,
) -> MMDiT:
    """Load weights strictly into an MMDiT.

    `path` is (a) a folder written by `save_dit`, (b) a `.safetensors` file plus a `preset`, or
    (c) a folder with a reference `config.json` (Open-Sora MMDiTConfig fields) and the weights.
    A given `preset` overrides the folder's config.json. Parameters take the checkpoint's dtype
    unless `dtype` is given.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"DiT checkpoint {path} does not exist")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UsageError(f"{path}: expected a .safetensors file or a checkpoint folder")
        if preset is None:
            raise UsageError(f"{path} holds weights only: pass a preset ({', '.join(DIT_PRESETS)})")
        files = [path]
    else:
        files = _weight_files(path)
        if preset is None:
            if not (path / CONFIG_FILE).is_file():
                raise UsageError(f"{path} has no {CONFIG_FILE}: pass a preset")
            data = json.loads((path / CONFIG_FILE).read_text())
            preset = MMDiTConfig.from_dict(data, source=str(path / CONFIG_FILE))
    config = resolve_config(preset, **overrides)

    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file), device=str(device)))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}

    with torch.device("meta"):
        model = MMDiT(config)
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state, strict=True, assign=True)
    return model


def check_state_dict(model: MMDiT, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys (first few of each)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {items[:5]}{more}")
        raise CheckpointError(
            f"{source}: weights do not match the MMDiT config; " + "; ".join(parts),
            hint="check the preset (e.g. opensora-v2-11b vs opensora-v2-hcae vs flux-dev)",
        )
