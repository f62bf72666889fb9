"""Flux's 2-D autoencoder (the t2i stage of Open-Sora 2.0's t2i2v), on diffusers' AutoencoderKL.

Black Forest Labs' AE (`flux1-dev-ae.safetensors`, Open-Sora's `autoencoder_2d.py` copy) is
diffusers' `AutoencoderKL` with four `DownEncoderBlock2D` / `UpDecoderBlock2D` stages and no
quant convs; diffusers' own `convert_ldm_vae_checkpoint` maps BFL's key names to diffusers' and
the result reproduces the reference to ≤ 2e-6 (shared/reference/released-pipeline.md).

Shapes: images (B, 3, H, W) or clips (B, 3, T, H, W) in [-1, 1], every frame encoded on its
own; H, W multiples of 8 -> latent (B, 16, [T,] H/8, W/8). Latent = 0.3611 · (mean − 0.1159);
see `vidcli.models.kl_autoencoder` for the convention.

Tiling (`TilingConfig`): frames in chunks of `temporal_tile`, spatial tiles of `spatial_tile`
px cross-faded linearly. Open-Sora's Flux AE has no tiling; the output shape is the untiled one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from vidcli.errors import CheckpointError, ShapeError, UsageError
from vidcli.models.dcae.config import TilingConfig
from vidcli.models.kl_autoencoder import (
    KLAutoencoder,
    check_keys,
    config_with,
    folder_weights,
    load_weights,
    read_diffusers_config,
    tiled_hw,
)

DIFFUSERS_CLASS = "AutoencoderKL"
SPATIAL_COMPRESSION = 8


@dataclass(frozen=True)
class FluxAEConfig:
    """Architecture of a Flux AE, in diffusers' names (BFL: ch · ch_mult, num_res_blocks,
    z_channels)."""

    in_channels: int = 3
    """Pixel channels."""
    out_channels: int = 3
    """Decoded channels."""
    latent_channels: int = 16
    """Latent channels C (BFL z_channels)."""
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Width of each encoder stage = BFL ch · ch_mult."""
    layers_per_block: int = 2
    """ResNet blocks per encoder stage (BFL num_res_blocks; the decoder has one more)."""
    scaling_factor: float = 0.3611
    """Latent = scaling_factor · (mean − shift_factor)."""
    shift_factor: float = 0.1159
    """See scaling_factor."""

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of diffusers' AutoencoderKL in the Flux layout."""
        n = len(self.block_out_channels)
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": ("DownEncoderBlock2D",) * n,
            "up_block_types": ("UpDecoderBlock2D",) * n,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "act_fn": "silu",
            "latent_channels": self.latent_channels,
            "norm_num_groups": 32,  # BFL's GroupNorm(32) is hard-coded
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        }


FLUX_AE_PRESETS: dict[str, FluxAEConfig] = {
    # black-forest-labs FLUX.1-dev `ae.safetensors`, shipped by hpcai-tech/Open-Sora-v2 as
    # `flux1-dev-ae.safetensors` (configs/diffusion/inference/t2i2v_768px.py, type
    # "autoencoder_2d"): 83,819,683 parameters, 244 tensors in BFL's layout.
    "flux-ae": FluxAEConfig(),
    # The tiny model of shared/reference/vectors/flux_ae_a.json (ch 32, ch_mult (1, 2, 2, 2),
    # one res block; 1,271,427 parameters), for tests.
    "flux-ae-tiny": FluxAEConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=1),
}

# Diffusers-layout folders that are not Flux-style AutoencoderKLs: refused with these values.
_FIXED = {"act_fn": "silu", "norm_num_groups": 32, "use_quant_conv": False}


def config_from_diffusers(raw: dict[str, Any], source: str) -> FluxAEConfig:
    """Our config from a diffusers AutoencoderKL config.json (Flux layout only)."""
    for key, want in _FIXED.items():
        if raw.get(key, want) != want:
            raise UsageError(
                f"{source}: {key} = {raw[key]!r}; vidcli's Flux AE needs {want!r} "
                "(other AutoencoderKLs, e.g. Stable Diffusion's, are not supported)"
            )
    fields = set(asdict(FluxAEConfig()))
    values = {k: v for k, v in raw.items() if k in fields and v is not None}
    return config_with(FluxAEConfig(), values, "FluxAEConfig")


def is_original_layout(state: dict[str, Tensor]) -> bool:
    """BFL / Open-Sora key names (`encoder.down.0.block.0...`) rather than diffusers'."""
    return any(k.startswith(("encoder.down.", "decoder.up.", "encoder.mid.block_")) for k in state)


