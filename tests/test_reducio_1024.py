"""recipes/reducio-1024(-dit).toml, the full-size Reducio pipeline: the recipes agree with each
other and with the released models, and their memory plans for an 80 GB device (computed on
`meta`, no weights) match whole-model measurements made here independently of the plans."""

import json
from pathlib import Path

import pytest
import torch
from test_memory_plan import mmdit_params
from typer.testing import CliRunner

from vidcli.cli import app
from vidcli.models import build_autoencoder
from vidcli.models.content import content_latent
from vidcli.models.dcae import TilingConfig
from vidcli.models.mmdit import build_dit
from vidcli.placement import Placement
from vidcli.plans import generate as gp
from vidcli.plans.meta import measure_peak, saved_for_backward
from vidcli.plans.sizes import ACTIVATION_MARGIN, GB, RESERVED_GB, dit_inputs, meta_dit
from vidcli.recipe import load_recipe
from vidcli.sampling.compatibility import check_run

REPO = Path(__file__).resolve().parents[1]
GENERATE = REPO / "recipes/reducio-1024.toml"
TRAIN = REPO / "recipes/reducio-1024-dit.toml"
BF16 = torch.bfloat16


def _plan_json(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _reducio() -> torch.nn.Module:
    return build_autoencoder("reducio-ft4", device="meta").eval().to(BF16)


def test_recipes_use_the_released_models_and_the_same_dit():
    gen, train = load_recipe(GENERATE), load_recipe(TRAIN)
    flux = load_recipe(REPO / "recipes/flux-dev-t2i.toml")
    config = _reducio().config
    # The released 1024 px tiling: upstream's use_tiling=True at the config's own sizes.
    assert gen.ae.preset == "reducio-ft4" and gen.ae.tiling
    assert gen.ae.spatial_tile == config.tile_sample_min_size == 256
    assert gen.ae.tile_overlap == config.tile_overlap_factor
    assert gen.ae == train.ae and gen.text == train.text == flux.text
    # Flux-dev draws the content frame at the video's size, as flux-dev-t2i.toml runs it.
    t2i = gen.t2i
    assert t2i.enabled and t2i.preset == flux.dit.preset and t2i.path == flux.dit.path
    assert (t2i.ae_preset, t2i.ae_path) == (flux.ae.preset, flux.ae.path)
    assert (t2i.guidance, t2i.steps) == (flux.sample.guidance, flux.sample.steps)
    assert t2i.resolution == gen.sample.height == gen.sample.width == 1024
    # generate samples the checkpoint train-dit writes, sized the same before it exists.
    assert gen.dit.path == f"{train.train.output}/checkpoints/latest"
    sampled = meta_dit(gen.dit, 16, gen.text).config
    trained = meta_dit(train.dit, 16, train.text).config
    assert sampled == trained
    assert (sampled.in_channels, sampled.patch_size) == (config.embed_dim, 1)
    assert sampled.cond_embed and not sampled.guidance_embed
    assert (sampled.context_in_dim, sampled.vec_in_dim) == (4096, 768)  # T5-XXL, CLIP-L pooled
    # DiT-XL's width and heads (the paper's DiT size), about its 675 M parameters.
    assert (sampled.hidden_size, sampled.num_heads) == (1152, 16)
    assert 0.6e9 < mmdit_params(sampled) < 0.8e9
    check_run(gen, Placement(torch.device("cuda"), BF16), image=False, lora=False)


def test_train_plan_for_8_ranks_of_80_gb():
    recipe = load_recipe(TRAIN, ["launcher.nproc=8"])
    plan = _plan_json("train-dit", str(TRAIN), "--plan", "--gpu-memory", "80", "--nproc", "8")
    dit = meta_dit(recipe.dit, 16, recipe.text)
    params = mmdit_params(dit.config)
    assert plan["params"] == params == sum(p.numel() for p in dit.parameters())
    # ZeRO-2 over 8 ranks: fp32 weights whole, their gradients and AdamW's two fp32 moments an
    # eighth each; the fp32 EMA shadow whole on every rank.
    assert plan["weights_gb"] == pytest.approx(4 * params / GB)
    assert plan["grads_gb"] == pytest.approx(4 * params / 8 / GB)
    assert plan["optimizer_gb"] == pytest.approx(8 * params / 8 / GB)
    assert plan["ema_gb"] == pytest.approx(4 * params / GB)
    # The largest bucket: 1024² of area at 4:3 is 896 x 1184 px, 4 x 28 x 37 latent tokens.
    assert plan["bucket"] == "1024px-16-4:3" and plan["batch_size"] == 8
    assert plan["tokens_per_sample"] == 4 * 28 * 37
    # Activations against what autograd saves over the whole model (every block run): the plan
    # measures one block of each kind and adds one block's activation gradients.
    dit.to(BF16).requires_grad_(True)
    inputs = dit_inputs(dit, 8, (16, 4, 28, 37), 512, BF16)
    whole = saved_for_backward(lambda: dit(**inputs), dit) * ACTIVATION_MARGIN / GB
    assert whole < plan["activations_gb"] < 1.1 * whole
    assert not plan["grad_checkpointing"] and plan["fits"]
    states = plan["weights_gb"] + plan["grads_gb"] + plan["optimizer_gb"] + plan["ema_gb"]
    assert plan["peak_gb"] == pytest.approx(states + plan["activations_gb"] + RESERVED_GB)
    assert plan["peak_gb"] < 80


def test_generate_plan_for_80_gb_decodes_in_the_reference_tiles():
    plan = _plan_json(
        "generate", "--recipe", str(GENERATE), "--plan", "--device", "cuda", "--gpu-memory", "80",
        "a red kite over the sea",
    )  # fmt: skip
    assert plan["dtype"] == "bf16" and plan["offload"] == "none" and plan["fits"]
    assert plan["latent_shape"] == [16, 4, 32, 32] and plan["image_tokens"] == 4096
    assert plan["tiling"] == {"spatial_tile": 256, "temporal_tile": 16, "overlap": 0.25}
    phases = plan["phases_gb"]
    assert set(phases) == {"text", "t2i", "encode", "dit", "decode"}
    resident = sum(c["weight_gb"] for c in plan["components"])
    assert phases["text"] == pytest.approx(resident)
    ae = _reducio()
    tiling = TilingConfig(spatial_tile=256, temporal_tile=16, overlap=0.25)
    # Decode: the whole tiled decode of 16 frames at 1024² measured on meta (fused SDPA for the
    # cross-attention), plus the video's fp32 copy before `.cpu()`.
    z = torch.empty(1, 16, 4, 32, 32, device="meta", dtype=BF16)
    image = torch.empty(1, 3, 1024, 1024, device="meta", dtype=BF16)
    decode = measure_peak(lambda: ae.decode(z, content=image, tiling=tiling)) * ACTIVATION_MARGIN
    decode += 3 * 16 * 1024 * 1024 * 4
    assert phases["decode"] - resident == pytest.approx(decode / GB, rel=0.05)
    # Encode: the DiT's condition, the content frame held still and encoded in the same tiles,
    # plus the expanded clip on the device.
    ae.tiling = tiling
    encode = measure_peak(lambda: content_latent(ae, image)) * ACTIVATION_MARGIN
    encode += 3 * 16 * 1024 * 1024 * 2
    assert phases["encode"] - resident == pytest.approx(encode / GB, rel=0.05)
    # t2i: Flux-dev's whole forward at 1024² (one row: guidance-distilled) or its AE's decode.
    flux = build_dit("flux-dev", device="meta").to(BF16)
    inputs = dit_inputs(flux, 1, (16, 1, 128, 128), 512, BF16)
    held = sum(t.nbytes for t in inputs.values() if t is not None)
    forward = measure_peak(lambda: flux(**inputs)) + held
    flux_ae = build_autoencoder("flux-ae", device="meta").eval().to(BF16)
    latent = torch.empty(1, 16, 1, 128, 128, device="meta", dtype=BF16)
    t2i = max(forward, measure_peak(lambda: flux_ae.decode(latent))) * ACTIVATION_MARGIN
    assert phases["t2i"] - resident == pytest.approx(t2i / GB, rel=1e-6)
    assert plan["peak_gb"] == pytest.approx(max(phases.values()) + RESERVED_GB)
    assert plan["peak_gb"] < 80
    # Untiled would fit too, with less work, but it decodes another video than upstream's.
    assert plan["decode_untiled_gb"] + resident + RESERVED_GB < 80
    assert plan["decode_work"] > 1


def test_reference_tiles_win_over_tiles_with_less_work():
    recipe = load_recipe(GENERATE)
    options = gp.decode_options(_reducio(), recipe.sample, BF16)
    work = {o[0]["spatial_tile"]: o[2] for o in options[1:]}
    assert work[192] < work[256]  # 6 x 7-row tiles cover 32 rows with less overlap than 4 x 10
    plan = gp.plan_generate(recipe, torch.device("cuda"), BF16, 80)
    assert plan.tiling["spatial_tile"] == 256 and not any("spatial_tile" in n for n in plan.notes)
    # Four videos at once on 16 GB: the reference tiles do not fit, a smaller tile is named.
    small = gp.plan_generate(recipe, torch.device("cuda"), BF16, 16, batch_size=4)
    assert small.fits and small.tiling["spatial_tile"] < 256
    assert any("spatial_tile = 256 does not fit" in n for n in small.notes)


def test_generate_plan_counts_a_plain_image_dit_drawing_a_clip_with_cfg():
    """The Reducio demo's image stage: the demo MMDiT (no guidance embedding: text CFG, 2 rows)
    draws a 16-frame clip at 64 px and its AE decodes all 16 frames."""
    recipe = load_recipe(REPO / "recipes/reducio-demo.toml")
    assert recipe.t2i.frames == 16 and recipe.t2i.resolution == 64
    plan = gp.plan_generate(recipe, torch.device("cuda"), BF16, 80.0)
    resident = sum(c.weight_gb for c in plan.components)
    dit = build_dit("mmdit-demo", device="meta", **recipe.t2i.overrides).to(BF16)
    assert not dit.config.guidance_embed
    ae = build_autoencoder("dc-ae-demo", device="meta").eval().to(BF16)
    c, t, h, w = ae.latent_shape(16, 64, 64)
    inputs = dit_inputs(dit, 2, (dit.config.in_channels, t, h, w), recipe.text.max_length, BF16)
    held = sum(x.nbytes for x in inputs.values() if x is not None)
    forward = measure_peak(lambda: dit(**inputs)) + held
    z = torch.empty(1, c, t, h, w, device="meta", dtype=BF16)
    t2i = max(forward, measure_peak(lambda: ae.decode(z))) * ACTIVATION_MARGIN
    assert plan.phases_gb["t2i"] - resident == pytest.approx(t2i / GB, rel=1e-6)
