"""Recipe sections -> models: the one place that reads `[ae]`, `[dit]` and `[text]`.

It sits beside the stages, above `vidcli.models`: the model families take their own configs and
never see a recipe; the stages (train-ae, train-dit, generate, prepare-data --encode) call these.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vidcli.models.autoencoders import build_autoencoder, load_autoencoder
from vidcli.models.dcae import TilingConfig
from vidcli.models.mmdit import MMDiT, build_dit, load_dit
from vidcli.models.text import TextEncoder, TextEncoderConfig, build_text_encoder
from vidcli.recipe import AESection, DiTSection, TextSection


def autoencoder_from_section(ae: AESection, device: str | None = None):
    """The `[ae]` autoencoder of any family: loaded from `path`, or initialised from `preset`.

    `device` places a freshly initialised one (`"meta"`: its config and shapes, no memory).
    """
    overrides = dict(ae.overrides)
    if ae.scaling_factor is not None:
        overrides["scaling_factor"] = ae.scaling_factor
    if ae.path:
        # A bare weights file (.safetensors, or the Reducio-VAE's released .ckpt) needs a preset.
        preset = ae.preset if Path(ae.path).suffix in (".safetensors", ".ckpt") else None
        model = load_autoencoder(ae.path, preset=preset, **overrides)
    else:
        model = build_autoencoder(ae.preset, device=device, **overrides)
    model.tiling = (
        TilingConfig(
            spatial_tile=ae.spatial_tile, temporal_tile=ae.temporal_tile, overlap=ae.tile_overlap
        )
        if ae.tiling
        else None
    )
    model.set_gradient_checkpointing(ae.grad_checkpointing)
    return model


def text_encoder_from_section(
    text: TextSection, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> TextEncoder:
    """The `[text]` encoder (frozen, eval mode)."""
    config = TextEncoderConfig(
        backend=text.backend,
        minilm_path=text.minilm_path,
        t5_path=text.t5_path,
        clip_path=text.clip_path,
    )
    if text.max_length:
        if text.backend == "minilm":
            config.minilm_max_length = text.max_length
        else:
            config.t5_max_length = text.max_length
    return build_text_encoder(config, device=device, dtype=dtype)


def dit_from_section(dit: DiTSection, latent_channels: int, text: TextEncoder) -> MMDiT:
    """The `[dit]` transformer, sized for the AE's latent channels and the text encoder's widths."""
    overrides = dict(dit.overrides)
    if dit.patch_size:
        overrides["patch_size"] = dit.patch_size
    if dit.path:
        preset = dit.preset if Path(dit.path).suffix == ".safetensors" else None
        # Weights may be stored in bf16 (the bundled demo); compute precision is autocast's job.
        model = load_dit(dit.path, preset=preset, **overrides).float()
    else:
        from vidcli.models.mmdit import resolve_config

        patch = resolve_config(dit.preset, **overrides).patch_size
        overrides.setdefault("in_channels", latent_channels * patch * patch)
        overrides.setdefault("context_in_dim", text.token_dim)
        overrides.setdefault("vec_in_dim", text.pooled_dim)
        model = build_dit(dit.preset, **overrides)
    if dit.grad_checkpointing:
        model.set_gradient_checkpointing(True)
    return model
