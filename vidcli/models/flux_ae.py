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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from vidcli.errors import CheckpointError, ShapeError
from vidcli.models.dcae.config import TilingConfig
from vidcli.models.kl_autoencoder import (
    KLAutoencoder,
    KLConfig,
    KLFamily,
    mismatch_parts,
    tiled_hw,
)

DIFFUSERS_CLASS = "AutoencoderKL"
SPATIAL_COMPRESSION = 8


@dataclass(frozen=True)
class FluxAEConfig(KLConfig):
    """Architecture of a Flux AE, in diffusers' names (BFL's: latent_channels = z_channels,
    block_out_channels = ch · ch_mult, layers_per_block = num_res_blocks)."""

    down_block_type = "DownEncoderBlock2D"
    up_block_type = "UpDecoderBlock2D"

    scaling_factor: float = 0.3611
    """Latent = scaling_factor · (mean − shift_factor)."""
    shift_factor: float = 0.1159
    """See scaling_factor."""

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of diffusers' AutoencoderKL in the Flux layout."""
        return {
            **super().diffusers_kwargs(),
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
    parts = mismatch_parts(missing, unexpected, wrong)
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
    diffusers_class = DIFFUSERS_CLASS

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


def _diffusers_layout(
    state: dict[str, Tensor], config: FluxAEConfig, source: str
) -> dict[str, Tensor]:
    """Files in BFL's layout converted; diffusers-layout ones as they are."""
    return state_dict_from_original(state, config, source) if is_original_layout(state) else state


FLUX_AE = KLFamily(
    model_class=FluxAE,
    config_class=FluxAEConfig,
    presets=FLUX_AE_PRESETS,
    # Diffusers-layout folders that are not Flux-style AutoencoderKLs: refused with these values.
    required={"act_fn": "silu", "norm_num_groups": 32, "use_quant_conv": False},
    refusal="vidcli's Flux AE needs {want!r} "
    "(other AutoencoderKLs, e.g. Stable Diffusion's, are not supported)",
    to_diffusers_layout=_diffusers_layout,
)


def resolve_config(preset: str | FluxAEConfig, **overrides: Any) -> FluxAEConfig:
    """A preset name or config, with field overrides."""
    return FLUX_AE.resolve(preset, **overrides)


def build_flux_ae(
    preset: str | FluxAEConfig, device: torch.device | str | None = None, **overrides: Any
) -> FluxAE:
    """A randomly initialised Flux AE; `device='meta'` builds the full size for free."""
    return FLUX_AE.build(preset, device, **overrides)


def load_flux_ae(path: str | Path, preset: str | None = None, **overrides: Any) -> FluxAE:
    """Load strictly, eval mode, fp32: `flux1-dev-ae.safetensors` (BFL layout) with a preset, or a
    diffusers AutoencoderKL folder whose weights are in diffusers' or BFL's layout."""
    return FLUX_AE.load(path, preset, **overrides)
