"""Video DC-AE: reference vectors, full-model keys, shapes, tiling, loading, training switches."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tolerances import assert_max_rel, assert_rel_l2, rel_l2

from vidcli.errors import CheckpointError, ShapeError, UsageError
from vidcli.models.dcae import (
    AE_PRESETS,
    DCAE,
    DCAEConfig,
    TilingConfig,
    build_autoencoder,
    load_autoencoder,
    save_autoencoder,
)
from vidcli.models.dcae.loading import load_state_dict_strict


@pytest.fixture(scope="module")
def video_vectors(vectors_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(vectors_dir / "video_dcae_a.safetensors"))


@pytest.fixture(scope="module")
def tiny(video_vectors) -> DCAE:
    torch.set_num_threads(1)
    sd = {
        k.removeprefix("model."): v.float()
        for k, v in video_vectors.items()
        if k.startswith("model.")
    }
    model = build_autoencoder("dc-ae-tiny")
    load_state_dict_strict(model, sd, "video_dcae_a")
    return model.eval()


VECTOR_CALLS = {
    "out.latent_raw": lambda m, t: m.encoder(t["in.video"]),
    "out.latent": lambda m, t: m.encode(t["in.video"]),
    "out.recon": lambda m, t: m.decode(t["out.latent"]),
    "out.image_latent": lambda m, t: m.encode(t["in.image"]),
    "out.image_recon": lambda m, t: m.decode(t["out.image_latent"]),
    # the vector's tiling: spatial + temporal on, 128 px / 16 frames, overlap 0.25
    "out.recon_tiled": lambda m, t: m.decode(
        t["in.latent_tiled"], tiling=TilingConfig(128, 16, 0.25)
    ),
}


@pytest.mark.parametrize("name", list(VECTOR_CALLS))
def test_reproduces_open_sora_vectors(tiny, video_vectors, name):
    with torch.no_grad():
        out = VECTOR_CALLS[name](tiny, video_vectors)
    ref = video_vectors[name]
    assert_rel_l2(out, ref)
    assert_max_rel(out, ref)


def test_f32t4c128_state_dict_matches_reference_keys(vectors_dir):
    spec = json.loads((vectors_dir / "video_dcae_f32t4c128_keys.json").read_text())
    with torch.device("meta"):
        model = build_autoencoder("dc-ae-f32t4c128")
    sd = model.state_dict()
    assert list(sd) == list(spec["keys"])
    assert {k: list(v.shape) for k, v in sd.items()} == spec["keys"]
    assert sum(p.numel() for p in model.parameters()) == spec["num_params"] == 459_462_147
    assert model.scaling_factor == 0.493
    assert (model.latent_channels, model.time_compression, model.spatial_compression) == (
        128,
        4,
        32,
    )


# parameter counts from dc-ae-image.md §1 (verified there against MIT's and diffusers' code)
@pytest.mark.parametrize(
    ("preset", "params", "tensors"),
    [
        ("dc-ae-f32c32", 312_250_275, 339),
        ("dc-ae-f64c128", 676_896_140, 386),
        ("dc-ae-f128c512", 1_120_682_252, 434),
        ("dc-ae-tiny", 494_387, 148),
    ],
)
def test_preset_sizes(preset, params, tensors):
    with torch.device("meta"):
        model = build_autoencoder(preset)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == tensors  # efficientvit's count includes BatchNorm buffers


@pytest.mark.parametrize("preset", list(AE_PRESETS))
def test_every_preset_builds_and_states_its_compression(preset):
    with torch.device("meta"):
        model = build_autoencoder(preset)
    c, t, h, w = model.latent_shape(1, 512, 512)
    assert (c, t) == (model.latent_channels, 1)
    assert h == w == 512 // model.spatial_compression


def test_demo_preset_size():
    model = build_autoencoder("dc-ae-demo")
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 3_000_000
    assert (model.time_compression, model.spatial_compression) == (4, 8)
    x = torch.rand(1, 3, 8, 64, 64) * 2 - 1
    with torch.no_grad():
        assert model(x).shape == x.shape


# ---- shapes ----


def test_latent_shape_and_decoded_frames():
    with torch.device("meta"):
        model = build_autoencoder("dc-ae-f32t4c128")
    assert model.latent_shape(1, 256, 512) == (128, 1, 8, 16)
    assert model.latent_shape(2, 32, 32) == (128, 1, 1, 1)
    assert model.latent_shape(4, 32, 32)[1] == 1
    assert model.latent_shape(32, 256, 256) == (128, 8, 8, 8)
    assert [model.decoded_frames(k) for k in (1, 2, 8)] == [1, 8, 32]


@pytest.mark.parametrize("frames", [0, 3, 5, 6, 9, 10, 33])
def test_invalid_frame_counts_fail_in_one_line(frames):
    with torch.device("meta"):
        model = build_autoencoder("dc-ae-f32t4c128")
    with pytest.raises(ShapeError, match=rf"^{frames} frames: .*T = 1, 2 or a multiple of 4$"):
        model.check_input_shape(frames, 64, 64)


@pytest.mark.parametrize(
    ("height", "width", "bad"), [(48, 64, "height 48"), (64, 100, "width 100")]
)
def test_invalid_sizes_fail_in_one_line(height, width, bad):
    with torch.device("meta"):
        model = build_autoencoder("dc-ae-f32t4c128")
    with pytest.raises(ShapeError, match=rf"^{bad}: .*multiples of 32"):
        model.latent_shape(8, height, width)


def test_encode_checks_shape_before_running(tiny):
    with pytest.raises(ShapeError, match="5 frames"):
        tiny.encode(torch.zeros(1, 3, 5, 32, 32))
    with pytest.raises(ShapeError, match="expected \\(B, C, T, H, W\\)"):
        tiny.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ShapeError, match="channels"):
        tiny.decode(torch.zeros(1, 4, 1, 1, 1))


# ---- tiling ----

# A shallow video AE (compression 2x4x4) so a 16x64x64 clip spans several tiles cheaply.
SMALL = {
    "latent_channels": 8,
    "encoder_widths": (8, 16, 32),
    "decoder_widths": (8, 16, 32),
    "encoder_depths": (1, 1, 1),
    "decoder_depths": (1, 1, 1),
    "encoder_block_types": ("ResBlock", "ResBlock", "EViT"),
    "decoder_block_types": ("ResBlock", "ResBlock", "EViT"),
    "encoder_qkv_scales": ((), (), (5,)),
    "decoder_qkv_scales": ((), (), (5,)),
    "decoder_norms": ("rms",) * 3,
    "decoder_acts": ("silu",) * 3,
    "temporal_downsample": (True, False, False),
    "temporal_upsample": (True, False, False),
}


def psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
    peak = (ref.max() - ref.min()) ** 2
    return (10 * torch.log10(peak / (a - ref).square().mean())).item()


@pytest.fixture(scope="module")
def small_ae_and_clip():
    torch.manual_seed(0)
    model = build_autoencoder(DCAEConfig(), **SMALL).eval()
    smooth = torch.rand(1, 3, 3, 4, 4) * 2 - 1
    clip = torch.nn.functional.interpolate(smooth, size=(16, 64, 64), mode="trilinear")
    return model, clip


def test_tiled_matches_untiled_shape_and_stays_close(small_ae_and_clip):
    model, clip = small_ae_and_clip
    with torch.no_grad():
        z = model.encode(clip)
        x = model.decode(z)
        scores = {}
        for overlap in (0.0, 0.5):
            tiling = TilingConfig(spatial_tile=32, temporal_tile=8, overlap=overlap)
            zt, xt = model.encode(clip, tiling=tiling), model.decode(z, tiling=tiling)
            assert zt.shape == z.shape and xt.shape == x.shape
            scores[overlap] = (psnr(zt, z), psnr(xt, x))
    # random weights with global attention per tile: measured ~22 dB / ~27 dB at overlap 0.5
    assert scores[0.5][0] > 18 and scores[0.5][1] > 22
    assert scores[0.5][1] > scores[0.0][1]  # blending the overlaps helps


def test_one_tile_covering_the_input_is_exact(small_ae_and_clip):
    model, clip = small_ae_and_clip
    with torch.no_grad():
        z = model.encode(clip)
        big = TilingConfig(spatial_tile=64, temporal_tile=16)
        assert torch.equal(model.encode(clip, tiling=big), z)
        assert torch.equal(model.decode(z, tiling=big), model.decode(z))


def test_default_tiling_from_the_model(small_ae_and_clip):
    model, clip = small_ae_and_clip
    tiling = TilingConfig(spatial_tile=32, temporal_tile=8)
    with torch.no_grad():
        expected = model.encode(clip, tiling=tiling)
        model.tiling = tiling
        try:
            assert torch.equal(model.encode(clip), expected)
        finally:
            model.tiling = None


def test_temporal_tiles_never_collapse_to_one_latent_frame(small_ae_and_clip):
    model, _ = small_ae_and_clip
    z = torch.randn(
        1, 8, 7, 4, 4
    )  # latent tiles of 4 at stride 3: a 1-frame tail would decode to 1 frame
    with torch.no_grad():
        out = model.decode(z, tiling=TilingConfig(spatial_tile=64, temporal_tile=8))
    assert out.shape[2] == model.decoded_frames(7) == 14


def test_tile_sizes_are_checked(small_ae_and_clip):
    model, clip = small_ae_and_clip
    with pytest.raises(UsageError, match="spatial_tile 30: use a multiple of 4"):
        model.encode(clip, tiling=TilingConfig(spatial_tile=30))


# ---- building, saving, loading ----


def test_build_rejects_unknown_presets_and_fields():
    with pytest.raises(UsageError, match="unknown DC-AE preset 'nope'; presets: dc-ae-f32t4c128"):
        build_autoencoder("nope")
    with pytest.raises(UsageError, match=r"unknown field.*widthz.*fields: is_video"):
        build_autoencoder("dc-ae-tiny", widthz=3)
    with pytest.raises(UsageError, match="not a multiple of attention_head_dim 32"):
        build_autoencoder("dc-ae-tiny", encoder_widths=(8, 16, 16, 48, 48, 48))


WIDE_LATENT = {"latent_channels": 128, "encoder_out_shortcut": False, "decoder_in_shortcut": False}


def test_latent_projections_without_shortcuts_are_plain_convs():
    # The demo body's last width is 64: 128 latent channels only build with the shortcuts off,
    # and then the projections are the bare 3x3x3 convs (no identity or averaging added).
    torch.manual_seed(0)
    model = build_autoencoder("dc-ae-demo", **WIDE_LATENT).eval()
    video = torch.randn(1, 3, 8, 16, 16)
    enc, dec = model.encoder, model.decoder
    with torch.no_grad():
        h = enc.project_in(video)
        for stage in enc.stages:
            h = stage(h)
        conv = enc.project_out.main.op_list[0].conv
        expected = torch.nn.functional.conv3d(h, conv.weight, conv.bias, padding=1)
        z = enc(video)
        assert z.shape == (1, 128, 2, 2, 2)
        assert_max_rel(z, expected, 1e-5)
        conv = dec.project_in.main.conv
        expected = torch.nn.functional.conv3d(z, conv.weight, conv.bias, padding=1)
        assert_max_rel(dec.project_in(z), expected, 1e-5)
        assert model.decode(z).shape == video.shape


@pytest.mark.parametrize("on", ["encoder_out_shortcut", "decoder_in_shortcut"])
def test_latent_shortcut_needs_width_multiple_of_latent_channels(on):
    side = on.split("_")[0]
    with pytest.raises(
        UsageError,
        match=rf"last {side} width 64 is not a multiple of latent_channels 128 \(needed by {on}",
    ):
        build_autoencoder("dc-ae-demo", **{**WIDE_LATENT, on: True})


def test_save_load_round_trip(tiny, tmp_path, video_vectors):
    folder = save_autoencoder(tiny, tmp_path / "ae")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_autoencoder(folder)
    assert loaded.config == tiny.config
    with torch.no_grad():
        assert torch.equal(
            loaded.encode(video_vectors["in.image"]), tiny.encode(video_vectors["in.image"])
        )


def test_load_bare_safetensors_with_preset_and_open_sora_config(
    tiny, tmp_path, video_vectors, vectors_dir
):
    weights = {
        k.removeprefix("model."): v for k, v in video_vectors.items() if k.startswith("model.")
    }
    save_file(weights, str(tmp_path / "ae.safetensors"))  # bf16 as stored: loading upcasts
    from_file = load_autoencoder(tmp_path / "ae.safetensors", preset="dc-ae-tiny")
    spec = json.loads((vectors_dir / "video_dcae_a.json").read_text())
    folder = tmp_path / "opensora"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(spec["config_resolved"]))
    save_file(weights, str(folder / "F32T4C128_AE.safetensors"))
    from_ref_config = load_autoencoder(folder)
    assert from_ref_config.config == tiny.config
    with torch.no_grad():
        for model in (from_file, from_ref_config):
            assert (
                rel_l2(model.encode(video_vectors["in.video"]), video_vectors["out.latent"]) <= 1e-4
            )


def test_strict_loading_lists_missing_and_unexpected(tmp_path, video_vectors):
    weights = {
        k.removeprefix("model."): v for k, v in video_vectors.items() if k.startswith("model.")
    }
    weights["encoder.extra.weight"] = weights.pop("encoder.project_in.conv.bias")
    save_file(weights, str(tmp_path / "bad.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"1 missing \['encoder.project_in.conv.bias'\], 1 unexpected"
    ):
        load_autoencoder(tmp_path / "bad.safetensors", preset="dc-ae-tiny")
    with pytest.raises(UsageError, match="needs a preset"):
        load_autoencoder(tmp_path / "bad.safetensors")


# ---- training switches ----


def test_gradient_checkpointing_gives_the_same_gradients(small_ae_and_clip):
    model, clip = small_ae_and_clip
    x = clip[:, :, :4, :32, :32]
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        model(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.set_gradient_checkpointing(False)
    model.zero_grad()
    assert rel_l2(grads[1], grads[0]) < 1e-5


def test_bf16_autocast_stays_close(tiny, video_vectors):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z = tiny.encode(video_vectors["in.video"])
    assert z.dtype in (torch.bfloat16, torch.float32)
    assert math.isfinite(z.float().sum().item())
    assert rel_l2(z.float(), video_vectors["out.latent"]) < 0.1
