"""Image DC-AE: diffusers AutoencoderDC folders load through our key map, same outputs."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tolerances import assert_max_rel, assert_rel_l2, rel_l2

from vidcli.models.dcae import load_autoencoder


def test_reproduces_diffusers_image_vectors(vectors_dir: Path, tmp_path: Path):
    torch.set_num_threads(1)
    vectors = load_file(str(vectors_dir / "dcae_image_a.safetensors"))
    spec = json.loads((vectors_dir / "dcae_image_a.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(spec["config_json"]))
    weights = {k.removeprefix("model."): v for k, v in vectors.items() if k.startswith("model.")}
    save_file(weights, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    model = load_autoencoder(tmp_path)
    sf = model.scaling_factor
    assert sf == pytest.approx(0.3189) and model.spatial_compression == 16
    with torch.no_grad():
        # the vectors hold diffusers' raw latents; our encode divides by the scaling factor
        latent = model.encode(vectors["in.image"]) * sf
        recon = model.decode(vectors["out.latent"] / sf)
        recon_rand = model.decode(vectors["in.latent_rand"] / sf)
    for got, key in ((latent, "out.latent"), (recon, "out.recon"), (recon_rand, "out.recon_rand")):
        assert_rel_l2(got, vectors[key])
        assert_max_rel(got, vectors[key])


CONFIGS = {
    "sana-like": {  # stem conv, strided-conv down, interpolate up, multi-scale attention, 2 heads
        "latent_channels": 8,
        "attention_head_dim": 8,
        "encoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock"],
        "decoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock"],
        "encoder_block_out_channels": [8, 16, 16],
        "decoder_block_out_channels": [8, 16, 16],
        "encoder_layers_per_block": [1, 1, 2],
        "decoder_layers_per_block": [2, 1, 1],
        "encoder_qkv_multiscales": [[], [], [5]],
        "decoder_qkv_multiscales": [[], [], [5]],
        "downsample_block_type": "conv",
        "upsample_block_type": "interpolate",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu",
        "scaling_factor": 0.5,
    },
    # depth-0 pixel-(un)shuffle stem/tail, BatchNorm decoder, two multi-scale branches
    "in-like": {
        "latent_channels": 16,
        "attention_head_dim": 16,
        "encoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"],
        "decoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"],
        "encoder_block_out_channels": [8, 16, 32, 32],
        "decoder_block_out_channels": [8, 16, 32, 32],
        "encoder_layers_per_block": [0, 1, 1, 1],
        "decoder_layers_per_block": [0, 1, 1, 1],
        "encoder_qkv_multiscales": [[], [], [], [3, 5]],
        "decoder_qkv_multiscales": [[], [], [], []],
        "downsample_block_type": "pixel_unshuffle",
        "upsample_block_type": "pixel_shuffle",
        "decoder_norm_types": ["batch_norm", "batch_norm", "rms_norm", "rms_norm"],
        "decoder_act_fns": ["relu", "relu", "silu", "silu"],
        "scaling_factor": 0.3,
    },
    # all ResBlocks, strided conv down with pixel-shuffle up, 4 latent channels
    "resblocks-mixed": {
        "latent_channels": 4,
        "attention_head_dim": 8,
        "encoder_block_types": "ResBlock",
        "decoder_block_types": "ResBlock",
        "encoder_block_out_channels": [8, 16, 16],
        "decoder_block_out_channels": [8, 8, 16],
        "encoder_layers_per_block": [1, 1, 1],
        "decoder_layers_per_block": [1, 2, 1],
        "encoder_qkv_multiscales": [[], [], []],
        "decoder_qkv_multiscales": [[], [], []],
        "downsample_block_type": "conv",
        "upsample_block_type": "pixel_shuffle",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "relu",
        "scaling_factor": 1.0,
    },
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_diffusers_folder_loads_and_matches(name, tmp_path: Path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderDC(**CONFIGS[name])
    with torch.no_grad():  # move every tensor away from its init so a dropped or swapped key shows
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    ref.eval().save_pretrained(tmp_path)
    ours = load_autoencoder(tmp_path)
    sf = CONFIGS[name]["scaling_factor"]
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z_ref = ref.encode(x).latent
        z = ours.encode(x) * sf
        z_in = torch.randn_like(z_ref)
        x_ref = ref.decode(z_in).sample
        x_out = ours.decode(z_in / sf)
    assert z.shape == z_ref.shape and x_out.shape == x_ref.shape
    assert rel_l2(z, z_ref) <= 1e-4
    assert rel_l2(x_out, x_ref) <= 1e-4
    # the 5-D single-frame form gives the same numbers
    with torch.no_grad():
        assert torch.allclose(ours.encode(x.unsqueeze(2)).squeeze(2) * sf, z, atol=1e-6)
