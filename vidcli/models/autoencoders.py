"""Every autoencoder family behind one `build_autoencoder` / `load_autoencoder`.

Families and their presets:
- DC-AE (`vidcli.models.dcae`, our code): dc-ae-f32t4c128 (Open-Sora 2.0 Video DC-AE), MIT's
  image DC-AEs, the f8t4c16 baseline, the demo and tiny ones;
- HunyuanVideo VAE (`vidcli.models.hunyuan_vae`, diffusers): hunyuan-video-vae (+ -tiny);
- Flux AE (`vidcli.models.flux_ae`, diffusers): flux-ae (+ -tiny);
- Reducio-VAE (`vidcli.models.reducio`, our code; decode needs `content=`): reducio-ft4,
  reducio-ft2, reducio-tiny.

Folders are recognised by their config.json (`_class_name` of diffusers' classes or ReducioVAE,
else a DC-AE folder); bare .safetensors files need a preset, which also picks the family. The
Reducio-VAE also loads its released .ckpt files (weights_only, converted once to .safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vidcli.errors import UsageError
from vidcli.models import dcae, flux_ae, hunyuan_vae, reducio

FAMILIES: dict[str, tuple[str, ...]] = {
    "dc-ae": tuple(dcae.AE_PRESETS),
    "hunyuan-video-vae": tuple(hunyuan_vae.HUNYUAN_PRESETS),
    "flux-ae": tuple(flux_ae.FLUX_AE_PRESETS),
    "reducio-vae": tuple(reducio.REDUCIO_PRESETS),
}

_FOLDER_CLASSES = {
    hunyuan_vae.DIFFUSERS_CLASS: "hunyuan-video-vae",
    flux_ae.DIFFUSERS_CLASS: "flux-ae",
    reducio.CLASS_NAME: "reducio-vae",
}


def all_presets() -> list[str]:
    """Every autoencoder preset name, family by family."""
    return [name for names in FAMILIES.values() for name in names]


def preset_family(preset: str) -> str:
    """The family a preset belongs to; UsageError listing every preset otherwise."""
    for family, names in FAMILIES.items():
        if preset in names:
            return family
    raise UsageError(f"unknown autoencoder preset {preset!r}; presets: {', '.join(all_presets())}")


def build_autoencoder(preset: str, device: torch.device | str | None = None, **overrides: Any):
    """A randomly initialised autoencoder of any family (`device='meta'`: no memory)."""
    family = preset_family(preset)
    if family == "hunyuan-video-vae":
        return hunyuan_vae.build_hunyuan_vae(preset, device=device, **overrides)
    if family == "flux-ae":
        return flux_ae.build_flux_ae(preset, device=device, **overrides)
    if family == "reducio-vae":
        return reducio.build_reducio(preset, device=device, **overrides)
    with torch.device(device or "cpu"):
        return dcae.build_autoencoder(preset, **overrides)


def _folder_family(folder: Path) -> str:
    try:
        class_name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError):
        class_name = None
    return _FOLDER_CLASSES.get(class_name, "dc-ae")


def load_autoencoder(path: str | Path, preset: str | None = None, **overrides: Any):
    """Load any family strictly (eval mode, fp32); `overrides` replace config fields.

    Accepts: a .safetensors file plus a preset (the released `hunyuan_vae.safetensors`,
    `flux1-dev-ae.safetensors`, `F32T4C128_AE.safetensors`, ...), a diffusers folder
    (AutoencoderKLHunyuanVideo, AutoencoderKL in diffusers' or BFL's key layout, AutoencoderDC),
    a DC-AE folder (vidcli's or Open-Sora's), a released Reducio-VAE .ckpt plus a preset, or a
    folder from `reducio.save_reducio`.
    """
    path = Path(path)
    if path.is_file():
        if preset is None:
            raise UsageError(
                f"{path}: a bare weights file needs a preset; presets: {', '.join(all_presets())}"
            )
        family = preset_family(preset)
        # Only the Reducio-VAE was released as a pickle; it is read with weights_only=True.
        pickles = reducio.PICKLE_SUFFIXES if family == "reducio-vae" else ()
        if path.suffix != ".safetensors" and path.suffix not in pickles:
            raise UsageError(f"{path}: autoencoder weights must be a .safetensors file")
    elif path.is_dir():
        family = _folder_family(path)
    else:
        raise UsageError(f"{path}: autoencoder weights not found (a .safetensors file or a folder)")
    if family == "hunyuan-video-vae":
        return hunyuan_vae.load_hunyuan_vae(path, preset if path.is_file() else None, **overrides)
    if family == "flux-ae":
        return flux_ae.load_flux_ae(path, preset if path.is_file() else None, **overrides)
    if family == "reducio-vae":
        return reducio.load_reducio(path, preset if path.is_file() else None, **overrides)
    return dcae.load_autoencoder(path, preset=preset, **overrides)
