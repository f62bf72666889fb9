"""Build the networks and load MIT's combined checkpoint files strictly.

A released `model.safetensors` holds `autoencoder.<efficientvit DC-AE key>` and
`diffusion_model.<network key>` in fp32; `DCAEDiffusion`'s own state dict has exactly those keys,
so loading is one strict `load_state_dict`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vidcli.errors import UsageError
from vidcli.models import dcae
from vidcli.models.dcae.loading import load_state_dict_strict
from vidcli.models.dcae_diffusion.config import (
    DiTConfig,
    NetworkConfig,
    ReleasedModel,
    released_model,
)
from vidcli.models.dcae_diffusion.networks import DiT, UViT

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def build_network(config: NetworkConfig) -> UViT | DiT:
    """A randomly initialised UViT or DiT (in the current default device and dtype)."""
    return DiT(config) if isinstance(config, DiTConfig) else UViT(config)


class DCAEDiffusion(nn.Module):
    """One released model: `autoencoder` (DC-AE, unscaled) + `diffusion_model` (UViT or DiT).

    Samplers in `vidcli.sampling.class_conditional` produce scaled latents (B, C, S, S);
    `decode` turns them into images (B, 3, H, W) in [-1, 1].
    """

    def __init__(self, name: str, spec: ReleasedModel):
        super().__init__()
        self.name = name
        self.spec = spec
        # MIT scales latents by multiplying; vidcli's DC-AE divides, so keep it unscaled and
        # apply latent_scale here.
        self.autoencoder = dcae.build_autoencoder(spec.autoencoder, scaling_factor=None)
        self.diffusion_model = build_network(spec.network)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Sampler output (B, C, S, S) -> images (B, 3, S·f, S·f) in [-1, 1]."""
        return self.autoencoder.decode(latents / self.spec.latent_scale)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents in the networks' (scaled) space."""
        return self.autoencoder.encode(images) * self.spec.latent_scale


def build_released(name: str, device: torch.device | str | None = None) -> DCAEDiffusion:
    """A released model's architecture with random weights (`device='meta'`: no memory)."""
    spec = released_model(name)
    with torch.device(device or "cpu"):
        return DCAEDiffusion(name.removeprefix("mit-han-lab/"), spec)


def _name_from_folder(folder: Path) -> str:
    try:
        name = json.loads((folder / CONFIG_FILE).read_text())["model_name"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UsageError(
            f"{folder}: no {CONFIG_FILE} with a model_name; pass the released name"
        ) from None
    return str(name)


def load_released(path: str | Path, name: str | None = None) -> DCAEDiffusion:
    """Load a released checkpoint strictly (eval mode, fp32).

    path: a downloaded repo folder (its config.json names the model) or its model.safetensors
    plus `name`. The file's tensors are assigned without building random weights first.
    """
    path = Path(path)
    if path.is_dir():
        name = name or _name_from_folder(path)
        weights = path / WEIGHTS_FILE
    elif path.suffix == ".safetensors":
        if name is None:
            raise UsageError(f"{path}: a bare weights file needs the released model's name")
        weights = path
    else:
        raise UsageError(f"{path}: not a model folder nor a .safetensors file")
    if not weights.is_file():
        raise UsageError(f"{weights}: weights not found")
    model = build_released(name, device="meta")
    load_state_dict_strict(model, load_file(str(weights)), str(weights))
    return model.float().eval()