def state_dict_from_original(
    state: dict[str, Tensor], config: FluxAEConfig, source: str
) -> dict[str, Tensor]:
    """BFL layout -> diffusers layout with diffusers' converter; strict like `check_keys`.

    Errors name the keys in the file's own (BFL) layout where they have one.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in FluxAE(config).model.state_dict().items()}
    converted = convert_ldm_vae_checkpoint(state, config.diffusers_kwargs())
    # The converter maps tensors by reference or as views, so storage identifies a tensor's
    # source key; a source key whose storage is not used, or lands on a key the model does not
    # have, is unexpected.
    origin = {v.untyped_storage().data_ptr(): k for k, v in state.items()}
    used = {converted[k].untyped_storage().data_ptr() for k in converted if k in expected}
    unexpected = sorted(k for k, v in state.items() if v.untyped_storage().data_ptr() not in used)
    missing = sorted(set(expected) - set(converted))
    wrong = [
        f"{origin.get(v.untyped_storage().data_ptr(), k)} {tuple(v.shape)} != {expected[k]}"
        for k, v in sorted(converted.items())
        if k in expected and tuple(v.shape) != expected[k]
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {items[:5]}{more}")
    if parts:
        raise CheckpointError(
            f"{source}: weights do not match the Flux AE config (preset / ae.overrides); "
            + "; ".join(parts)
            + (" (missing keys in diffusers' names)" if missing else "")
        )
    return converted


class FluxAE(KLAutoencoder):
    """The Flux AE behind vidcli's autoencoder interface; frames are independent images."""

    time_compression = 1
    spatial_compression = SPATIAL_COMPRESSION
    is_video = False
    family = "Flux AE"

    def __init__(self, config: FluxAEConfig):
        super().__init__(config)
        from diffusers import AutoencoderKL

        self.model = AutoencoderKL(**config.diffusers_kwargs())

    def check_input_shape(self, frames: int, height: int, width: int) -> None:
        if frames < 1:
            raise ShapeError(f"{frames} frames: the Flux AE takes T >= 1 (each frame an image)")
        super().check_input_shape(frames, height, width)

    def latent_frames(self, frames: int) -> int:
        return frames

    def decoded_frames(self, latent_frames: int) -> int:
        if latent_frames < 1:
            raise ShapeError(f"{latent_frames} latent frames: need at least 1")
        return latent_frames

    def _per_frame(self, run, x: Tensor, tiling: TilingConfig | None, in_s: int, out_s: int):
        """`run` on (N, C, H, W) images over every frame of x (B, C, T, H, W), tiled if asked."""
        B = x.shape[0]
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        if tiling is None:
            out = run(frames)
        else:
            latent_hw = (x.shape[-2] // in_s, x.shape[-1] // in_s)
            tile = tiling.spatial_tile // SPATIAL_COMPRESSION if tiling.spatial else 1 << 30
            chunk = tiling.temporal_tile if tiling.temporal else frames.shape[0]
            out = torch.cat(
                [
                    tiled_hw(run, part, latent_hw, tile, tiling.overlap, in_s, out_s)
                    for part in frames.split(chunk)
                ]
            )
        return rearrange(out, "(b t) c h w -> b c t h w", b=B)

    def _moments(self, x: Tensor, tiling: TilingConfig | None) -> Tensor:
        # BFL's encoder ends in 2·C moment channels; there is no quant conv.
        return self._per_frame(self.model.encoder, x, tiling, SPATIAL_COMPRESSION, 1)

    def _decode_latent(self, z: Tensor, tiling: TilingConfig | None) -> Tensor:
        return self._per_frame(self.model.decoder, z, tiling, 1, SPATIAL_COMPRESSION)


# ---------------------------------------------------------------------------------------------
# Building and loading


def resolve_config(preset: str | FluxAEConfig, **overrides: Any) -> FluxAEConfig:
    """A preset name or config, with field overrides."""
    if isinstance(preset, str):
        if preset not in FLUX_AE_PRESETS:
            raise UsageError(
                f"unknown Flux AE preset {preset!r}; presets: {', '.join(FLUX_AE_PRESETS)}"
            )
        preset = FLUX_AE_PRESETS[preset]
    return config_with(preset, overrides, "FluxAEConfig") if overrides else preset


def build_flux_ae(
    preset: str | FluxAEConfig, device: torch.device | str | None = None, **overrides: Any
) -> FluxAE:
    """A randomly initialised Flux AE; `device='meta'` builds the full size for free."""
    with torch.device(device or "cpu"):
        return FluxAE(resolve_config(preset, **overrides))


def load_flux_ae(path: str | Path, preset: str | None = None, **overrides: Any) -> FluxAE:
    """Load strictly, eval mode, fp32: `flux1-dev-ae.safetensors` (BFL layout) with a preset, or a
    diffusers AutoencoderKL folder whose weights are in diffusers' or BFL's layout."""
    path = Path(path)
    if path.is_file():
        if preset is None:
            raise UsageError(
                f"{path}: a bare weights file needs a preset; presets: {', '.join(FLUX_AE_PRESETS)}"
            )
        config, weights = resolve_config(preset, **overrides), path
    else:
        raw = read_diffusers_config(path, (DIFFUSERS_CLASS,))
        config = config_from_diffusers(raw, str(path / "config.json"))
        if overrides:
            config = config_with(config, overrides, "FluxAEConfig")
        weights = folder_weights(path)
    state = load_weights(weights)
    if is_original_layout(state):
        state = state_dict_from_original(state, config, str(weights))
    model = build_flux_ae(config, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    check_keys(expected, state, str(weights), "Flux AE config (preset / ae.overrides)")
    model.model.load_state_dict(state, strict=True, assign=True)
    return model.float().eval()
