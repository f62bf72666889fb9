"""DC-AE-Diffusion: MIT HAN Lab's class-conditional ImageNet 512 px models on DC-AE latents.

Networks: UViT-S/H/2B (ε-prediction, DPM-Solver), USiT-H/2B (the same UViT trained by flow
matching, ODE sampling), DiT-XL (learned variance, 250-step DDPM). The samplers live in
`vidcli.sampling.class_conditional`.

Checkpoints: each `mit-han-lab/dc-ae-*-in-512px*` repo holds one fp32 model.safetensors with
`autoencoder.*` (the DC-AE, efficientvit key names) and `diffusion_model.*` (the network) and no
architecture: `RELEASED` maps the name to network, autoencoder, latent scale and sampler.
`load_released` loads both parts strictly into a `DCAEDiffusion`.

Latents: the networks work on `latent_scale · raw encoder output` (MIT's convention);
`DCAEDiffusion.decode` divides by it before the decoder.

Labels: ImageNet-1k ids 0..999 (1000 = null for CFG); `class_id` reads ids or class names.
"""

from vidcli.models.dcae_diffusion.config import (
    NUM_CLASSES,
    RELEASED,
    DiTConfig,
    NetworkConfig,
    ReleasedModel,
    Sampler,
    UViTConfig,
    released_model,
)
from vidcli.models.dcae_diffusion.labels import class_id, class_name, class_names
from vidcli.models.dcae_diffusion.loading import (
    DCAEDiffusion,
    build_network,
    build_released,
    load_released,
)
from vidcli.models.dcae_diffusion.networks import DiT, UViT, forward_with_cfg

__all__ = [
    "NUM_CLASSES",
    "RELEASED",
    "DCAEDiffusion",
    "DiT",
    "DiTConfig",
    "NetworkConfig",
    "ReleasedModel",
    "Sampler",
    "UViT",
    "UViTConfig",
    "build_network",
    "build_released",
    "class_id",
    "class_name",
    "class_names",
    "forward_with_cfg",
    "load_released",
    "released_model",
]
