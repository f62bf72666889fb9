"""MMDiT against the Open-Sora 2.0 reference vectors (mmdit_a), the spec's state-dict table, I/O."""

from __future__ import annotations

import json
import re

import pytest
import torch
from mmdit_vectors import load_mmdit_vectors, reference_model
from safetensors.torch import save_file
from tolerances import assert_max_rel

from vidcli.errors import CheckpointError, ShapeError, UsageError
from vidcli.models.mmdit import (
    DIT_PRESETS,
    MMDiT,
    MMDiTConfig,
    build_dit,
    dit_flops,
    load_dit,
    make_image_ids,
    pack_latents,
    save_dit,
    unpack_latents,
)
from vidcli.models.mmdit.rope import interleaved_to_half_split_index, rope_angles


@pytest.fixture(scope="module")
def vectors(vectors_dir):
    return load_mmdit_vectors(vectors_dir)


def case_inputs(tensors, case: str) -> dict[str, torch.Tensor]:
    prefix = f"{case}.in."
    names = ("img", "img_ids", "txt", "txt_ids", "timesteps", "y_vec", "cond", "guidance")
    return {n: tensors[prefix + n] for n in names if prefix + n in tensors}


# ---------------------------------------------------------------- reference equivalence


@pytest.mark.parametrize("name", ["os2", "flux"])
def test_forward_matches_reference(vectors, name):
    _, tensors = vectors
    model = reference_model(vectors, name)
    with torch.no_grad():
        out = model(**case_inputs(tensors, f"fwd_{name}"))
    assert_max_rel(out, tensors[f"fwd_{name}.out"])


def test_os2_intermediates_match_reference(vectors):
    _, tensors = vectors
    model = reference_model(vectors, "os2")
    inputs = case_inputs(tensors, "fwd_os2")
    seen: dict[str, torch.Tensor] = {}
    hooked = ["img_in", "cond_in", "time_in", "vector_in", "txt_in", "final_layer"]
    hooked += [f"double_blocks.{i}" for i in range(2)] + [f"single_blocks.{i}" for i in range(2)]
    for name in hooked:

        def hook(_module, _args, out, name=name):
            if isinstance(out, tuple):
                seen.update({f"{name}.{j}": o for j, o in enumerate(out)})
            else:
                seen[name] = out

        model.get_submodule(name).register_forward_hook(hook)
    with torch.no_grad():
        model(**inputs)
    seen["vec"] = seen["time_in"] + seen["vector_in"]
    ids = torch.cat((inputs["txt_ids"], inputs["img_ids"]), dim=1)
    cos, sin = rope_angles(ids, model.config.axes_dim, model.config.theta, half_split=True)
    # The reference stores each angle twice (channels m and m + head_dim/2).
    seen["pe_embedder.0"], seen["pe_embedder.1"] = (
        torch.cat((cos, cos), -1),
        torch.cat((sin, sin), -1),
    )

    dbg = sorted(k.removeprefix("fwd_os2.dbg.") for k in tensors if k.startswith("fwd_os2.dbg."))
    assert sorted(seen) == dbg
    for key in dbg:
        assert_max_rel(seen[key], tensors[f"fwd_os2.dbg.{key}"])


def test_rope_pairing_is_not_interchangeable(vectors):
    _, tensors = vectors
    inputs = case_inputs(tensors, "fwd_os2")
    model = reference_model(vectors, "os2", use_liger_rope=False)
    with torch.no_grad():
        out = model(**inputs)
    assert_max_rel(out, tensors["fwd_os2.out_if_interleaved_rope"])
    assert (out - tensors["fwd_os2.out"]).abs().max() > 1e-2


def test_flux_weights_run_half_split_after_permutation(vectors):
    """Spec §5: permuting q/k channels inside each head turns interleaved into half-split."""
    _, tensors = vectors
    flux = reference_model(vectors, "flux")
    cfg = flux.config
    perm = interleaved_to_half_split_index(cfg.head_dim)
    head_perm = torch.cat([h * cfg.head_dim + perm for h in range(cfg.num_heads)])
    rows = torch.arange(cfg.hidden_size * 3 + cfg.mlp_hidden_dim)
    rows[: cfg.hidden_size] = head_perm  # q
    rows[cfg.hidden_size : 2 * cfg.hidden_size] = cfg.hidden_size + head_perm  # k
    state = {}
    for key, value in flux.state_dict().items():
        if key.endswith(("qkv.weight", "qkv.bias", "linear1.weight", "linear1.bias")):
            value = value[rows[: value.shape[0]]]
        elif key.endswith(("query_norm.scale", "key_norm.scale")):
            value = value[perm]
        state[key] = value
    converted = MMDiT(MMDiTConfig(**{**cfg.to_dict(), "use_liger_rope": True})).eval()
    converted.load_state_dict(state)
    with torch.no_grad():
        out = converted(**case_inputs(tensors, "fwd_flux"))
    assert_max_rel(out, tensors["fwd_flux.out"])


