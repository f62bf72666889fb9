"""Reducio-VAE (microsoft/Reducio-VAE): an image-conditioned video VAE with 4096× compression.

A 16-frame clip (B, 3, 16, H, W) encodes to a motion latent (B, 16, 4, H/32, W/32) (ft4; ft2:
8 latent frames). Decoding needs the clip's content frame (frame 7, `content_index`): a 2-D
encoder turns it into a feature pyramid that the 3-D decoder reads by cross-attention.

    vae = load_reducio("reducio-ft4-fs32-attn23.ckpt", preset="reducio-ft4")
    z = vae.encode(video, sample=True, generator=g)         # the reference latent (DiT data)
    recon = vae.decode(z, content=vae.content_frame(video))

Latent convention: layer_norm(posterior sample) per sample, no scaling factor (see `model`).
Tiling: `TilingConfig(spatial_tile=S, overlap=f)` runs the reference's tiled paths (`tiling`).
Spec: shared/reference/reducio.md; weights load strictly with the released key names.
"""

from vidcli.models.reducio.config import (
    REDUCIO_PRESETS,
    ContentConfig,
    MotionConfig,
    ReducioConfig,
)
from vidcli.models.reducio.layers import FusionBlock, sinusoid_table
from vidcli.models.reducio.loading import (
    CLASS_NAME,
    PICKLE_SUFFIXES,
    build_reducio,
    converted_safetensors,
    is_reducio_folder,
    load_reducio,
    read_pickle_checkpoint,
    resolve_config,
    save_reducio,
    write_reducio_files,
)
from vidcli.models.reducio.model import (
    ContentPyramid,
    ReducioVAE,
    normalize_latent,
    sample_posterior,
)

__all__ = [
    "CLASS_NAME",
    "PICKLE_SUFFIXES",
    "REDUCIO_PRESETS",
    "ContentConfig",
    "ContentPyramid",
    "FusionBlock",
    "MotionConfig",
    "ReducioConfig",
    "ReducioVAE",
    "build_reducio",
    "converted_safetensors",
    "is_reducio_folder",
    "load_reducio",
    "normalize_latent",
    "read_pickle_checkpoint",
    "resolve_config",
    "sample_posterior",
    "save_reducio",
    "sinusoid_table",
    "write_reducio_files",
]
