"""LoRA on the MMDiT: parameter count, identity at init, merge = unmerged forward, file layouts."""

import copy
import json

import pytest
import torch
from safetensors import safe_open

from vidcli.errors import CheckpointError, UsageError
from vidcli.models import adapters as A
from vidcli.models.mmdit import build_dit
from vidcli.recipe import LoRASection
from vidcli.train import lora as L

DIM, MLP = 64, 256  # mmdit-tiny: hidden 64, mlp_ratio 4, split q/k/v (Open-Sora layout)


def tiny_dit(**overrides):
    torch.manual_seed(0)
    return build_dit("mmdit-tiny", in_channels=16, context_in_dim=24, vec_in_dim=24, **overrides)


def inputs(model, batch=2, tokens=8, text=5):
    gen = torch.Generator().manual_seed(3)
    img = torch.randn(batch, tokens, model.config.in_channels, generator=gen)
    ids = torch.stack(
        torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(2), indexing="ij")
    )
    img_ids = ids.reshape(3, -1).T[None].expand(batch, -1, -1).float()
    txt = torch.randn(batch, text, 24, generator=gen)
    return dict(
        img=img,
        img_ids=img_ids,
        txt=txt,
        txt_ids=torch.zeros(batch, text, 3),
        timesteps=torch.rand(batch, generator=gen),
        y_vec=torch.randn(batch, 24, generator=gen),
    )


