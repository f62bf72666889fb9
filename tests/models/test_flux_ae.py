"""Flux AE on diffusers: reference vectors in both key layouts, strict loading, full-size keys."""

import json

import pytest
import torch
from kl_vectors import vector_fixtures
from safetensors.torch import save_file
from tolerances import assert_rel_l2

from vidcli.errors import CheckpointError, ShapeError, UsageError
from vidcli.models.autoencoders import build_autoencoder, load_autoencoder
from vidcli.models.dcae import TilingConfig
from vidcli.models.flux_ae import FluxAE

# The vector weights are in BFL's key layout, as in the released `flux1-dev-ae.safetensors`.
vectors, released_file, ae = vector_fixtures(
    "flux_ae_a", "flux1-dev-ae.safetensors", "flux-ae-tiny", "ae"
)


def check_vectors(ae, t):
    mean, logvar = ae.posterior(t["in.image"])
    assert_rel_l2(mean, t["out.posterior_mean"])
    assert_rel_l2(logvar, t["out.posterior_logvar"])
    assert_rel_l2(ae.encode(t["in.image"]), t["out.image_latent"])
    assert_rel_l2(ae.decode(t["out.image_latent"]), t["out.image_recon"])
    assert_rel_l2(ae.encode(t["in.video"]), t["out.video_latent"])
    assert_rel_l2(ae.decode(t["out.video_latent"]), t["out.video_recon"])


@torch.no_grad()
def test_reproduces_the_reference_from_a_bfl_file(vectors, ae):
    assert isinstance(ae, FluxAE) and not ae.training
    check_vectors(ae, vectors[0])
    # 4-D images in, 4-D latents out.
    image = vectors[0]["in.image"][:, :, 0]
    assert_rel_l2(ae.encode(image), vectors[0]["out.image_latent"][:, :, 0])


@torch.no_grad()
@pytest.mark.parametrize("layout", ["diffusers", "bfl"])
def test_reproduces_the_reference_from_a_diffusers_folder(vectors, ae, tmp_path, layout):
    folder = tmp_path / "vae"
    ae.model.save_pretrained(folder)
    if layout == "bfl":  # a diffusers config.json beside weights in the original layout
        (folder / "diffusion_pytorch_model.safetensors").unlink()
        save_file(vectors[1], str(folder / "ae.safetensors"))
    loaded = load_autoencoder(folder)
    assert isinstance(loaded, FluxAE)
    assert (loaded.scaling_factor, loaded.shift_factor) == (0.3611, 0.1159)
    check_vectors(loaded, vectors[0])


@torch.no_grad()
def test_tiles_keep_the_untiled_shape(vectors, ae):
    x = vectors[0]["in.image"]  # (2, 3, 1, 32, 48)
    tiling = TilingConfig(spatial_tile=16, temporal_tile=1, overlap=0.25)
    z = ae.encode(x)
    assert ae.encode(x, tiling=tiling).shape == z.shape
    assert ae.decode(z, tiling=tiling).shape == x.shape
    whole = TilingConfig(spatial_tile=64, temporal_tile=8)
    assert torch.equal(ae.encode(x, tiling=whole), z)


def test_shape_rules(ae):
    assert ae.latent_shape(1, 768, 1024) == (16, 1, 96, 128)
    assert ae.latent_shape(3, 64, 64)[1] == 3 and ae.decoded_frames(3) == 3
    with pytest.raises(ShapeError, match="width 100: the Flux AE takes multiples of 8"):
        ae.latent_shape(1, 64, 100)


def test_full_preset_keys_equal_the_released_file(vectors_dir, released_file, tmp_path):
    """The full preset converts exactly the released key set (names and shapes) on meta."""
    want = json.loads((vectors_dir / "flux_ae_full_keys.json").read_text())
    model = build_autoencoder("flux-ae", device="meta")
    assert sum(p.numel() for p in model.parameters()) == 83_819_683
    from vidcli.models.flux_ae import state_dict_from_original

    # Each key gets its own one-element storage, expanded to the released shape.
    fake = {k: torch.zeros(1).expand(*shape) for k, shape in want.items()}
    converted = state_dict_from_original(fake, model.config, "flux1-dev-ae.safetensors")
    got = {k: tuple(v.shape) for k, v in converted.items()}
    expected = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    assert got == expected


def test_strict_loading_errors(vectors, tmp_path):
    weights = dict(vectors[1])
    weights["encoder.down.0.block.0.extra"] = torch.zeros(2)
    path = tmp_path / "flux1-dev-ae.safetensors"
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match=r"1 unexpected: \['encoder.down.0.block.0.extra'\]"):
        load_autoencoder(path, preset="flux-ae-tiny")
    weights = dict(vectors[1])
    weights.pop("decoder.norm_out.weight")
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match=r"1 missing: \['decoder.conv_norm_out.weight'\]"):
        load_autoencoder(path, preset="flux-ae-tiny")
    with pytest.raises(UsageError, match="unknown autoencoder preset 'flux'; presets: dc-ae"):
        load_autoencoder(path, preset="flux")