def test_packing_and_ids_match_reference(vectors):
    _, tensors = vectors
    for case in ("fwd_os2", "fwd_flux"):
        z = tensors[f"{case}.in.latent_unpacked"]
        B, _, T, H, W = z.shape
        tokens = pack_latents(z, 2)
        assert torch.equal(tokens, tensors[f"{case}.in.img"])
        assert torch.equal(make_image_ids(B, T, H // 2, W // 2), tensors[f"{case}.in.img_ids"])
        assert torch.equal(unpack_latents(tokens, 2, T, H, W), z)
    with pytest.raises(ShapeError, match="not divisible by patch size 2"):
        pack_latents(torch.zeros(1, 4, 1, 5, 6), 2)


def test_forward_video_matches_forward(vectors):
    _, tensors = vectors
    model = reference_model(vectors, "os2")
    inputs = case_inputs(tensors, "fwd_os2")
    z = tensors["fwd_os2.in.latent_unpacked"]
    T, H, W = z.shape[2:]
    cond = unpack_latents(inputs["cond"], 2, T, H, W)  # (B, 1 + C, T, H, W): mask first
    with torch.no_grad():
        out = model.forward_video(
            z, inputs["timesteps"], inputs["txt"], inputs["y_vec"], cond[:, 1:], cond[:, :1]
        )
    assert_max_rel(out, unpack_latents(tensors["fwd_os2.out"], 2, T, H, W))


# ---------------------------------------------------------------- layouts, patch sizes, training


def tiny(**overrides) -> MMDiT:
    torch.manual_seed(0)
    settings = dict(in_channels=8, context_in_dim=12, vec_in_dim=10) | overrides
    return build_dit("mmdit-tiny", **settings)


def tiny_inputs(model: MMDiT, T=2, H=4, W=6, B=2):
    g = torch.Generator().manual_seed(1)
    C = model.config.in_channels // model.config.patch_size**2
    return dict(
        latents=torch.randn(B, C, T, H, W, generator=g),
        timesteps=torch.rand(B, generator=g),
        txt=torch.randn(B, 5, 12, generator=g),
        y_vec=torch.randn(B, 10, generator=g),
    )


def test_fused_and_split_layouts_are_the_same_function():
    split = tiny(fused_qkv=False).eval()
    fused = MMDiT(MMDiTConfig(**{**split.config.to_dict(), "fused_qkv": True})).eval()
    state = {}
    for key, value in split.state_dict().items():
        head, _, leaf = key.rpartition(".")
        if head.endswith("attn.q_proj"):  # double blocks: q|k|v -> qkv
            base = head.removesuffix("q_proj")
            parts = [split.state_dict()[f"{base}{n}_proj.{leaf}"] for n in "qkv"]
            state[f"{base}qkv.{leaf}"] = torch.cat(parts)
        elif re.fullmatch(r"single_blocks\.\d+\.q_proj", head):  # q|k|v_mlp -> linear1
            base = head.removesuffix("q_proj")
            parts = [split.state_dict()[f"{base}{n}.{leaf}"] for n in ("q_proj", "k_proj", "v_mlp")]
            state[f"{base}linear1.{leaf}"] = torch.cat(parts)
        elif not re.search(r"(_proj|v_mlp)$", head) or head.endswith("attn.proj"):
            state[key] = value
    fused.load_state_dict(state, strict=True)
    inputs = tiny_inputs(split)
    with torch.no_grad():
        torch.testing.assert_close(fused.forward_video(**inputs), split.forward_video(**inputs))


@pytest.mark.parametrize("patch", [1, 2])
def test_patch_sizes_train(patch):
    model = tiny(in_channels=4 * patch**2, patch_size=patch)
    inputs = tiny_inputs(model)
    mask = torch.zeros_like(inputs["latents"][:, :1])
    mask[:, :, 0] = 1
    out = model.forward_video(**inputs, cond_latent=inputs["latents"] * mask, cond_mask=mask)
    assert out.shape == inputs["latents"].shape
    out.square().mean().backward()
    assert model.img_in.weight.grad.abs().sum() > 0
    assert model.cond_in.weight.grad.abs().sum() > 0  # zero-initialised but trainable


def test_gradient_checkpointing_gives_identical_gradients():
    model = tiny()
    inputs = tiny_inputs(model)
    grads = []
    for setting in (False, True, 1):
        model.zero_grad()
        model.set_gradient_checkpointing(setting)
        model.forward_video(**inputs).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (model.ckpt_double, model.ckpt_single) == (1, 1)
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(grads[2], grads[0])


def test_bf16_autocast_and_bf16_weights():
    model = tiny().eval()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        ref = model.forward_video(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model.forward_video(**inputs)
        low = model.to(torch.bfloat16).forward_video(
            **{k: v.to(torch.bfloat16) for k, v in inputs.items()}
        )
    scale = ref.abs().max()
    assert low.dtype == torch.bfloat16
    assert (auto.float() - ref).abs().max() < 0.05 * scale
    assert (low.float() - ref).abs().max() < 0.05 * scale


def test_guidance_required_for_distilled_models():
    model = tiny(guidance_embed=True, cond_embed=False)
    with pytest.raises(UsageError, match="guidance_embed=True"):
        model.forward_video(**tiny_inputs(model))


# ---------------------------------------------------------------- released layouts on meta


def spec_state_dict(in_ch: int, flux: bool) -> dict[str, tuple[int, ...]]:
    """The key/shape table of spec §11, written out literally."""
    H, M = 3072, 12288
    shapes = {
        "img_in.weight": (H, in_ch),
        "img_in.bias": (H,),
        "txt_in.weight": (H, 4096),
        "txt_in.bias": (H,),
        "final_layer.linear.weight": (in_ch, H),
        "final_layer.linear.bias": (in_ch,),
        "final_layer.adaLN_modulation.1.weight": (2 * H, H),
        "final_layer.adaLN_modulation.1.bias": (2 * H,),
    }
    for emb, width in [("time_in", 256), ("vector_in", 768)] + [("guidance_in", 256)] * flux:
        shapes |= {
            f"{emb}.in_layer.weight": (H, width),
            f"{emb}.in_layer.bias": (H,),
            f"{emb}.out_layer.weight": (H, H),
            f"{emb}.out_layer.bias": (H,),
        }
    if not flux:
        p2 = 4 if in_ch == 64 else 1
        shapes |= {"cond_in.weight": (H, in_ch + p2), "cond_in.bias": (H,)}
    for i in range(19):
        for s in ("img", "txt"):
            b = f"double_blocks.{i}.{s}"
            shapes |= {
                f"{b}_mod.lin.weight": (6 * H, H),
                f"{b}_mod.lin.bias": (6 * H,),
                f"{b}_attn.norm.query_norm.scale": (128,),
                f"{b}_attn.norm.key_norm.scale": (128,),
                f"{b}_attn.proj.weight": (H, H),
                f"{b}_attn.proj.bias": (H,),
                f"{b}_mlp.0.weight": (M, H),
                f"{b}_mlp.0.bias": (M,),
                f"{b}_mlp.2.weight": (H, M),
                f"{b}_mlp.2.bias": (H,),
            }
            if flux:
                shapes |= {f"{b}_attn.qkv.weight": (3 * H, H), f"{b}_attn.qkv.bias": (3 * H,)}
            else:
                for n in "qkv":
                    shapes |= {f"{b}_attn.{n}_proj.weight": (H, H), f"{b}_attn.{n}_proj.bias": (H,)}
    for i in range(38):
        b = f"single_blocks.{i}"
        shapes |= {
            f"{b}.linear2.weight": (H, H + M),
            f"{b}.linear2.bias": (H,),
            f"{b}.norm.query_norm.scale": (128,),
            f"{b}.norm.key_norm.scale": (128,),
            f"{b}.modulation.lin.weight": (3 * H, H),
            f"{b}.modulation.lin.bias": (3 * H,),
        }
        if flux:
            shapes |= {f"{b}.linear1.weight": (3 * H + M, H), f"{b}.linear1.bias": (3 * H + M,)}
        else:
            shapes |= {
                f"{b}.q_proj.weight": (H, H),
                f"{b}.q_proj.bias": (H,),
                f"{b}.k_proj.weight": (H, H),
                f"{b}.k_proj.bias": (H,),
                f"{b}.v_mlp.weight": (H + M, H),
                f"{b}.v_mlp.bias": (H + M,),
            }
    return shapes


@pytest.mark.parametrize(
    "preset, in_ch, flux, num_tensors, num_params",
    [
        ("opensora-v2-11b", 64, False, 1082, 11_891_390_528),
        ("opensora-v2-hcae", 128, False, 1082, 11_891_971_200),
        ("flux-dev", 64, True, 780, 11_901_408_320),
    ],
)
def test_released_presets_match_spec_state_dict(preset, in_ch, flux, num_tensors, num_params):
    with torch.device("meta"):
        model = MMDiT(DIT_PRESETS[preset])
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == spec_state_dict(in_ch, flux)
    assert len(got) == num_tensors
    assert sum(p.numel() for p in model.parameters()) == num_params


def test_small_preset_sizes():
    sizes = {
        name: sum(p.numel() for p in build_dit(name, device="meta").parameters())
        for name in ("mmdit-tiny", "mmdit-s", "mmdit-b", "mmdit-demo")
    }
    assert 1e5 < sizes["mmdit-tiny"] < 1e6
    assert 25e6 < sizes["mmdit-s"] < 35e6
    assert 110e6 < sizes["mmdit-b"] < 150e6
    assert sizes["mmdit-demo"] < sizes["mmdit-s"]


def test_flops_formula():
    cfg = DIT_PRESETS["opensora-v2-11b"]
    # gpu-anchors.md: P = 6.46e9 block weights per token, L = 57, d = 3072.
    P = (dit_flops(cfg, 1, 0) - 4 * 57 * 3072) / 2
    assert P == 57 * 12 * 3072**2
    T = 18432 + 512
    assert dit_flops(cfg, 18432, 512) == 2 * P * T + 4 * 57 * 3072 * T**2


# ---------------------------------------------------------------- config, build, save, load


def test_config_validation_and_errors():
    with pytest.raises(UsageError, match=r"axes_dim \[8, 8, 8\] sums to 24, expected head_dim 32"):
        build_dit("mmdit-tiny", axes_dim=(8, 8, 8))
    with pytest.raises(UsageError, match="not divisible by num_heads 3"):
        build_dit("mmdit-tiny", num_heads=3)
    with pytest.raises(UsageError, match="unknown DiT preset 'nope'; available: opensora-v2-11b"):
        build_dit("nope")
    with pytest.raises(UsageError, match=r"unknown MMDiTConfig field\(s\) \['hidden'\]"):
        build_dit("mmdit-tiny", hidden=3)


def test_save_load_round_trip(tmp_path):
    model = tiny()
    folder = save_dit(model, tmp_path / "dit")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    save_dit(model, folder)  # overwriting an existing folder stays atomic
    loaded = load_dit(folder)
    assert loaded.config == model.config
    inputs = tiny_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_video(**inputs), model.forward_video(**inputs))
    from_file = load_dit(folder / "model.safetensors", model.config)
    assert torch.equal(from_file.img_in.weight, model.img_in.weight)
    assert load_dit(folder, dtype=torch.bfloat16).img_in.weight.dtype == torch.bfloat16


def test_load_reference_folder_and_strict_errors(vectors, tmp_path):
    meta, tensors = vectors
    ref_cfg = {"from_pretrained": None, "cache_dir": None, **meta["models"]["os2"]["config"]}
    (tmp_path / "config.json").write_text(json.dumps(ref_cfg))
    weights = {k[4:]: v for k, v in tensors.items() if k.startswith("os2.")}
    save_file(weights, str(tmp_path / "Open_Sora_v2.safetensors"))
    model = load_dit(tmp_path)
    with torch.no_grad():
        out = model(**case_inputs(tensors, "fwd_os2"))
    assert_max_rel(out, tensors["fwd_os2.out"])

    with pytest.raises(
        CheckpointError, match=r"2 unexpected: \['cond_in.bias', 'cond_in.weight'\]"
    ):
        load_dit(tmp_path, cond_embed=False)
    bad = {k: v for k, v in weights.items() if not k.startswith("cond_in")}
    save_file(bad, str(tmp_path / "Open_Sora_v2.safetensors"))
    with pytest.raises(CheckpointError, match=r"2 missing: \['cond_in.bias', 'cond_in.weight'\]"):
        load_dit(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"3 shape: .*'img_in.weight \(48, 16\) != \(48, 32\)'"
    ):
        load_dit(tmp_path, cond_embed=False, in_channels=32)
    with pytest.raises(UsageError, match="pass a preset"):
        load_dit(tmp_path / "Open_Sora_v2.safetensors")
