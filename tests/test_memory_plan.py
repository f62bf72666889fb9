"""Memory plans against closed forms: weight bytes, ZeRO partitioning, live-tensor peaks."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from vidcli.cli import app
from vidcli.models.mmdit import build_dit
from vidcli.models.mmdit.presets import DIT_PRESETS
from vidcli.plans import generate as gp
from vidcli.plans import meta, sizes
from vidcli.plans import train as tp
from vidcli.recipe import TextSection, load_recipe

OPENSORA = "recipes/opensora-v2-hcae.toml"


def mmdit_params(c) -> int:
    """Closed-form parameter count of an MMDiT config (Flux / Open-Sora 2.0 layout)."""
    D, M, hd = c.hidden_size, c.mlp_hidden_dim, c.head_dim
    linear = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    mlp_embed = lambda i: linear(i, D) + linear(D, D)  # noqa: E731
    n = linear(c.in_channels, D) + mlp_embed(256) + mlp_embed(c.vec_in_dim)
    n += linear(c.context_in_dim, D)
    n += mlp_embed(256) if c.guidance_embed else 0
    n += linear(c.in_channels + c.patch_size**2, D) if c.cond_embed else 0
    stream = linear(D, 6 * D) + 3 * linear(D, D, c.qkv_bias) + 2 * hd + linear(D, D)
    stream += linear(D, M) + linear(M, D)
    single = linear(D, 3 * D) + linear(D, 3 * D + M) + linear(D + M, D) + 2 * hd
    n += c.depth * 2 * stream + c.depth_single_blocks * single
    return n + linear(D, 2 * D) + linear(D, c.in_channels)


@pytest.mark.parametrize("preset", ["mmdit-tiny", "mmdit-demo"])
def test_mmdit_closed_form_matches_a_real_model(preset):
    model = build_dit(preset)
    assert meta.param_count(model) == mmdit_params(model.config)


def test_11b_dit_in_bf16_is_23_8_gb():
    recipe = load_recipe(OPENSORA, ["t2i.enabled=false"])
    dit = sizes.meta_dit(recipe.dit, 128, recipe.text)
    params = meta.param_count(dit)
    assert params == mmdit_params(DIT_PRESETS["opensora-v2-hcae"])
    plan = gp.plan_generate(recipe, torch.device("cuda"), torch.bfloat16, None)
    weights = {c.name: c for c in plan.components}
    assert weights["dit"].weight_gb == params * 2 / 1e9
    assert weights["dit"].weight_gb == pytest.approx(23.8, rel=0.01)
    assert all(p.device.type == "meta" for p in dit.parameters())  # nothing was allocated


def test_text_encoder_closed_forms_match_transformers(tmp_path):
    from tiny_models import save_tiny_t5_clip

    t5, clip, _ = save_tiny_t5_clip(tmp_path)
    counts = sizes.text_encoder_params(
        TextSection(
            backend="t5-clip", t5_path=str(tmp_path / "t5"), clip_path=str(tmp_path / "clip")
        )
    )
    assert counts == {
        "text:t5": meta.param_count(t5),
        "text:clip": meta.param_count(clip),
    }


def test_released_text_encoder_sizes():
    counts = sizes.text_encoder_params(TextSection(backend="t5-clip"))
    # T5-v1.1-XXL encoder 4.76 B, CLIP ViT-L/14 text tower 123 M (their model cards).
    assert counts["text:t5"] == pytest.approx(4.762e9, rel=1e-3)
    assert counts["text:clip"] == pytest.approx(123.06e6, rel=1e-3)


def test_minilm_closed_form_matches_the_bundled_model():
    from vidcli.models.text import MiniLMEncoder, _bundled_minilm_dir

    model = MiniLMEncoder(_bundled_minilm_dir(), 32, 0, torch.float32).model
    assert sizes.text_encoder_params(TextSection())["text:minilm"] == sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("pooler.")
    )


def test_measure_peak_counts_live_tensors():
    chain = nn.Sequential(*[nn.Linear(1000, 1000) for _ in range(4)]).to("meta")
    x = torch.empty(100, 1000, device="meta")
    # Two activations are alive at once (a layer's input and output); the input is not counted.
    assert meta.measure_peak(lambda: chain(x)) == 2 * 100 * 1000 * 4
    # Backward keeps every layer's input: x and three hidden activations.
    assert meta.saved_for_backward(lambda: chain(x), chain) == 4 * 100 * 1000 * 4


def test_fused_attention_keeps_no_scores():
    q = torch.empty(1, 4, 4096, 64, device="meta", dtype=torch.bfloat16)
    assert meta.measure_peak(lambda: F.scaled_dot_product_attention(q, q, q)) == q.nbytes


def test_decode_peak_is_linear_in_tile_volume():
    ae = sizes.meta_autoencoder(load_recipe(OPENSORA).ae)
    small = torch.empty(1, 128, 4, 4, 4, device="meta")
    large = torch.empty(1, 128, 4, 8, 8, device="meta")
    a = meta.measure_peak(lambda: ae._decode_raw(small))
    b = meta.measure_peak(lambda: ae._decode_raw(large))
    assert b / a == pytest.approx(4.0, rel=0.02)


def test_decode_estimate_near_the_reference_tile_peak():
    """gpu-anchors.md: the reference decodes 768 px x 128 f in 256 px / 32 f tiles at 5.8 GB."""
    ae = sizes.meta_autoencoder(load_recipe(OPENSORA).ae)
    per_voxel = gp._coder_bytes_per_voxel(ae.to(torch.bfloat16), torch.bfloat16, decode=True)
    weights = meta.param_count(ae.decoder) * 2
    video = 3 * 128 * 768 * 768 * 2
    estimate = (per_voxel * 32 * 256 * 256 + weights + video) / 1e9
    assert 0.7 * 5.8 < estimate < 1.5 * 5.8


@pytest.mark.parametrize(
    ("stage", "expected"),
    [(0, 16.0), (1, 4 + 4 + 8 / 8), (2, 4 + (4 + 8) / 8), (3, 16 / 8)],
)
def test_zero_partitioning_closed_form(stage, expected):
    """ZeRO paper: fp32 weights + grads (4 B each) and AdamW moments (8 B), split by stage."""
    states = tp.model_state_bytes(1_000_000, 1_000_000, stage, world=8)
    assert sum(states.values()) == pytest.approx(expected * 1_000_000)


def test_frozen_weights_have_no_grads_or_optimizer_states():
    states = tp.model_state_bytes(1_000_000, 10_000, zero_stage=0, world=1)
    assert states == {"weights": 4e6, "grads": 4e4, "optimizer": 8e4}


def _plan_json(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_generate_plan_for_24_and_80_gb(monkeypatch):
    import safetensors.torch

    def no_loading(*args, **kwargs):
        raise AssertionError("the plan loaded weights")

    monkeypatch.setattr(safetensors.torch, "load_file", no_loading)
    base = ["generate", "--recipe", OPENSORA, "--plan", "--device", "cuda"]
    big = _plan_json(*base, "--gpu-memory", "80")
    small = _plan_json(*base, "--gpu-memory", "24")
    for plan, limit in ((big, 80), (small, 24)):
        assert plan["fits"] and plan["peak_gb"] <= limit
        assert plan["dtype"] == "bf16"
    # 80 GB holds one model at a time with its activations and decodes in large tiles; 24 GB
    # cannot hold the 11B DiT's weights beside its activations, so it streams blocks, and its
    # decode tiles must be smaller (more overlap work).
    assert big["offload"] in ("none", "model") and small["offload"] == "blocks"
    assert big["tiling"] != small["tiling"]
    assert big["decode_work"] < small["decode_work"] and big["decode_gb"] > small["decode_gb"]
    untiled = big["decode_untiled_gb"]
    assert untiled > 80  # 128 frames at 576x1024 never decode untiled on one GPU


def test_plan_that_cannot_fit_names_the_smallest_device():
    recipe = load_recipe(OPENSORA)
    plan = gp.plan_generate(recipe, torch.device("cuda"), torch.bfloat16, 8)
    assert not plan.fits
    assert plan.smallest_device_gb > 8
    assert f"{plan.smallest_device_gb:.1f} GB" in plan.notes[0]


def test_plan_on_cuda_without_memory_size_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["generate", "--plan", "--device", "cuda"])
    assert result.exit_code == 2
    assert "--gpu-memory" in result.output


def test_train_dit_plan():
    plan = _plan_json("train-dit", "recipes/hcae.toml", "--plan", "--gpu-memory", "80")
    params = mmdit_params(DIT_PRESETS["opensora-v2-hcae"])
    assert plan["params"] == params
    # ZeRO-2 on one rank: nothing to partition over, 16 bytes per parameter.
    assert plan["weights_gb"] + plan["grads_gb"] + plan["optimizer_gb"] == pytest.approx(
        16 * params / 1e9
    )
    assert plan["activations_checkpointed_gb"] < plan["activations_gb"] / 5
    assert plan["grad_checkpointing"] and not plan["fits"]


def test_train_plan_turns_checkpointing_on_only_when_needed():
    recipe = load_recipe(
        None, ["dit.preset='mmdit-s'", "data.num_frames=16", "data.height=256", "data.width=256"]
    )
    latent = (128, 4, 8, 8)
    roomy = tp.plan_train(recipe, latent, gpu_memory_gb=1000)
    assert not roomy.grad_checkpointing and roomy.fits
    tight_gb = (
        roomy.peak_gb - roomy.activations_gb + (roomy.activations_checkpointed_gb + 0.001) + 0.001
    )
    tight = tp.plan_train(recipe, latent, gpu_memory_gb=tight_gb)
    assert tight.grad_checkpointing and tight.fits


@pytest.mark.parametrize(("total_bytes", "expected"), [(10**12, 0), (2 * 10**9, 4)])
def test_train_dit_turns_checkpointing_on_when_the_plan_needs_it(
    monkeypatch, total_bytes, expected
):
    from types import SimpleNamespace

    from vidcli.train import dit as dit_stage

    recipe = load_recipe(None, ["dit.preset='mmdit-s'", "text.max_length=32"])
    model = build_dit("mmdit-s", in_channels=128, context_in_dim=384, vec_in_dim=384)
    memory = SimpleNamespace(total_memory=total_bytes)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: memory)
    # 8192 tokens: mmdit-s's states take 0.5 GB, its activations 2.0 GB, checkpointed 0.44 GB;
    # 2 GB (1 GB after the reserve) fits only with every one of its 4 double blocks checkpointed.
    dit_stage._checkpoint_if_needed(model, recipe, (128, 8, 32, 32), world=1, rank=0)
    assert model.ckpt_double == expected
