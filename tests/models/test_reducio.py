"""Reducio-VAE against the reference vectors (vectors/reducio_vae_a.*) and the released layouts.

Every `out.*` tensor of the vector file is recomputed through vidcli's public API by
`tests/reference_vectors.py`; the full-size key/shape tables pin both released checkpoints.
"""

import io
import json
import os
from pathlib import Path

import pytest
import torch
from hub_server import FakeRepo, HubServer
from reference_vectors import run, weights
from safetensors import safe_open
from safetensors.torch import load_file
from tolerances import assert_rel_l2

from vidcli.builders import autoencoder_from_section
from vidcli.errors import CheckpointError, ShapeError
from vidcli.hub import download
from vidcli.models.autoencoders import build_autoencoder, load_autoencoder, preset_family
from vidcli.models.dcae import TilingConfig
from vidcli.models.reducio import (
    ReducioConfig,
    ReducioVAE,
    build_reducio,
    normalize_latent,
    sample_posterior,
    save_reducio,
    sinusoid_table,
)
from vidcli.models.reducio.layers import SelfAttention
from vidcli.recipe import AESection

VECTORS = Path(__file__).resolve().parents[1] / "fixtures" / "vectors"
META = json.loads((VECTORS / "reducio_vae_a.json").read_text())
OUTPUTS = sorted(k for k in META["shapes"] if k.startswith("out."))
EPS_SEED = 20250404
"""The global-RNG seed whose torch.randn(mean.shape) is the file's in.posterior_eps."""


@pytest.fixture(scope="module")
def tensors():
    return {k: v.float() for k, v in load_file(str(VECTORS / "reducio_vae_a.safetensors")).items()}


@pytest.fixture(scope="module")
def outputs(tensors):
    return run("reducio-vae", tensors, META)


@pytest.fixture(scope="module")
def model_a(tensors):
    model = ReducioVAE(ReducioConfig.from_dict(META["config"]))
    model.load_state_dict(weights(tensors, "model"), strict=True)
    return model.eval()


def test_runner_computes_every_output_of_the_file(outputs):
    assert sorted(outputs) == OUTPUTS


@pytest.mark.parametrize("key", OUTPUTS)
def test_reference_output(key, outputs, tensors):
    assert_rel_l2(outputs[key], tensors[key], META["suggested_tolerance"]["relative_l2"])


def test_positional_tables_are_the_stored_sinusoids(tensors):
    tables = [k for k in tensors if k.endswith("pos_embed")]
    assert len(tables) == 4  # mid, two fused levels, the standalone block
    for key in tables:
        stored = tensors[key]
        assert torch.equal(sinusoid_table(stored.shape[1], stored.shape[-1]), stored[0, :, 0]), key


def test_sampled_encode_with_the_reference_seed_gives_the_reference_latent(model_a, tensors):
    generator = torch.Generator().manual_seed(EPS_SEED)
    with torch.no_grad():
        z = model_a.encode(tensors["in.video"], sample=True, generator=generator)
        mean, logvar = model_a.posterior(tensors["in.video"])
    assert_rel_l2(z, tensors["out.latent"])
    # The deterministic latent is the layer-normed mean, not the sample.
    with torch.no_grad():
        det = model_a.encode(tensors["in.video"])
    assert torch.allclose(det, normalize_latent(mean), atol=1e-6)
    assert not torch.allclose(det, z, atol=1e-3)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(EPS_SEED))
    assert torch.equal(noise, tensors["in.posterior_eps"])
    assert torch.equal(normalize_latent(sample_posterior(mean, logvar, noise)), z)


def test_forward_decodes_with_the_centre_frame(model_a, tensors):
    video = tensors["in.video"]
    assert torch.equal(model_a.content_frame(video), tensors["in.content"])
    assert model_a.content_index == (META["config"]["ddconfig"]["temp_res"] - 1) // 2
    with torch.no_grad():
        recon = model_a(video)
        want = model_a.decode(model_a.encode(video), content=tensors["in.content"])
    assert torch.equal(recon, want)


