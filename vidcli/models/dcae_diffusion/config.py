"""Configs of the class-conditional networks and the table of MIT's released checkpoints.

The released `model.safetensors` files carry no architecture: the repository name is the only
thing that selects network, autoencoder, latent scale and sampler, so `RELEASED` is that table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vidcli.errors import UsageError

NUM_CLASSES = 1000
"""ImageNet classes; label NUM_CLASSES (1000) is the null label used for CFG."""

Sampler = Literal["dpm-solver", "sit-dopri5", "sit-heun2", "ddpm"]
"""dpm-solver: ε-prediction on the discrete VP schedule (UViT); sit-*: flow-matching ODE (USiT);
ddpm: ancestral sampling with learned-range variance (DiT)."""


@dataclass(frozen=True)
class UViTConfig:
    """U-ViT with a label token, a time token and long skips (UViT-S/H/2B, USiT-H/2B).

    `depth` d means d/2 input blocks, one middle block and d/2 output blocks.
    """

    in_channels: int = 32
    input_size: int = 16
    patch_size: int = 1
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        if self.depth % 2 or self.hidden_size % self.num_heads or self.hidden_size % 2:
            raise UsageError(
                f"UViT config: depth {self.depth} must be even and hidden_size "
                f"{self.hidden_size} even and divisible by num_heads {self.num_heads}"
            )
        if self.input_size % self.patch_size:
            raise UsageError(
                f"UViT config: input_size {self.input_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )


@dataclass(frozen=True)
class DiTConfig:
    """DiT with adaLN-Zero blocks and learned variance (2C output channels: ε then variance)."""

    in_channels: int = 32
    input_size: int = 16
    patch_size: int = 1
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = NUM_CLASSES
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise UsageError(
                f"DiT config: hidden_size {self.hidden_size} must be a multiple of 4 and of "
                f"num_heads {self.num_heads}"
            )
        if self.input_size % self.patch_size:
            raise UsageError(
                f"DiT config: input_size {self.input_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )


NetworkConfig = UViTConfig | DiTConfig


@dataclass(frozen=True)
class ReleasedModel:
    """One released checkpoint: what the file's name implies.

    latent_scale multiplies the raw encoder output (MIT's convention): the sampler returns
    `latent_scale · raw latent`, so images are `decoder(sample / latent_scale)`.
    """

    autoencoder: str
    latent_scale: float
    network: NetworkConfig
    sampler: Sampler
    cfg_scale: float
    steps: int
    """NFE of the DPM-Solver, number of output times of the ODE grid, or DDPM steps."""


def _uvit(size: str, latent_channels: int, input_size: int) -> UViTConfig:
    depth, hidden, heads = {"s": (12, 512, 8), "h": (28, 1152, 16), "2b": (28, 2048, 32)}[size]
    return UViTConfig(
        in_channels=latent_channels,
        input_size=input_size,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
    )


_F32 = ("dc-ae-f32c32-in-1.0", 0.3189, 32, 16)  # AE preset, scale, latent channels, latent size
_F64 = ("dc-ae-f64c128-in-1.0", 0.2889, 128, 8)


def _released(ae: tuple[str, float, int, int], network: str, cfg_scale: float) -> ReleasedModel:
    name, scale, channels, size = ae
    kind, _, width = network.partition("-")
    if kind == "dit":
        net: NetworkConfig = DiTConfig(in_channels=channels, input_size=size)
        return ReleasedModel(name, scale, net, "ddpm", cfg_scale, 250)
    net = _uvit(width, channels, size)
    if kind == "usit":
        # upstream's released ODE setting: dopri5 over 250 output times (only the last is used)
        return ReleasedModel(name, scale, net, "sit-dopri5", cfg_scale, 250)
    return ReleasedModel(name, scale, net, "dpm-solver", cfg_scale, 30)


# mit-han-lab/<name> on the Hugging Face Hub (efficientvit applications/dc_ae/README.md and
# diffusion_model_zoo.py @ de7d773). cfg_scale: the scale of each model's best published FID.
RELEASED: dict[str, ReleasedModel] = {
    "dc-ae-f32c32-in-1.0-uvit-s-in-512px": _released(_F32, "uvit-s", 1.5),
    "dc-ae-f32c32-in-1.0-dit-xl-in-512px": _released(_F32, "dit-xl", 1.3),
    # the README prints no scale for this one; the DiT-XL eval default 1.3 is used
    "dc-ae-f32c32-in-1.0-dit-xl-in-512px-trainbs1024": _released(_F32, "dit-xl", 1.3),
    "dc-ae-f32c32-in-1.0-uvit-h-in-512px": _released(_F32, "uvit-h", 1.5),
    "dc-ae-f64c128-in-1.0-uvit-h-in-512px": _released(_F64, "uvit-h", 1.5),
    "dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k": _released(_F64, "uvit-h", 1.5),
    "dc-ae-f32c32-in-1.0-uvit-2b-in-512px": _released(_F32, "uvit-2b", 1.5),
    "dc-ae-f64c128-in-1.0-uvit-2b-in-512px": _released(_F64, "uvit-2b", 1.5),
    "dc-ae-f64c128-in-1.0-uvit-2b-in-512px-train2000k": _released(_F64, "uvit-2b", 1.5),
    "dc-ae-f32c32-in-1.0-usit-h-in-512px": _released(_F32, "usit-h", 1.2),
    "dc-ae-f32c32-in-1.0-usit-2b-in-512px": _released(_F32, "usit-2b", 1.15),
}


def released_model(name: str) -> ReleasedModel:
    """The table row of a released checkpoint (`mit-han-lab/` prefix optional)."""
    key = name.removeprefix("mit-han-lab/")
    if key not in RELEASED:
        raise UsageError(f"unknown DC-AE-Diffusion model {name!r}; released: {', '.join(RELEASED)}")
    return RELEASED[key]
