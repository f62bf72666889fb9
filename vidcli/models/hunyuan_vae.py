"""HunyuanVideo causal 3-D VAE, as Open-Sora 2.0's 11B model uses it, on diffusers.

diffusers' `AutoencoderKLHunyuanVideo` has exactly the key names and shapes of the released
`hunyuan_vae.safetensors` (hpcai-tech/Open-Sora-v2) and reproduces Open-Sora's
`opensora/models/hunyuan_vae` to ≤ 3e-6 (shared/reference/released-pipeline.md), so this module
only wraps it: presets, frame rules, the latent convention and the tiling policy.

Shapes: pixels (B, 3, T, H, W) in [-1, 1] with T = 4k + 1 (causal: frame 0 alone, then groups of
4) and H, W multiples of 8 -> latent (B, 16, k + 1, H/8, W/8). Latent = 0.476986 · mean
(shift 0); see `vidcli.models.kl_autoencoder` for the convention.

Tiling (`TilingConfig`): spatial tiles of `spatial_tile` px with linear cross-fades; temporal
tiles of `temporal_tile` frames, each run as its own causal clip that starts one latent frame
early and drops it (the reference's way to keep T' = (T − 1)/4 + 1). Compared with the
reference (`use_spatial_tiling`, `sample_size` 256 px, overlap 0.25): spatially tiled *encode*
is the same computation (checked against vectors/hunyuan_vae_a `out.latent_tiled`); tiled
*decode* differs at the bottom/right border, where the reference decodes one more tile of a
single latent row/column and blends it in, while our last tile ends at the border. Temporal
tiling: the reference miscounts frames for tiles under 16 frames; ours keeps T' for any tile
length and blends with ramps that sum to one. Untiled outputs match the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vidcli.errors import ShapeError
from vidcli.models.dcae.config import TilingConfig
from vidcli.models.dcae.tiling import blend_weights, tile_spans
from vidcli.models.kl_autoencoder import KLAutoencoder, KLConfig, KLFamily, tiled_hw

DIFFUSERS_CLASS = "AutoencoderKLHunyuanVideo"
TIME_COMPRESSION = 4
SPATIAL_COMPRESSION = 8


@dataclass(frozen=True)
class HunyuanVAEConfig(KLConfig):
    """Architecture of a HunyuanVideo VAE (diffusers' names; Open-Sora's AutoEncoder3DConfig)."""

    down_block_type = "HunyuanVideoDownBlock3D"
    up_block_type = "HunyuanVideoUpBlock3D"

    norm_num_groups: int = 32
    """GroupNorm groups."""
    mid_block_add_attention: bool = True
    """Attention in the mid block."""
    scaling_factor: float = 0.476986
    """Latent = scaling_factor · (mean − shift_factor)."""
    shift_factor: float = 0.0
    """See scaling_factor."""

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of diffusers' AutoencoderKLHunyuanVideo."""
        return {
            **super().diffusers_kwargs(),
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
            "spatial_compression_ratio": SPATIAL_COMPRESSION,
            "temporal_compression_ratio": TIME_COMPRESSION,
            "mid_block_add_attention": self.mid_block_add_attention,
        }


HUNYUAN_PRESETS: dict[str, HunyuanVAEConfig] = {
    # hpcai-tech/Open-Sora-v2 `hunyuan_vae.safetensors` (configs/diffusion/inference/256px.py,
    # type "hunyuan_vae"): 246,478,803 parameters, 248 tensors.
    "hunyuan-video-vae": HunyuanVAEConfig(),
    # The tiny model of shared/reference/vectors/hunyuan_vae_a.json (751,323 parameters), tests.
    "hunyuan-video-vae-tiny": HunyuanVAEConfig(
        block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=4
    ),
}


