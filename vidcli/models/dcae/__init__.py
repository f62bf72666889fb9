"""DC-AE autoencoders: Open-Sora 2.0's video DC-AE (3-D) and MIT's image DC-AE (2-D) in one family.

Conventions
- Pixels are in [-1, 1]. Video models take (B, 3, T, H, W); image models take (B, 3, H, W) or
  (B, 3, 1, H, W) and return the same rank. Feed images to a video model as T = 1 clips.
- `encode(x)` returns the SCALED latent `encoder(x) / scaling_factor` (Open-Sora's convention:
  it divides); `decode(z)` runs `decoder(z * scaling_factor)`. scaling_factor None: no scaling.
  diffusers' AutoencoderDC returns the raw latent: multiply ours by scaling_factor to compare.
- Latent of (T, H, W) is (C, T', H/32, W/32) for 32x models (H/2^(stages-1) in general).

Valid shapes (video f32t4 models; `check_input_shape` raises a one-line ShapeError otherwise)
- H and W: positive multiples of the spatial compression (32; 64 / 128 for f64 / f128 images).
- T: 1, 2 or a multiple of 4. T = 1, 2 and 4 give ONE latent frame; T = 4k gives k.
- A single latent frame decodes to ONE frame, so 2- and 4-frame clips do not round-trip;
  T = 1 and T = 8, 12, 16, ... do (`decoded_frames(k)` = 1 if k == 1 else 4k).
- The model is not causal in time: frame 0 is encoded together with frames 1-3.

Tiling (`TilingConfig`, per call or as `model.tiling`): overlapping tiles in (T, H, W) cross-faded
with linear ramps; the output always has the untiled shape and equals it when one tile covers the
input. At tile sizes that are multiples of 128 px / 16 frames (overlap 0.25) it reproduces the
reference's tiled decode.

Checkpoints: our parameter names are Open-Sora's / MIT efficientvit's, so their .safetensors files
load unchanged; diffusers AutoencoderDC folders load through the key map in `convert.py`.
"""

from vidcli.models.dcae.config import DCAEConfig, TilingConfig
from vidcli.models.dcae.loading import (
    build_autoencoder,
    load_autoencoder,
    save_autoencoder,
    write_autoencoder_files,
)
from vidcli.models.dcae.model import DCAE
from vidcli.models.dcae.presets import AE_PRESETS

__all__ = [
    "AE_PRESETS",
    "DCAE",
    "DCAEConfig",
    "TilingConfig",
    "build_autoencoder",
    "load_autoencoder",
    "save_autoencoder",
    "write_autoencoder_files",
]
