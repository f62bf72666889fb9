"""Named DC-AE architectures: data only, each with where its numbers come from."""

from __future__ import annotations

from vidcli.models.dcae.config import DCAEConfig

_RES3_EVIT3 = ("ResBlock",) * 3 + ("EViT",) * 3


def _mit_in_mix(stages: int, latent: int, scaling: float) -> DCAEConfig:
    """MIT DC-AE "in"/"mix" layout: depth-0 pixel-(un)shuffle stem, BN+ReLU decoder ResBlocks."""
    evit = stages - 3
    return DCAEConfig(
        is_video=False,
        latent_channels=latent,
        encoder_widths=(128, 256, 512, 512, 1024, 1024, 2048, 2048)[:stages],
        decoder_widths=(128, 256, 512, 512, 1024, 1024, 2048, 2048)[:stages],
        encoder_depths=(0, 4, 8) + (2,) * evit,
        decoder_depths=(0, 5, 10) + (2,) * evit,
        encoder_block_types=("ResBlock",) * 3 + ("EViT",) * evit,
        decoder_block_types=("ResBlock",) * 3 + ("EViT",) * evit,
        encoder_qkv_scales=((),) * stages,
        decoder_qkv_scales=((),) * stages,
        decoder_norms=("bn",) * 3 + ("rms",) * evit,
        decoder_acts=("relu",) * 3 + ("silu",) * evit,
        downsample="pixel_unshuffle",
        upsample="pixel_shuffle",
        temporal_downsample=(False,) * stages,
        temporal_upsample=(False,) * stages,
        scaling_factor=scaling,
    )


AE_PRESETS: dict[str, DCAEConfig] = {
    # Open-Sora 2.0 Video DC-AE (hpcaitech/Open-Sora, opensora/models/dc_ae, dc_ae_f32
    # "dc-ae-f32t4c128"; weights hpcai-tech/Open-Sora-v2-Video-DC-AE F32T4C128_AE.safetensors).
    # 0.493 is the scaling of configs/diffusion/train/high_compression.py. 459,462,147 parameters.
    "dc-ae-f32t4c128": DCAEConfig(scaling_factor=0.493),
    # MIT dc-ae-f32c32-sana-1.0 (mit-han-lab/efficientvit dc_ae.py; diffusers
    # mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers), 312,250,275 parameters.
    "dc-ae-f32c32": DCAEConfig(
        is_video=False,
        latent_channels=32,
        temporal_downsample=(False,) * 6,
        temporal_upsample=(False,) * 6,
        scaling_factor=0.41407,
    ),
    # MIT dc-ae-f64c128-mix-1.0 (scaling from diffusers' convert_dcae_to_diffusers.py),
    # 676,896,140 parameters.
    "dc-ae-f64c128": _mit_in_mix(7, 128, 0.4538),
    # MIT dc-ae-f32c32-in-1.0 / dc-ae-f64c128-in-1.0: the "in" autoencoders of the
    # DC-AE-Diffusion checkpoints (same layouts as mix, ImageNet-trained; scalings from MIT's
    # diffusion configs), 323,356,460 and 676,896,140 parameters.
    "dc-ae-f32c32-in-1.0": _mit_in_mix(6, 32, 0.3189),
    "dc-ae-f64c128-in-1.0": _mit_in_mix(7, 128, 0.2889),
    # MIT dc-ae-f128c512-mix-1.0 (same sources), 1,120,682,252 parameters.
    "dc-ae-f128c512": _mit_in_mix(8, 512, 0.3620),
    # vidcli baseline: the same family at the usual video-VAE compression 4x8x8, 16 channels.
    "dc-ae-f8t4c16": DCAEConfig(
        latent_channels=16,
        encoder_widths=(128, 256, 512, 512),
        decoder_widths=(128, 256, 512, 512),
        encoder_depths=(2, 2, 2, 3),
        decoder_depths=(3, 3, 3, 3),
        encoder_block_types=("ResBlock",) * 3 + ("EViT",),
        decoder_block_types=("ResBlock",) * 3 + ("EViT",),
        encoder_qkv_scales=((), (), (), (5,)),
        decoder_qkv_scales=((), (), (), (5,)),
        decoder_norms=("rms",) * 4,
        decoder_acts=("silu",) * 4,
        temporal_downsample=(False, True, True, False),
        temporal_upsample=(False, True, True, False),
    ),
    # The tiny model of shared/reference/vectors/video_dcae_a.json (494,387 parameters), for tests.
    "dc-ae-tiny": DCAEConfig(
        latent_channels=8,
        encoder_widths=(8, 16, 16, 32, 32, 32),
        decoder_widths=(8, 16, 16, 32, 32, 32),
        encoder_depths=(1, 1, 2, 1, 1, 1),
        decoder_depths=(2, 1, 1, 1, 1, 1),
        scaling_factor=0.493,
    ),
    # vidcli's demo video AE: 4x8x8 compression, 16 latent channels, four stages of the f32t4
    # layout (two ResBlock, two EViT stages 64 wide = 2 heads of 32), about 1.2M parameters:
    # small enough to train on a 2-core CPU in minutes on 64 px clips.
    "dc-ae-demo": DCAEConfig(
        latent_channels=16,
        encoder_widths=(16, 32, 64, 64),
        decoder_widths=(16, 32, 64, 64),
        encoder_depths=(1, 1, 1, 1),
        decoder_depths=(1, 1, 1, 1),
        encoder_block_types=("ResBlock",) * 2 + ("EViT",) * 2,
        decoder_block_types=("ResBlock",) * 2 + ("EViT",) * 2,
        encoder_qkv_scales=((),) * 2 + ((5,),) * 2,
        decoder_qkv_scales=((),) * 2 + ((5,),) * 2,
        decoder_norms=("rms",) * 4,
        decoder_acts=("silu",) * 4,
        temporal_downsample=(False, True, True, False),
        temporal_upsample=(False, True, True, False),
    ),
}
