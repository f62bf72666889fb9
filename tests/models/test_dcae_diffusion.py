"""DC-AE-Diffusion: UViT / USiT / DiT and their samplers reproduce MIT's code (public A vectors);
every released checkpoint's layout loads strictly."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest
import torch
from reference_vectors import run
from safetensors.torch import load_file, save_file
from tolerances import assert_rel_l2

from vidcli.errors import CheckpointError, UsageError
from vidcli.models.dcae import AE_PRESETS
from vidcli.models.dcae_diffusion import (
    RELEASED,
    DiT,
    DiTConfig,
    ReleasedModel,
    UViT,
    UViTConfig,
    build_released,
    class_id,
    class_name,
    class_names,
    load_released,
)
from vidcli.models.dcae_diffusion.networks import sincos_pos_embed_2d, sinusoid
from vidcli.sampling.class_conditional import (
    RespacedDDPM,
    VPSchedule,
    ddpm,
    dpm_orders,
    dpm_solver,
    generate_images,
    sit_ode,
)

DOPRI5_RTOL = 1e-3  # the initial-step heuristic amplifies round-off ~1000x (spec §8)


@functools.cache
def _vectors(vectors_dir: Path, family: str) -> tuple[dict, dict[str, torch.Tensor]]:
    stem = f"dcae_diffusion_{family}_a"
    meta = json.loads((vectors_dir / f"{stem}.json").read_text())
    return meta, load_file(str(vectors_dir / f"{stem}.safetensors"))


@functools.cache
def _outputs(vectors_dir: Path, family: str) -> dict[str, torch.Tensor]:
    meta, tensors = _vectors(vectors_dir, family)
    torch.set_num_threads(1)
    return run(f"dcae-diffusion-{family}", tensors, meta)


@pytest.mark.parametrize(
    ("family", "key"),
    [
        ("uvit", "out.forward"),
        ("uvit", "out.forward_cfg"),
        ("uvit", "out.dpm.sample"),
        ("uvit", "out.sit_heun2.sample"),
        ("uvit", "out.sit_dopri5.sample"),
        ("dit", "out.forward"),
        ("dit", "out.forward_cfg"),
        ("dit", "out.ddpm.sample"),
        ("dit", "out.ddpm250.sample"),
    ],
)
def test_runner_reproduces_vectors(vectors_dir: Path, family: str, key: str):
    got = _outputs(vectors_dir, family)[key]
    want = _vectors(vectors_dir, family)[1][key]
    assert_rel_l2(got, want, DOPRI5_RTOL if "dopri5" in key else 1e-4)


def _tiny(vectors_dir: Path, family: str) -> tuple[UViT | DiT, dict, dict[str, torch.Tensor]]:
    """The vector file's network with its weights, built from the JSON config."""
    meta, tensors = _vectors(vectors_dir, family)
    cfg = meta["config"]
    fields = ("in_channels", "input_size", "patch_size", "hidden_size", "depth", "num_heads")
    kwargs = {f: cfg[f] for f in fields}
    net = UViT(UViTConfig(**kwargs)) if family == "uvit" else DiT(DiTConfig(**kwargs))
    net.load_state_dict(
        {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")},
        strict=True,
    )
    return net.eval(), meta, tensors


class _Recorder(torch.nn.Module):
    """Wraps a network and records the time input of every call."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.config, self.times = net, net.config, []

    def forward(self, x, t, y):
        self.times.append(t.detach().clone())
        return self.net(x, t, y)


def test_vp_schedule_tables(vectors_dir: Path):
    _, tensors = _vectors(vectors_dir, "uvit")
    sched = VPSchedule.stable_diffusion()
    assert_rel_l2(sched.t, tensors["sched.vp_t_discrete"], 1e-7)
    assert_rel_l2(sched.log_alpha, tensors["sched.vp_log_alpha"], 1e-6)
    lam = sched.lambda_(tensors["sched.probe_t"])
    assert_rel_l2(lam, tensors["sched.probe_lambda"], 1e-6)
    assert_rel_l2(sched.inverse_lambda(lam + 0.3), tensors["sched.probe_inverse_lambda"], 1e-6)


def test_dpm_plan_and_network_times(vectors_dir: Path):
    net, meta, tensors = _tiny(vectors_dir, "uvit")
    spec = meta["samplers"]["dpm"]
    assert dpm_orders(spec["steps"]) == spec["orders"]
    assert dpm_orders(30) == [3] * 9 + [2, 1] and dpm_orders(31)[-1] == 1
    recorder = _Recorder(net)
    with torch.no_grad():
        dpm_solver(
            recorder, tensors["in.gen_noise"], tensors["in.gen_y"], spec["cfg_scale"], spec["steps"]
        )
    # our calls batch cond and uncond; upstream's alternate cond, uncond
    got = torch.stack([t[: len(t) // 2] for t in recorder.times])
    want = tensors["out.dpm.nfe_t"][0::2]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("method", ["heun2", "dopri5"])
def test_ode_evaluation_times(vectors_dir: Path, method: str):
    net, meta, tensors = _tiny(vectors_dir, "uvit")
    spec = meta["samplers"][f"sit_{method}"]
    recorder = _Recorder(net)
    with torch.no_grad():
        sit_ode(
            recorder,
            tensors["in.gen_noise"],
            tensors["in.gen_y"],
            spec["cfg_scale"],
            spec["num_steps"],
            method=method,
        )
    got = torch.stack([t[0] for t in recorder.times])
    want = torch.tensor(spec["nfe_t"])
    assert len(got) == spec["nfe"] == len(want)
    if method == "heun2":
        torch.testing.assert_close(got, want, rtol=1e-7, atol=0)
    else:
        # f(0) and the heuristic's probe agree exactly; the first step divides a difference of
        # two nearby network outputs by ~7e-4, so later steps drift by up to ~1% (spec §8)
        torch.testing.assert_close(got[:2], want[:2], rtol=1e-6, atol=0)
        torch.testing.assert_close(got, want, rtol=2e-2, atol=0)


def test_dopri5_batch_shares_steps(vectors_dir: Path):
    """A sample depends on its batch-mates (one step size for the whole state), as upstream."""
    net, meta, tensors = _tiny(vectors_dir, "uvit")
    spec = meta["samplers"]["sit_dopri5"]
    noise, labels = tensors["in.gen_noise"], tensors["in.gen_y"]
    with torch.no_grad():
        both = sit_ode(net, noise, labels, spec["cfg_scale"], spec["num_steps"])
        alone = sit_ode(net, noise[:1], labels[:1], spec["cfg_scale"], spec["num_steps"])
    assert not torch.allclose(both[:1], alone, rtol=1e-6, atol=0)
    assert_rel_l2(both[:1], alone, 1e-1)


@pytest.mark.parametrize("run_name", ["short", "250"])
def test_respaced_ddpm_tables(vectors_dir: Path, run_name: str):
    meta, tensors = _vectors(vectors_dir, "dit")
    steps = meta["samplers"]["ddpm" if run_name == "short" else "ddpm250"]["steps"]
    tables = RespacedDDPM.linear(steps)
    want_map = tensors[f"sched.{run_name}.timestep_map"]
    assert tables.timesteps.tolist() == want_map.long().tolist()
    assert_rel_l2(tables.betas, tensors[f"sched.{run_name}.betas"], 1e-12)
    if run_name == "250":
        want = tensors["sched.250.posterior_log_variance_clipped"]
        assert_rel_l2(tables.posterior_log_variance_clipped, want, 1e-12)


def test_ddpm_trajectory_and_timesteps(vectors_dir: Path):
    """The short run feeds the original timesteps (999, 666, 333, 0) and ends at the vector's
    last state (cond half)."""
    net, meta, tensors = _tiny(vectors_dir, "dit")
    spec = meta["samplers"]["ddpm"]
    recorder = _Recorder(net)
    noise, labels = tensors["in.gen_noise"], tensors["in.gen_y"]
    step_noise = tensors["in.ddpm.step_noise"]
    batch = len(labels)
    with torch.no_grad():
        sample = ddpm(
            recorder, noise, labels, spec["cfg_scale"], spec["steps"], step_noise=step_noise
        )
    assert [t.tolist() for t in recorder.times] == tensors["out.ddpm.nfe_t"].long().tolist()
    assert_rel_l2(sample, tensors["out.ddpm.x_after_step"][-1, :batch])


def test_dit_time_and_condition_embeddings(vectors_dir: Path):
    net, _, tensors = _tiny(vectors_dir, "dit")
    with torch.no_grad():
        t_emb = net.t_embedder(tensors["in.t"])
        c = t_emb + net.y_embedder(tensors["in.y"])
    assert_rel_l2(t_emb, tensors["out.t_emb"])
    assert_rel_l2(c, tensors["out.c"])


def test_uvit_time_token_and_dit_position_table(vectors_dir: Path):
    meta, tensors = _vectors(vectors_dir, "uvit")
    token = sinusoid(tensors["in.t"], meta["config"]["hidden_size"])
    assert_rel_l2(token, tensors["out.time_token"], 1e-6)
    meta, tensors = _vectors(vectors_dir, "dit")
    cfg = meta["config"]
    table = sincos_pos_embed_2d(cfg["hidden_size"], cfg["input_size"] // cfg["patch_size"])
    torch.testing.assert_close(table[None], tensors["model.pos_embed"], rtol=0, atol=1e-7)


@pytest.mark.parametrize("family", ["uvit", "dit"])
def test_token_stream_after_every_block(vectors_dir: Path, family: str):
    net, _, tensors = _tiny(vectors_dir, family)
    if family == "uvit":
        blocks = {f"in.{i}": b for i, b in enumerate(net.in_blocks)}
        blocks |= {"mid": net.mid_block} | {f"out.{i}": b for i, b in enumerate(net.out_blocks)}
    else:
        blocks = {str(i): b for i, b in enumerate(net.blocks)}
    seen: dict[str, torch.Tensor] = {}
    for name, block in blocks.items():
        block.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, out))
    with torch.no_grad():
        net(tensors["in.x"], tensors["in.t"], tensors["in.y"])
    assert len(seen) == len(blocks) == len([k for k in tensors if k.startswith("out.block.")])
    for name, got in seen.items():
        assert_rel_l2(got, tensors[f"out.block.{name}"])


def test_guidance_scale_one_is_the_conditional_model(vectors_dir: Path):
    net, _, tensors = _tiny(vectors_dir, "dit")
    noise, labels = tensors["in.gen_noise"], tensors["in.gen_y"]
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        got = ddpm(net, noise, labels, 1.0, steps=3, generator=gen)
        gen = torch.Generator().manual_seed(3)
        guided = ddpm(net, noise, labels, 1.3, steps=3, generator=gen)
    assert got.shape == noise.shape
    assert not torch.allclose(got, guided)


# ---- released checkpoints: layout from the spec, strict loading ----


def _uvit_keys(c: int, p: int, tokens: int, d: int, depth: int) -> dict[str, tuple[int, ...]]:
    """UViT key -> shape as the spec's §3 table lists them."""
    keys = {
        "patch_embed.proj.weight": (d, c, p, p),
        "patch_embed.proj.bias": (d,),
        "label_emb.embedding_table.weight": (1001, d),
        "pos_embed": (1, 2 + tokens, d),
        "norm.weight": (d,),
        "norm.bias": (d,),
        "decoder_pred.weight": (p * p * c, d),
        "decoder_pred.bias": (p * p * c,),
    }
    blocks = [f"in_blocks.{i}" for i in range(depth // 2)] + ["mid_block"]
    blocks += [f"out_blocks.{i}" for i in range(depth // 2)]
    for b in blocks:
        keys |= {
            f"{b}.norm1.weight": (d,),
            f"{b}.norm1.bias": (d,),
            f"{b}.attn.qkv.weight": (3 * d, d),
            f"{b}.attn.proj.weight": (d, d),
            f"{b}.attn.proj.bias": (d,),
            f"{b}.norm2.weight": (d,),
            f"{b}.norm2.bias": (d,),
            f"{b}.mlp.fc1.weight": (4 * d, d),
            f"{b}.mlp.fc1.bias": (4 * d,),
            f"{b}.mlp.fc2.weight": (d, 4 * d),
            f"{b}.mlp.fc2.bias": (d,),
        }
        if b.startswith("out_blocks"):
            keys |= {f"{b}.skip_linear.weight": (d, 2 * d), f"{b}.skip_linear.bias": (d,)}
    return keys


def _dit_keys(c: int, p: int, tokens: int, d: int, depth: int) -> dict[str, tuple[int, ...]]:
    """DiT key -> shape as the spec's §5 table lists them."""
    keys = {
        "x_embedder.proj.weight": (d, c, p, p),
        "x_embedder.proj.bias": (d,),
        "pos_embed": (1, tokens, d),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (1001, d),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
        "final_layer.linear.weight": (p * p * 2 * c, d),
        "final_layer.linear.bias": (p * p * 2 * c,),
    }
    for i in range(depth):
        b = f"blocks.{i}"
        keys |= {
            f"{b}.attn.qkv.weight": (3 * d, d),
            f"{b}.attn.qkv.bias": (3 * d,),
            f"{b}.attn.proj.weight": (d, d),
            f"{b}.attn.proj.bias": (d,),
            f"{b}.mlp.fc1.weight": (4 * d, d),
            f"{b}.mlp.fc1.bias": (4 * d,),
            f"{b}.mlp.fc2.weight": (d, 4 * d),
            f"{b}.mlp.fc2.bias": (d,),
            f"{b}.adaLN_modulation.1.weight": (6 * d, d),
            f"{b}.adaLN_modulation.1.bias": (6 * d,),
        }
    return keys


# name -> (network keys, trainable network params in millions, AE tensors, AE params), spec §1/§3/§5
# and dc-ae-image.md §1 (efficientvit tensor counts include BatchNorm buffers).
_F32_AE, _F64_AE = (338, 323_356_460), (386, 676_896_140)
_NETWORKS = {
    "uvit-s": (163, 44.79),
    "uvit-h": (355, 500.87),
    "usit-h": (355, 500.87),
    "uvit-2b": (355, 1580.40),
    "usit-2b": (355, 1580.40),
    "dit-xl": (292, 674.89),
}


def test_the_table_has_every_release():
    assert len(RELEASED) == 11
    for name in RELEASED:
        assert name.startswith(("dc-ae-f32c32-in-1.0-", "dc-ae-f64c128-in-1.0-"))
        assert "-in-512px" in name


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_layout_matches_the_spec(name: str):
    model = build_released(name, device="meta")
    spec = RELEASED[name]
    net = spec.network
    f64 = name.startswith("dc-ae-f64c128")
    assert (net.in_channels, net.input_size) == ((128, 8) if f64 else (32, 16))
    assert spec.latent_scale == (0.2889 if f64 else 0.3189)
    kind = next(k for k in _NETWORKS if f"-{k}-" in name)
    assert (
        spec.sampler
        == {"uvit": "dpm-solver", "usit": "sit-dopri5", "dit": "ddpm"}[kind.split("-")[0]]
    )
    tensors, millions = _NETWORKS[kind]
    c, p, d = net.in_channels, net.patch_size, net.hidden_size
    keys_of = _dit_keys if kind == "dit-xl" else _uvit_keys
    want = keys_of(c, p, (net.input_size // p) ** 2, d, net.depth)
    got = {k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}
    assert got == want and len(got) == tensors
    trainable = sum(v.numel() for v in model.diffusion_model.parameters() if v.requires_grad)
    assert round(trainable / 1e6, 2) == millions
    ae_tensors, ae_params = _F64_AE if f64 else _F32_AE
    assert len(model.autoencoder.state_dict()) == ae_tensors
    assert sum(v.numel() for v in model.autoencoder.parameters()) == ae_params
    # the combined file's layout: exactly these two prefixes
    prefixes = {k.split(".", 1)[0] for k in model.state_dict()}
    assert prefixes == {"autoencoder", "diffusion_model"}


def test_vector_key_layout_is_the_network_state_dict(vectors_dir: Path):
    for family in ("uvit", "dit"):
        net, _, tensors = _tiny(vectors_dir, family)
        file_keys = {k.removeprefix("model.") for k in tensors if k.startswith("model.")}
        assert file_keys == set(net.state_dict())


@pytest.fixture
def tiny_release(monkeypatch) -> str:
    """A released-style entry small enough to write: tiny image DC-AE + 2-block UViT."""
    name = "tiny-uvit"
    spec = ReleasedModel(
        autoencoder="dc-ae-tiny-image",
        latent_scale=0.5,
        network=UViTConfig(in_channels=8, input_size=2, hidden_size=16, depth=2, num_heads=2),
        sampler="dpm-solver",
        cfg_scale=1.5,
        steps=3,
    )
    monkeypatch.setitem(RELEASED, name, spec)
    video = AE_PRESETS["dc-ae-tiny"]
    image = dataclasses.replace(
        video,
        is_video=False,
        temporal_downsample=(False,) * len(video.temporal_downsample),
        temporal_upsample=(False,) * len(video.temporal_upsample),
    )
    monkeypatch.setitem(AE_PRESETS, "dc-ae-tiny-image", image)
    return name


def test_combined_file_loads_strictly(tiny_release: str, tmp_path: Path):
    torch.manual_seed(0)
    source = build_released(tiny_release)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_name": tiny_release}))
    loaded = load_released(tmp_path)
    assert not any(v.is_meta for v in loaded.state_dict().values())
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        z = torch.randn(1, 8, 2, 2)
        assert torch.equal(loaded.decode(z), source.eval().decode(z))

    del state["diffusion_model.norm.bias"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing"):
        load_released(tmp_path / "missing.safetensors", tiny_release)
    with pytest.raises(UsageError, match="needs the released model's name"):
        load_released(tmp_path / "model.safetensors")
    with pytest.raises(UsageError, match="unknown DC-AE-Diffusion model"):
        load_released(tmp_path / "model.safetensors", "dc-ae-f32c32-in-1.0-uvit-xl-in-512px")


def test_generate_decodes_deterministic_images(tiny_release: str):
    torch.manual_seed(0)
    model = build_released(tiny_release).eval()
    labels = torch.tensor([3, 999])
    images = generate_images(model, labels, seed=5)
    assert images.shape == (2, 3, 64, 64)
    assert images.abs().max() <= 1
    assert torch.equal(images, generate_images(model, labels, seed=5))
    assert not torch.equal(images, generate_images(model, labels, seed=6))
    with torch.no_grad():  # encode maps images back into the networks' scaled latent space
        latents = model.encode(images)
        assert torch.equal(latents, model.autoencoder.encode(images) * 0.5)
    assert latents.shape == (2, 8, 2, 2)
    with pytest.raises(UsageError, match="dpm-solver sampler, not ddpm"):
        generate_images(model, labels, sampler="ddpm")


def test_download_aliases_cover_every_release():
    from vidcli.hub import ALIASES, resolve

    repos = {
        alias.repo_id.removeprefix("mit-han-lab/")
        for alias in ALIASES.values()
        if alias.feeds.startswith("class-conditional:")
    }
    assert repos == set(RELEASED)
    repo, include = resolve("dc-ae-f64-uvit-h-2000k")
    assert repo == "mit-han-lab/dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k"
    assert set(include) == {"config.json", "model.safetensors"}


def test_imagenet_class_names():
    names = class_names()
    assert len(names) == 1000
    # upstream's demo labels
    assert [class_name(i) for i in (279, 333, 979, 388)] == [
        "Arctic fox",
        "hamster",
        "valley",
        "giant panda",
    ]
    assert class_id("Arctic fox") == class_id("arctic_fox") == class_id(" 279 ") == 279
    assert class_id(0) == 0 and class_id("toilet tissue") == 999
    with pytest.raises(UsageError, match="ambiguous: ids 134, 517"):
        class_id("crane")
    with pytest.raises(UsageError, match="closest: golden retriever"):
        class_id("golden retreiver")
    with pytest.raises(UsageError, match="out of range"):
        class_id(1000)


@pytest.mark.parametrize(
    "recipe", sorted((Path(__file__).parents[2] / "recipes").glob("dc-ae-*-in-512px.toml"))
)
def test_recipes_agree_with_the_released_table(recipe: Path):
    from vidcli.hub import resolve
    from vidcli.recipe import load_recipe

    r = load_recipe(recipe)
    spec = RELEASED[r.dit.preset]
    model = build_released(r.dit.preset, device="meta")
    size = spec.network.input_size * model.autoencoder.spatial_compression
    assert (r.sample.height, r.sample.width, r.sample.frames) == (size, size, 1) == (512, 512, 1)
    assert r.sample.steps == spec.steps and r.sample.guidance >= 1
    repo, _ = resolve(Path(r.dit.path).name)  # the folder is named after its download alias
    assert repo == f"mit-han-lab/{r.dit.preset}"