@pytest.mark.parametrize("name", ["ft4", "ft2"])
def test_released_keys_load_strictly_on_meta(name):
    table = json.loads((VECTORS / "reducio_vae_full_keys.json").read_text())[name]
    model = build_reducio(f"reducio-{name}", device="meta")
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == table["keys"]
    assert sum(v.numel() for v in model.state_dict().values()) == table["num_params"]
    state = {k: torch.empty(shape, device="meta") for k, shape in table["keys"].items()}
    model.load_state_dict(state, strict=True, assign=True)


def test_registered_as_an_autoencoder_family():
    assert preset_family("reducio-ft4") == "reducio-vae"
    ae = build_autoencoder("reducio-ft2", device="meta")
    assert ae.latent_shape(16, 256, 512) == (16, 8, 8, 16)
    assert ae.decoded_frames(8) == 16
    assert build_autoencoder("reducio-ft4", device="meta").latent_shape(16, 64, 96) == (16, 4, 2, 3)


def _overrides() -> dict:
    """The vector config as overrides of a preset (how a recipe sizes a non-preset model)."""
    return dict(META["config"])


def test_ckpt_loads_strictly_and_is_converted_once_beside_it(model_a, tensors, tmp_path):
    ckpt = tmp_path / "reducio-a.ckpt"
    torch.save({"state_dict": {**weights(tensors, "model"), "loss.logvar": torch.zeros(())}}, ckpt)
    loaded = load_autoencoder(ckpt, preset="reducio-tiny", **_overrides())
    converted = ckpt.with_suffix(".safetensors")
    with safe_open(str(converted), "pt") as f:
        assert f.metadata()["converted_from"] == ckpt.name
    stamp = converted.stat().st_mtime_ns
    again = load_autoencoder(ckpt, preset="reducio-tiny", **_overrides())
    assert converted.stat().st_mtime_ns == stamp  # the cached conversion was reused
    # The [ae] recipe section reaches the same file (a .ckpt needs its preset, like .safetensors).
    section = AESection(preset="reducio-tiny", path=str(ckpt), overrides=_overrides())
    from_recipe = autoencoder_from_section(section)
    assert from_recipe.tiling.spatial_tile == section.spatial_tile
    for key, value in model_a.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
        assert torch.equal(again.state_dict()[key], value), key
        assert torch.equal(from_recipe.state_dict()[key], value), key


def test_downloaded_ckpt_is_converted_beside_it_in_the_hub_cache(
    model_a, tensors, tmp_path, monkeypatch
):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    buffer = io.BytesIO()
    torch.save(weights(tensors, "model"), buffer)
    files = {"reducio-ft4-fs32-attn23.ckpt": buffer.getvalue(), "config.json": b"{}"}
    with HubServer({"microsoft/Reducio-VAE": FakeRepo(files)}) as hub:
        got = download("reducio-ft4", endpoint=hub.url, progress=False, cache_dir=tmp_path)
        assert [name for name, _ in got.files] == ["reducio-ft4-fs32-attn23.ckpt"]
        ckpt = got.local_path / "reducio-ft4-fs32-attn23.ckpt"
        loaded = load_autoencoder(ckpt, preset="reducio-tiny", **_overrides())
        assert ckpt.with_suffix(".safetensors").is_file()
        again = download("reducio-ft4", endpoint=hub.url, progress=False, cache_dir=tmp_path)
        assert again.from_cache and again.files == got.files
    for key, value in model_a.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_folder_round_trip_through_load_autoencoder(model_a, tensors, tmp_path):
    folder = save_reducio(model_a, tmp_path / "reducio-a")
    loaded = load_autoencoder(folder)
    assert isinstance(loaded, ReducioVAE) and loaded.config == model_a.config
    with torch.no_grad():
        z = loaded.encode(tensors["in.video"])
        recon = loaded.decode(z, content=tensors["in.content"])
        assert torch.equal(recon, model_a.decode(z, content=tensors["in.content"]))
    bare = load_autoencoder(folder / "model.safetensors", preset="reducio-tiny", **_overrides())
    assert torch.equal(
        bare.state_dict()["decoder.conv_out.weight"], tensors["model.decoder.conv_out.weight"]
    )


