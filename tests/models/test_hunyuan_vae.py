"""HunyuanVideo VAE on diffusers: reference vectors, strict loading, full-size keys, shapes."""

import json

import pytest
import torch
from kl_vectors import vector_fixtures
from safetensors.torch import save_file
from tolerances import assert_rel_l2

from vidcli.errors import CheckpointError, ShapeError, UsageError
from vidcli.models.autoencoders import build_autoencoder, load_autoencoder
from vidcli.models.dcae import TilingConfig
from vidcli.models.hunyuan_vae import HunyuanVideoVAE

# The vector weights have the released `hunyuan_vae.safetensors`'s (Open-Sora's) key names.
vectors, released_file, vae = vector_fixtures(
    "hunyuan_vae_a", "hunyuan_vae.safetensors", "hunyuan-video-vae-tiny", "vae"
)


def test_vector_config_is_the_tiny_preset(vectors, vae):
    cfg = vectors[2]["config"]
    assert list(vae.config.block_out_channels) == cfg["block_out_channels"]
    assert vae.config.layers_per_block == cfg["layers_per_block"]
    assert vae.config.norm_num_groups == cfg["norm_num_groups"]
    assert vae.scaling_factor == cfg["scale_factor"] and vae.shift_factor == cfg["shift_factor"]


@torch.no_grad()
def test_reproduces_the_reference_from_a_file(vectors, vae):
    t, _, meta = vectors
    assert isinstance(vae, HunyuanVideoVAE) and not vae.training
    mean, logvar = vae.posterior(t["in.video"])
    assert_rel_l2(mean, t["out.posterior_mean"])
    assert_rel_l2(logvar, t["out.posterior_logvar"])
    assert_rel_l2(vae.encode(t["in.video"]), t["out.latent"])
    assert_rel_l2(vae.decode(t["out.latent"]), t["out.recon"])
    # The unscaled decode memory plans measure (`vidcli.plans`) is the same decoder.
    assert_rel_l2(vae._decode_raw(t["out.latent"] / vae.scaling_factor), t["out.recon"])
    assert_rel_l2(vae.encode(t["in.image"]), t["out.image_latent"])
    assert_rel_l2(vae.decode(t["out.image_latent"]), t["out.image_recon"])
    # The seeded posterior sample: generator seed = init seed + 2 (vector JSON "calls").
    seed = int(meta["init"].split("seed ")[1].split(":")[0]) + 2
    sample = vae.encode(t["in.video"], sample=True, generator=torch.Generator().manual_seed(seed))
    assert_rel_l2(sample, t["out.latent_sample"])


@torch.no_grad()
def test_reproduces_the_reference_from_a_diffusers_folder(vectors, vae, tmp_path):
    t = vectors[0]
    vae.model.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    folder = load_autoencoder(tmp_path / "vae")
    assert isinstance(folder, HunyuanVideoVAE)
    assert folder.scaling_factor == pytest.approx(0.476986)
    assert_rel_l2(folder.encode(t["in.video"]), t["out.latent"])
    assert_rel_l2(folder.decode(t["out.latent"]), t["out.recon"])


@torch.no_grad()
def test_spatially_tiled_encode_is_the_references(vectors, vae):
    t = vectors[0]
    tiling = TilingConfig(spatial_tile=32, overlap=0.25, temporal=False)
    assert_rel_l2(vae.encode(t["in.video_tiled"], tiling=tiling), t["out.latent_tiled"])


@torch.no_grad()
@pytest.mark.parametrize(
    "tiling",
    [
        TilingConfig(spatial_tile=16, temporal_tile=8, overlap=0.25),
        TilingConfig(spatial_tile=24, temporal_tile=4, overlap=0.0),
    ],
)
def test_tiled_shapes_equal_untiled(vectors, vae, tiling):
    x = vectors[0]["in.video_ttiled"]  # (1, 3, 33, 16, 24)
    z = vae.encode(x)
    assert vae.encode(x, tiling=tiling).shape == z.shape == (1, 16, 9, 2, 3)
    assert vae.decode(z, tiling=tiling).shape == vae.decode(z).shape == x.shape


@torch.no_grad()
def test_one_tile_covering_the_input_is_untiled(vectors, vae):
    x = vectors[0]["in.video"]
    big = TilingConfig(spatial_tile=512, temporal_tile=64)
    assert torch.equal(vae.encode(x, tiling=big), vae.encode(x))


def test_frame_and_size_rules(vae):
    assert vae.latent_shape(129, 192, 336) == (16, 33, 24, 42)
    assert vae.decoded_frames(33) == 129
    with pytest.raises(ShapeError, match=r"128 frames: the HunyuanVideo VAE takes T = 4k \+ 1"):
        vae.latent_shape(128, 64, 64)
    with pytest.raises(ShapeError, match="height 60: the HunyuanVideo VAE takes multiples of 8"):
        vae.latent_shape(9, 60, 64)


def test_full_preset_keys_equal_the_released_file(vectors_dir):
    want = json.loads((vectors_dir / "hunyuan_vae_full_keys.json").read_text())
    model = build_autoencoder("hunyuan-video-vae", device="meta")
    got = {k: list(v.shape) for k, v in model.model.state_dict().items()}
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == 246_478_803


def test_strict_loading_names_missing_and_unexpected_keys(vectors, tmp_path):
    weights = dict(vectors[1])
    weights.pop("decoder.conv_out.conv.bias")
    weights["decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "hunyuan_vae.safetensors"
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match=r"1 missing: \['decoder.conv_out.conv.bias'\]"):
        load_autoencoder(path, preset="hunyuan-video-vae-tiny")
    with pytest.raises(CheckpointError, match=r"1 unexpected: \['decoder.extra.weight'\]"):
        load_autoencoder(path, preset="hunyuan-video-vae-tiny")
    # The full-size preset on tiny weights: every shape differs.
    save_file(vectors[1], str(path))
    with pytest.raises(CheckpointError, match="shape"):
        load_autoencoder(path, preset="hunyuan-video-vae")
    with pytest.raises(UsageError, match="a bare weights file needs a preset; presets: dc-ae"):
        load_autoencoder(path)