def randomise_adapters(model, seed=5):
    """Trained-looking adapters: B is zero at init, which would hide every error below."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))


def test_rank_r_lora_trains_r_times_in_plus_out_per_target_and_starts_as_identity():
    model = tiny_dit()
    x = inputs(model)
    section = LoRASection(rank=4, alpha=8.0)
    # Closed form for the default targets of mmdit-tiny (2 double, 2 single blocks):
    # a double block has per stream q, k, v, proj (D->D) and mlp.0 (D->MLP), mlp.2 (MLP->D);
    # a single block has q_proj, k_proj (D->D), v_mlp (D->D+MLP) and linear2 (D+MLP->D).
    per_double = 2 * (4 * (DIM + DIM) + 2 * (DIM + MLP))
    per_single = 2 * (DIM + DIM) + (DIM + DIM + MLP) + (DIM + MLP + DIM)
    expected = section.rank * (2 * per_double + 2 * per_single)
    assert L.trainable_parameter_count(model, section) == expected
    # The memory plan counts on models built on the meta device.
    assert L.trainable_parameter_count(tiny_dit_meta(), section) == expected

    # The base output with the base weights frozen, as add_lora leaves them: on 2 threads a
    # weight's requires_grad alone changes which kernels run, by ~5e-7.
    before = model.requires_grad_(False)(**x)
    adapted = L.add_lora(model, section)
    trainable = {n: p.numel() for n, p in adapted.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected
    assert all("lora_" in n for n in trainable)
    assert torch.equal(adapted(**x), before)  # B = 0: the adapted model is the base model


def tiny_dit_meta():
    return build_dit("mmdit-tiny", in_channels=16, context_in_dim=24, vec_in_dim=24, device="meta")


def test_targets_that_match_nothing_are_an_error():
    with pytest.raises(UsageError, match=r"\[lora\] targets \['to_q'\] match no Linear"):
        L.add_lora(tiny_dit(), LoRASection(rank=2, targets=["to_q"]))


@pytest.mark.parametrize("fused_qkv", [False, True])
def test_merged_forward_equals_unmerged(fused_qkv):
    model = L.add_lora(tiny_dit(fused_qkv=fused_qkv), LoRASection(rank=3, alpha=6.0))
    randomise_adapters(model)
    x = inputs(model)
    with torch.no_grad():
        unmerged = model(**x)  # PEFT computes W x + (alpha/r) B A x: the reference
        weights = L.adapter_weights(model)
        plain = tiny_dit(fused_qkv=fused_qkv)
        original = copy.deepcopy(plain.state_dict())
        A.merge_lora(plain, weights)
        torch.testing.assert_close(plain(**x), unmerged, rtol=1e-5, atol=1e-5)
        # The checkpoint path merges from the state dict: same weights as merge_lora.
        merged = A.merged_state(model.state_dict(), alpha=6.0)
        for key, value in plain.state_dict().items():
            torch.testing.assert_close(merged[key], value, rtol=1e-6, atol=1e-7)
        A.unmerge_lora(plain, weights)
        for key, value in plain.state_dict().items():
            torch.testing.assert_close(value, original[key], rtol=0, atol=1e-6)


def test_scale_half_is_half_the_update():
    model = L.add_lora(tiny_dit(), LoRASection(rank=2))
    randomise_adapters(model)
    weights = L.adapter_weights(model)
    base = tiny_dit()
    w0 = base.double_blocks[0].img_attn.q_proj.weight.detach().clone()
    A.merge_lora(base, weights, scale=0.5)
    name = "double_blocks.0.img_attn.q_proj"
    expected = w0 + 0.5 * (weights.up[name] @ weights.down[name])  # alpha = rank: scale 1
    torch.testing.assert_close(base.double_blocks[0].img_attn.q_proj.weight, expected)


@pytest.mark.parametrize("layout", A.LAYOUTS)
def test_exported_files_load_back_identically(tmp_path, layout):
    model = L.add_lora(tiny_dit(), LoRASection(rank=4, alpha=2.0))
    randomise_adapters(model)
    weights = L.adapter_weights(model)
    path = A.save_lora(weights, tmp_path / f"{layout}.safetensors", layout)
    loaded = A.load_lora(path, tiny_dit())
    assert loaded.modules == weights.modules
    for m in weights.modules:
        assert torch.equal(loaded.down[m], weights.down[m])
        assert torch.equal(loaded.up[m], weights.up[m])
        assert loaded.scale(m) == weights.scale(m) == 0.5
    x = inputs(model)
    merged = tiny_dit()
    A.merge_lora(merged, loaded)
    with torch.no_grad():
        torch.testing.assert_close(merged(**x), model(**x), rtol=1e-5, atol=1e-5)


def test_file_layouts_follow_diffusers_and_comfyui(tmp_path):
    from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata

    model = L.add_lora(tiny_dit(fused_qkv=True), LoRASection(rank=4, alpha=2.0))
    weights = L.adapter_weights(model)
    diffusers_file = A.save_lora(weights, tmp_path / "d.safetensors", "diffusers")
    comfy_file = A.save_lora(weights, tmp_path / "c.safetensors", "comfyui")
    with safe_open(str(diffusers_file), "pt") as f:
        keys = set(f.keys())
    assert "transformer.double_blocks.0.img_attn.qkv.lora_A.weight" in keys
    assert "transformer.single_blocks.1.linear1.lora_B.weight" in keys
    metadata = _load_sft_state_dict_metadata(str(diffusers_file))  # diffusers' own reader
    assert metadata["transformer.r"] == 4 and metadata["transformer.lora_alpha"] == 2.0
    with safe_open(str(comfy_file), "pt") as f:
        keys = set(f.keys())
        alpha = f.get_tensor("lora_unet_double_blocks_0_img_attn_qkv.alpha")
    # ComfyUI (comfy/lora.py): lora_unet_<key with _>, lora_up = B, lora_down = A, scale alpha/r.
    assert {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
    } <= keys
    assert float(alpha) == 2.0
    json.dumps(metadata)  # plain JSON values


def test_a_lora_for_another_model_is_refused(tmp_path):
    model = L.add_lora(tiny_dit(), LoRASection(rank=2))
    path = A.save_lora(L.adapter_weights(model), tmp_path / "l.safetensors")
    other = build_dit(
        "mmdit-tiny", in_channels=16, context_in_dim=24, vec_in_dim=24, fused_qkv=True
    )
    with pytest.raises(CheckpointError, match="no such Linear in the model"):
        A.load_lora(path, other)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a.safetensors", ("a.safetensors", 1.0)), ("a.safetensors:0.5", ("a.safetensors", 0.5))],
)
def test_lora_option_parses_path_and_scale(value, expected):
    path, scale = A.parse_lora_option(value)
    assert (str(path), scale) == expected


def test_generate_merges_lora_files_with_their_scale(tmp_path):
    from typer.testing import CliRunner

    from vidcli.cli import app
    from vidcli.models import build_autoencoder, save_autoencoder, save_dit

    save_autoencoder(build_autoencoder("dc-ae-tiny"), tmp_path / "ae")
    dit = build_dit("mmdit-tiny", in_channels=8, patch_size=1, context_in_dim=384, vec_in_dim=384)
    save_dit(dit, tmp_path / "dit")
    adapted = L.add_lora(dit, LoRASection(rank=2))
    randomise_adapters(adapted, seed=9)
    lora_file = A.save_lora(L.adapter_weights(adapted), tmp_path / "l.safetensors", "comfyui")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f'[ae]\npreset = "dc-ae-tiny"\npath = "{tmp_path / "ae"}"\ntiling = false\n'
        f'[dit]\npath = "{tmp_path / "dit"}"\n[text]\nmax_length = 8\n'
        "[sample]\nsteps = 2\nframes = 8\nheight = 64\nwidth = 64\n"
    )
    frames = {}
    for name, extra in (
        ("base", []),
        ("zero", ["--lora", f"{lora_file}:0"]),
        ("one", ["--lora", str(lora_file)]),
    ):
        out = tmp_path / name
        args = ["generate", "a red circle moving left", "--recipe", str(recipe), "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--format", "png", *extra])
        assert result.exit_code == 0, result.output
        frames[name] = [f.read_bytes() for f in sorted(out.glob("*.png"))]
    assert frames["zero"] == frames["base"]
    assert frames["one"] != frames["base"]

    bad = CliRunner().invoke(
        app, ["generate", "x", "--recipe", str(recipe), "--lora", "nope.safetensors"]
    )
    assert bad.exit_code == 2 and "LoRA file nope.safetensors not found" in bad.output


def test_the_training_memory_plan_counts_only_adapters_as_trainable():
    from vidcli.plans import sizes
    from vidcli.plans import train as tp
    from vidcli.recipe import load_recipe

    recipe = load_recipe(None, ["dit.preset='mmdit-s'", "lora.rank=8"])
    latent = (128, 4, 8, 8)
    full = tp.plan_train(load_recipe(None, ["dit.preset='mmdit-s'"]), latent, gpu_memory_gb=80)
    plan = tp.plan_train(recipe, latent, gpu_memory_gb=80)
    on_meta = sizes.meta_dit(recipe.dit, 128, recipe.text)
    adapters = L.trainable_parameter_count(on_meta, recipe.lora)
    assert plan.trainable_params == adapters and plan.params == full.params + adapters
    # ZeRO-2, one rank: 4 bytes of weights per parameter, 4 of gradients + 8 of AdamW per
    # trainable one (vidcli.plans.train.model_state_bytes).
    assert plan.grads_gb == pytest.approx(4 * adapters / 1e9)
    assert plan.weights_gb == pytest.approx(4 * (full.params + adapters) / 1e9)


def test_comfyui_file_of_a_flux_layout_dit_converts_with_diffusers_own_converter(tmp_path):
    """diffusers reads kohya/ComfyUI Flux LoRAs through this converter (FluxPipeline
    load_lora_weights); it hard-codes Flux's 3072 width, hence a 1+1-block flux-dev on meta."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
    from safetensors.torch import load_file

    model = build_dit("flux-dev", depth=1, depth_single_blocks=1, device="meta")
    layers = L.target_linears(model, LoRASection(rank=2, targets=["qkv", "linear1"]))
    gen = torch.Generator().manual_seed(0)
    down = {n: torch.randn(2, m.in_features, generator=gen) for n, m in layers.items()}
    up = {n: torch.randn(m.out_features, 2, generator=gen) for n, m in layers.items()}
    weights = A.LoRAWeights(down, up, {n: 1.0 for n in layers})  # scale alpha / r = 0.5
    path = A.save_lora(weights, tmp_path / "flux.safetensors", "comfyui")
    converted = _convert_kohya_flux_lora_to_diffusers(load_file(str(path)))
    qkv = "double_blocks.0.img_attn.qkv"
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        prefix = f"transformer.transformer_blocks.0.attn.{name}"
        got = converted[f"{prefix}.lora_B.weight"] @ converted[f"{prefix}.lora_A.weight"]
        rows = slice(3072 * i, 3072 * (i + 1))
        torch.testing.assert_close(got, 0.5 * up[qkv][rows] @ down[qkv])
