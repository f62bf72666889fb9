"""One `Placement` decides where every model and input of a sampling run lives.

No GPU needed: decisions for `cuda:1` are asserted directly, and runs use `meta` as the device
(models and shapes, no data) under `device_check.strict_devices`, which fails any op that mixes
devices as CUDA would.
"""

from __future__ import annotations

import json

import pytest
import torch
from device_check import MixedDevicesError, module_devices, strict_devices

from vidcli.generate import load_generate_recipe
from vidcli.models.text import TextEmbeddings
from vidcli.placement import HOST, ROLES, Placement
from vidcli.sampling import phases
from vidcli.sampling.pipeline import load_pipeline

META = torch.device("meta")
CUDA1 = torch.device("cuda", 1)
TINY_FLUX = {"hidden_size": 32, "num_heads": 2, "depth": 1, "depth_single_blocks": 1}
TINY_FLUX["axes_dim"] = [4, 6, 6]


def t2i2v_recipe():
    """The demo recipe with a tiny, freshly initialised Flux image stage (t2i2v)."""
    table = "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in TINY_FLUX.items()) + "}"
    sets = ["t2i.enabled=true", "t2i.ae_preset=flux-ae-tiny", f"t2i.overrides={table}"]
    sets += ["t2i.resolution=32", "t2i.steps=1", "sample.steps=2", "sample.frames=4"]
    return load_generate_recipe(None, None, sets)


def models(pipe) -> dict[str, torch.nn.Module]:
    return {
        "text": pipe.text,
        "t2i_dit": pipe.t2i.dit,
        "t2i_ae": pipe.t2i.ae,
        "dit": pipe.dit,
        "ae": pipe.ae,
    }


def test_strict_devices_fails_what_cuda_would_refuse():
    cpu, meta = torch.ones(2, 3), torch.ones(3, 2, device="meta")
    with strict_devices():
        with pytest.raises(MixedDevicesError, match=r"cpu.*meta"):
            cpu @ meta  # plain PyTorch returns a CPU tensor here
        with pytest.raises(MixedDevicesError, match="dtypes"):
            torch.nn.functional.linear(cpu.bfloat16(), cpu)
        assert (meta * torch.tensor(2.0)).device == META  # a CPU scalar goes anywhere
        assert cpu.to("meta").device == META  # a move is not a mix
        with torch.autocast("cpu", torch.bfloat16):
            torch.nn.functional.linear(cpu.bfloat16(), cpu)  # autocast casts: fine


def test_placement_decisions_keep_the_device_index():
    resident = Placement(CUDA1, torch.bfloat16)
    assert resident.name == "cuda:1"
    assert {role: resident.home(role) for role in ROLES} == dict.fromkeys(ROLES, CUDA1)
    assert resident.weights_dtype("dit") == resident.weights_dtype("text") == torch.bfloat16
    assert resident.weights_dtype("ae") == resident.weights_dtype("t2i_ae") == torch.float32
    parked = Placement(CUDA1, torch.bfloat16, park=True)  # `generate --offload`
    assert [parked.home(role) for role in ROLES] == [HOST, CUDA1, CUDA1, CUDA1, HOST]
    model = Placement(CUDA1, torch.bfloat16, "model")
    assert {model.home(role) for role in ROLES} == {HOST} and not model.streamed("dit")
    blocks = Placement(CUDA1, torch.bfloat16, "blocks")
    assert [blocks.streamed(role) for role in ROLES] == [False, True, False, True, False]
    with pytest.raises(ValueError, match="no placement role"), blocks.on_device(vae=None):
        pass


def test_resolve_keeps_cuda_n(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    placement = Placement.resolve("cuda:1")
    assert (placement.device, placement.dtype) == (CUDA1, torch.bfloat16)


@pytest.fixture(scope="module")
def recipe():
    return t2i2v_recipe()


@pytest.mark.parametrize(
    "placement",
    [
        Placement(META),
        Placement(META, park=True),
        Placement(META, offload="model"),
        Placement(META, offload="blocks"),
    ],
    ids=["none", "park", "model", "blocks"],
)
def test_every_model_is_loaded_where_the_placement_says(recipe, placement):
    """With offload `none` the t2i AE, like every model, is on the device from the start."""
    pipe = load_pipeline(recipe, placement)
    for role, module in models(pipe).items():
        if placement.streamed(role):
            blocks = [*module.double_blocks, *module.single_blocks]
            assert set().union(*map(module_devices, blocks)) == {HOST}, role
            assert module_devices(module.final_layer) == {META}, role
        else:
            assert module_devices(module) == {placement.home(role)}, role
        floating = {p.dtype for p in module.parameters() if p.is_floating_point()}
        assert floating == {placement.weights_dtype(role)}, role


def meta_embeddings(dit, prompts: int) -> TextEmbeddings:
    """Text embeddings on `meta`: the text encoder's own control flow needs data."""
    tokens = torch.zeros(prompts, 8, dit.config.context_in_dim, device=META)
    mask = torch.ones(prompts, 8, dtype=torch.bool, device=META)
    return TextEmbeddings(tokens, mask, torch.zeros(prompts, dit.config.vec_in_dim, device=META))


@pytest.fixture
def meta_goes_home_empty(monkeypatch):
    """`meta` holds no data to copy back to the host: a model sent home gets empty host memory."""
    to = torch.nn.Module.to

    def move(module, *args, **kwargs):
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device == HOST and META in module_devices(module):
            return module.to_empty(device=HOST)
        return to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", move)


@pytest.mark.parametrize("offload", ["none", "model", "blocks"])
def test_t2i_and_sample_phases_compute_on_the_device(
    recipe, offload, monkeypatch, meta_goes_home_empty
):
    """Each phase has its models on the device while it runs (a model left on the host would
    mix devices and fail), and sends them home afterwards."""
    placement = Placement(META, offload=offload)
    pipe = load_pipeline(recipe, placement)
    monkeypatch.setattr(phases, "encode_text", lambda p, *b: [meta_embeddings(p.t2i.dit, 1)])
    decoded_on = []

    def decode(latents):  # the t2i AE's decode, up to the copy to the host (no data on meta)
        decoded_on.append((module_devices(pipe.t2i.ae), latents.device))
        n, _, _, h, w = latents.shape
        sc = pipe.t2i.ae.spatial_compression
        return torch.zeros(n, 3, 1, h * sc, w * sc)

    monkeypatch.setattr(pipe.t2i.ae, "decode", decode)
    size = (4, recipe.sample.height, recipe.sample.width)
    with strict_devices():
        refs = phases.first_frames(pipe, recipe.sample, ["a kite"], [0], size)
        assert decoded_on == [({META}, META)]
        assert [r.device for r in refs] == [META]
        emb = meta_embeddings(pipe.dit, 1)
        latent_shape = pipe.ae.latent_shape(*size)
        latents = phases.sample_latents(pipe, recipe.sample, emb, emb, [0], latent_shape, refs)
    assert latents.device == META and latents.shape[1:] == latent_shape
    for role, module in models(pipe).items():
        if not placement.streamed(role):
            assert module_devices(module) == {placement.home(role)}, role