class _CreatesFile:
    """Unpickling this runs open(path, "w"): a stand-in for a checkpoint that executes code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"encoder_3d.conv_in.weight": _CreatesFile(marker)}, ckpt)
    with pytest.raises(CheckpointError) as err:
        load_autoencoder(ckpt, preset="reducio-ft4")
    message = str(err.value)
    assert str(ckpt) in message and "refused" in message and "\n" not in message
    assert not marker.exists()
    assert not ckpt.with_suffix(".safetensors").exists()
    # The same file does run code when unpickled without the restriction: the test can fail.
    torch.load(ckpt, weights_only=False)
    assert marker.exists()
    os.remove(marker)


def test_shapes_the_model_cannot_take_are_one_line_errors(model_a, tensors):
    video, content = tensors["in.video"], tensors["in.content"]
    with pytest.raises(ShapeError, match="exactly 8"):
        model_a.encode(video[:, :, :4])
    with pytest.raises(ShapeError, match="multiples of 8"):
        model_a.encode(video[..., :20])
    z = model_a.encode(video)
    with pytest.raises(ShapeError, match="content frame"):
        model_a.decode(z, content=content[..., :16])
    with pytest.raises(ShapeError, match="latent frames"):
        model_a.decode(z[:, :, :1], content=content)
    with pytest.raises(ShapeError, match="content frames for"):
        model_a.decode(z, content=torch.cat([content, content]))


def test_tiled_decode_needs_a_pyramid_of_the_same_tiling(model_a, tensors):
    tiling = TilingConfig(spatial_tile=META["tiling"]["tile_sample_min_size"])
    pyramid = model_a.encode_content(tensors["in.content_tiled"], tiling)
    assert len(pyramid.grid) * len(pyramid.grid[0]) > 1
    with pytest.raises(Exception, match="tiled at"):
        model_a.decode(tensors["in.latent_tiled"], content=pyramid)
    with torch.no_grad():
        out = model_a.decode(tensors["in.latent_tiled"], content=pyramid, tiling=tiling)
    assert_rel_l2(out, tensors["out.recon_tiled"])


def test_gradient_checkpointing_gives_the_same_gradients(model_a, tensors):
    video = tensors["in.video"]

    def grads() -> list[torch.Tensor]:
        model_a.zero_grad()
        recon = model_a.decode(model_a.encode(video), content=tensors["in.content"])
        recon.square().mean().backward()
        return [p.grad.clone() for p in model_a.parameters() if p.grad is not None]

    plain = grads()
    model_a.set_gradient_checkpointing(True)
    try:
        checkpointed = grads()
    finally:
        model_a.set_gradient_checkpointing(False)
        model_a.zero_grad()
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("size", [(4, 6), (5, 7)])
def test_windowed_content_attention_attends_within_zero_padded_windows(size):
    """The content encoder's mid attention on a map larger than its window equals attention run
    on each window of the zero-padded normalised map separately, stitched and cropped."""
    torch.manual_seed(0)
    window = (2, 3)
    block = SelfAttention(2, 32, window).eval()
    per_window = SelfAttention(2, 32, None).eval()
    per_window.load_state_dict(block.state_dict())
    per_window.norm = torch.nn.Identity()  # windows of the already-normalised map
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        y = block.norm(x)
        ph, pw = -size[0] % window[0], -size[1] % window[1]
        padded = torch.nn.functional.pad(y, (0, pw, 0, ph))
        want = torch.zeros_like(padded)
        for i in range(0, padded.shape[-2], window[0]):
            for j in range(0, padded.shape[-1], window[1]):
                crop = padded[..., i : i + window[0], j : j + window[1]]
                want[..., i : i + window[0], j : j + window[1]] = per_window(crop) - crop
        got = block(x)
    assert torch.allclose(got, x + want[..., : size[0], : size[1]], atol=1e-5)
    # Larger than one window: attending globally instead gives another result.
    with torch.no_grad():
        assert not torch.allclose(got, x + per_window(y) - y, atol=1e-3)


def test_content_window_size_comes_from_the_config():
    model = build_reducio("reducio-ft4", device="meta")
    assert model.encoder_2d.mid.attn_1.window == (256, 256)
    assert model.encoder_3d.mid.attn_1.window is None
    small = build_reducio("reducio-tiny", device="meta", ddconfig_2d={"window_size": 8})
    assert small.encoder_2d.mid.attn_1.window == (8, 8)