class HunyuanVideoVAE(KLAutoencoder):
    """The HunyuanVideo causal VAE behind vidcli's autoencoder interface (wraps diffusers)."""

    time_compression = TIME_COMPRESSION
    spatial_compression = SPATIAL_COMPRESSION
    is_video = True
    family = "HunyuanVideo VAE"
    diffusers_class = DIFFUSERS_CLASS

    def check_input_shape(self, frames: int, height: int, width: int) -> None:
        if frames < 1 or (frames - 1) % TIME_COMPRESSION:
            near = max(1, round((frames - 1) / 4)) * 4 + 1
            raise ShapeError(
                f"{frames} frames: the HunyuanVideo VAE takes T = 4k + 1 (1, 5, 9, ..., 129; "
                f"e.g. {near})"
            )
        super().check_input_shape(frames, height, width)

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // TIME_COMPRESSION + 1

    def decoded_frames(self, latent_frames: int) -> int:
        if latent_frames < 1:
            raise ShapeError(f"{latent_frames} latent frames: need at least 1")
        return (latent_frames - 1) * TIME_COMPRESSION + 1

    # ---- encode / decode: untiled = the diffusers modules called directly ---------------------

    def _moments(self, x: Tensor, tiling: TilingConfig | None) -> Tensor:
        def run(clip: Tensor) -> Tensor:  # (B, 3, T, H, W) -> (B, 2C, T', H', W')
            return self.model.quant_conv(self.model.encoder(clip))

        if tiling is None:
            return run(x)
        latent_hw = (x.shape[-2] // 8, x.shape[-1] // 8)
        return _causal_time_tiles(
            lambda clip: _spatial(run, clip, latent_hw, tiling, 8, 1),
            x,
            self.latent_frames(x.shape[2]),
            tiling,
            encode=True,
        )

    def _decode_latent(self, z: Tensor, tiling: TilingConfig | None) -> Tensor:
        def run(latent: Tensor) -> Tensor:  # (B, C, T', H', W') -> (B, 3, T, H, W)
            return self.model.decoder(self.model.post_quant_conv(latent))

        if tiling is None:
            return run(z)
        latent_hw = tuple(z.shape[-2:])
        return _causal_time_tiles(
            lambda clip: _spatial(run, clip, latent_hw, tiling, 1, 8),
            z,
            z.shape[2],
            tiling,
            encode=False,
        )


def _spatial(run, x: Tensor, latent_hw, tiling: TilingConfig, in_scale: int, out_scale: int):
    if not tiling.spatial:
        return run(x)
    tile = tiling.spatial_tile // SPATIAL_COMPRESSION
    return tiled_hw(run, x, latent_hw, tile, tiling.overlap, in_scale, out_scale)


def _causal_time_tiles(run, x: Tensor, latent_frames: int, tiling: TilingConfig, encode: bool):
    """`run` on overlapping spans of latent frames, each a causal clip of its own.

    A span [a, b) with a > 0 is computed from a clip that starts one latent frame earlier
    (pixel frame 4(a−1), resp. latent frame a−1) and drops that first frame, whose causal
    encoding/decoding treats it as an image. Outputs are cross-faded over the overlaps.
    """
    tc = TIME_COMPRESSION
    spans = tile_spans(latent_frames, tiling.temporal_tile // tc, tiling.overlap)
    if not tiling.temporal or len(spans) == 1:
        return run(x)

    def out_span(a: int, b: int) -> tuple[int, int]:
        if encode:
            return a, b
        return (0 if a == 0 else tc * (a - 1) + 1), tc * (b - 1) + 1

    out_spans = [out_span(a, b) for a, b in spans]
    weights = blend_weights(out_spans)
    out = None
    for (a, b), (o0, o1), w in zip(spans, out_spans, weights, strict=True):
        if encode:
            clip = x[:, :, (0 if a == 0 else tc * (a - 1)) : tc * (b - 1) + 1]
        else:
            clip = x[:, :, max(a - 1, 0) : b]
        y = run(clip)
        if a > 0:
            y = y[:, :, 1:]
        if out is None:
            total = out_spans[-1][1]
            out = y.new_zeros(*y.shape[:2], total, *y.shape[3:])
        out[:, :, o0:o1] += y * w.view(-1, 1, 1).to(y)
    assert out is not None
    return out


# ---------------------------------------------------------------------------------------------
# Building and loading


HUNYUAN_VAE = KLFamily(
    model_class=HunyuanVideoVAE,
    config_class=HunyuanVAEConfig,
    presets=HUNYUAN_PRESETS,
    required={
        "spatial_compression_ratio": SPATIAL_COMPRESSION,
        "temporal_compression_ratio": TIME_COMPRESSION,
        "act_fn": "silu",
    },
    refusal="vidcli supports {want!r}",
)


def resolve_config(preset: str | HunyuanVAEConfig, **overrides: Any) -> HunyuanVAEConfig:
    """A preset name or config, with field overrides."""
    return HUNYUAN_VAE.resolve(preset, **overrides)


def build_hunyuan_vae(
    preset: str | HunyuanVAEConfig, device: torch.device | str | None = None, **overrides: Any
) -> HunyuanVideoVAE:
    """A randomly initialised HunyuanVideo VAE; `device='meta'` builds the full size for free."""
    return HUNYUAN_VAE.build(preset, device, **overrides)


def load_hunyuan_vae(
    path: str | Path, preset: str | None = None, **overrides: Any
) -> HunyuanVideoVAE:
    """Load strictly, eval mode, fp32: the released `hunyuan_vae.safetensors` with a preset, or
    a diffusers AutoencoderKLHunyuanVideo folder (its key names are the released file's)."""
    return HUNYUAN_VAE.load(path, preset, **overrides)
