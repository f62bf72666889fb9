"""`vidcli generate` on a class-conditional recipe (DC-AE-Diffusion): labels, PNGs, grid, plan,
and the options it refuses, on tiny released-style models (tiny image DC-AE + UViT or DiT)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tolerances import assert_rel_l2
from typer.testing import CliRunner

from vidcli.class_generate import image_grid, to_uint8
from vidcli.cli import app
from vidcli.errors import UsageError
from vidcli.hub import ALIASES, ModelAlias
from vidcli.models.dcae import AE_PRESETS
from vidcli.models.dcae.compiled import compile_autoencoder
from vidcli.models.dcae_diffusion import (
    RELEASED,
    DiTConfig,
    ReleasedModel,
    UViTConfig,
    build_released,
    load_released,
)
from vidcli.sampling.class_conditional import generate_images
from vidcli.sampling.compatibility import (
    CLASS_CONDITIONAL,
    OPTIONS,
    Setting,
    check_class_conditional,
)

runner = CliRunner()

NETWORKS = {
    "tiny-uvit": (
        UViTConfig(in_channels=8, input_size=2, hidden_size=16, depth=2, num_heads=2),
        "dpm-solver",
    ),
    "tiny-dit": (
        DiTConfig(in_channels=8, input_size=2, hidden_size=16, depth=1, num_heads=2),
        "ddpm",
    ),
}
# Tiny UViT (C 8, S 2, p 1, D 16, depth 2 = 1 in + 1 mid + 1 out block, 2 heads, MLP 64), by hand:
# patch conv 8·16+16 = 144, labels 1001·16 = 16016, positions (2+4)·16 = 96, a block
# 2·32 (norms) + 16·48 (qkv, no bias) + 272 (proj) + 1088 (fc1) + 1040 (fc2) = 3232, the out block
# + skip_linear 32·16+16 = 528, final norm 32, decoder_pred 16·8+8 = 136.
TINY_UVIT_PARAMS = 144 + 16016 + 96 + 3 * 3232 + 528 + 32 + 136


@pytest.fixture(params=sorted(NETWORKS))
def release(request, monkeypatch, tmp_path: Path) -> tuple[str, Path]:
    """(model name, recipe) of a tiny released-style model saved as the combined file."""
    name = request.param
    network, sampler = NETWORKS[name]
    monkeypatch.setitem(
        RELEASED, name, ReleasedModel("dc-ae-tiny-image", 0.5, network, sampler, 1.5, 3)
    )
    video = AE_PRESETS["dc-ae-tiny"]
    image = dataclasses.replace(
        video,
        is_video=False,
        temporal_downsample=(False,) * len(video.temporal_downsample),
        temporal_upsample=(False,) * len(video.temporal_upsample),
    )
    monkeypatch.setitem(AE_PRESETS, "dc-ae-tiny-image", image)
    torch.manual_seed(0)
    model = build_released(name)
    weights = tmp_path / "weights"
    weights.mkdir()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, weights / "model.safetensors"
    )
    (weights / "config.json").write_text(json.dumps({"model_name": name}))
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f'[dit]\npreset = "{name}"\npath = "{weights}"\n\n'
        "[sample]\nsteps = 3\nguidance = 1.5\nframes = 1\nheight = 64\nwidth = 64\nseed = 4\n"
    )
    return name, recipe


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_to_uint8_is_upstreams_truncating_conversion():
    # clamp(127.5·y + 128, 0, 255) truncated: -1 -> 0.5 -> 0, 0 -> 128, 0.5 -> 191.75 -> 191,
    # 1 -> 255.5 -> 255, -0.2 -> 102.5 -> 102
    y = torch.tensor([-1.0, 0.0, 0.5, 1.0, -0.2]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(y)[0, 0, :, 0].tolist() == [0, 128, 191, 255, 102]
    assert to_uint8(y).shape == (1, 1, 5, 3)


def test_image_grid_is_row_major_with_black_padding():
    images = [np.full((2, 3, 3), v, dtype=np.uint8) for v in (10, 20, 30)]
    grid = image_grid(images)  # 3 images: 2 columns, 2 rows
    assert grid.shape == (4, 6, 3)
    assert grid[0, 0, 0] == 10 and grid[0, 3, 0] == 20 and grid[2, 0, 0] == 30
    assert grid[2:, 3:].max() == 0


def test_generate_writes_one_png_per_class_and_a_grid(release, tmp_path: Path):
    name, recipe = release
    out = tmp_path / "out"
    args = ["generate", "golden retriever", "--class", "279", "--class", "Arctic_fox"]
    args += ["--recipe", str(recipe), "--out", str(out), "--json", "--batch-size", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [i["label"] for i in payload["images"]] == [207, 279, 279]
    assert [i["class_name"] for i in payload["images"]] == [
        "golden retriever",
        "Arctic fox",
        "Arctic fox",
    ]
    assert [i["seed"] for i in payload["images"]] == [4, 4, 6]  # seed + first index of the batch
    assert payload["model"] == name and payload["cfg_scale"] == 1.5 and payload["steps"] == 3
    paths = [Path(i["path"]) for i in payload["images"]]
    assert [p.name for p in paths] == [
        "000-golden-retriever.png",
        "001-arctic-fox.png",
        "002-arctic-fox.png",
    ]
    # what the library samples for each batch, written as upstream converts it
    model = load_released(recipe.parent / "weights")
    first = to_uint8(
        generate_images(model, torch.tensor([207, 279]), seed=4, cfg_scale=1.5, steps=3)
    )
    last = to_uint8(generate_images(model, torch.tensor([279]), seed=6, cfg_scale=1.5, steps=3))
    expected = [first[0], first[1], last[0]]
    for path, want in zip(paths, expected, strict=True):
        assert np.array_equal(_png(path), want)
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        assert sidecar["sampler"] == RELEASED[name].sampler and f'"{name}"' in sidecar["recipe"]
    grid = _png(Path(payload["grid"]))
    assert grid.shape == (128, 128, 3)
    assert np.array_equal(grid[64:, :64], expected[2]) and grid[64:, 64:].max() == 0

    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert "000-golden-retriever.png already exists; pass --overwrite" in again.stderr
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_plan_resolves_classes_without_weights(release, tmp_path: Path):
    name, recipe = release
    text = recipe.read_text().replace(str(recipe.parent / "weights"), str(tmp_path / "absent"))
    recipe.write_text(text)
    args = ["generate", "tench", "--class", "999", "--recipe", str(recipe), "--plan"]
    result = runner.invoke(app, [*args, "--json", "--batch-size", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["labels"] == [0, 999] and plan["classes"] == ["tench", "toilet tissue"]
    assert plan["cfg_rows"] == 4 and plan["latent_shape"] == [8, 2, 2]
    if name == "tiny-uvit":
        assert plan["tokens"] == 4 + 2  # patches + label and time tokens
        assert plan["network_params"] == TINY_UVIT_PARAMS
        assert plan["weights_gb"]["network"] == pytest.approx(TINY_UVIT_PARAMS * 4 / 1e9)
    else:
        assert plan["tokens"] == 4
    assert plan["network_activation_gb"] > 0 and plan["decode_activation_gb"] > 0
    assert plan["fits"] is True
    lines = runner.invoke(app, args).stdout
    assert "classes: 0 tench, 999 toilet tissue" in lines


def test_plan_that_does_not_fit_says_so(release):
    _, recipe = release
    args = ["generate", "tench", "--recipe", str(recipe), "--plan", "--json"]
    result = runner.invoke(app, [*args, "--device", "cuda", "--gpu-memory", "1"])
    plan = json.loads(result.stdout)
    # weights and activations of the tiny model are far below a GB; 1 GB is reserved on CUDA
    assert plan["peak_gb"] > 1 and plan["fits"] is False
    assert "lower --batch-size" in plan["notes"][0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["golden retreiver"],
            "unknown ImageNet class 'golden retreiver'; closest: golden retriever",
        ),
        (["tench", "--cache", "uniform:2"], "--cache uniform: class-conditional models sample"),
        (["tench", "--solver", "rf2"], "--solver rf2: class-conditional models sample"),
        (["tench", "--lpl"], "--lpl: class-conditional models sample"),
        (
            ["tench", "--image", "x.png", "--fps", "3"],
            "--image, --fps: not used by class-conditional",
        ),
        (["tench", "--format", "gif"], "--format: not used by class-conditional"),
        (["tench", "--height", "128"], "height 128, width 64: tiny-"),
        (["tench", "--frames", "2"], "makes one 64x64 image per sample (frames 1)"),
        ([], "a class-conditional model needs ImageNet classes"),
    ],
)
def test_refusals_are_one_line_exit_2(release, tmp_path: Path, extra, message):
    _, recipe = release
    result = runner.invoke(
        app, ["generate", *extra, "--recipe", str(recipe), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("Error:") and len(result.stderr.splitlines()) <= 2
    assert not list(tmp_path.glob("*.png"))


COMPILED_RTOL = 1e-5
"""Relative L2 of the compiled image DC-AE decode against eager, fp32: freezing fuses bias,
activation and residual adds into the convolutions and rounds in another order (the video DC-AE
measured ~1e-6, tests/test_generate_compile_ae.py); a wrong constant or a stale weight is O(1)."""


@pytest.mark.parametrize("release", ["tiny-uvit"], indirect=True)
def test_compile_ae_decodes_the_eager_images_and_reports_its_compile_apart(
    release, tmp_path, fresh_dynamo
):
    _, recipe = release
    model = load_released(recipe.parent / "weights")
    torch.manual_seed(1)
    z = torch.randn(2, 8, 2, 2)  # the batch the runs below decode: 2 latents of 8 x 2 x 2
    with torch.no_grad():
        eager = model.decode(z)
        assert compile_autoencoder(model.autoencoder, coders=("decoder",)) is model.autoencoder
        assert_rel_l2(model.decode(z), eager, COMPILED_RTOL)
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile-ae"])):
        args = ["generate", "tench", "--class", "279", "--recipe", str(recipe), "--json"]
        args += ["--batch-size", "2", "--out", str(tmp_path / name), *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        runs[name] = payload["timings_s"], [_png(Path(i["path"])) for i in payload["images"]]
    (eager_timings, eager_images), (timings, images) = runs["eager"], runs["compiled"]
    assert "compile_ae" not in eager_timings and timings["compile_ae"] > 0
    # The compile is taken out of the sampling time, once.
    rest = timings["total"] - timings["load"] - timings["write"] - timings["compile_ae"]
    assert timings["generate"] == pytest.approx(rest, abs=1e-9)
    # uint8 images of pixels within ~1e-6 of each other: at most one level apart (truncation).
    diff = np.abs(np.stack(images).astype(int) - np.stack(eager_images).astype(int))
    assert diff.shape == (2, 64, 64, 3) and diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_class_option_needs_a_class_conditional_recipe():
    result = runner.invoke(app, ["generate", "a red circle", "--class", "3", "--plan"])
    assert result.exit_code == 2
    assert "--class: mmdit-" in result.stderr and "is not class-conditional" in result.stderr


def test_missing_weights_name_the_download(release, monkeypatch):
    name, recipe = release
    recipe.write_text(recipe.read_text().replace(str(recipe.parent / "weights"), ""))
    alias = ModelAlias("tiny-alias", f"x/{name}", (), "", f"class-conditional:{name}")
    monkeypatch.setitem(ALIASES, "tiny-alias", alias)
    result = runner.invoke(app, ["generate", "tench", "--recipe", str(recipe)])
    assert result.exit_code == 2
    assert f"[dit] path is empty: {name} needs its weights" in result.stderr
    assert "vidcli download tiny-alias --local-dir weights/tiny-alias" in result.stderr


@pytest.mark.parametrize("key", sorted(CLASS_CONDITIONAL))
def test_the_class_conditional_table_refuses_every_other_value(key: str):
    allowed = CLASS_CONDITIONAL[key]
    for value in OPTIONS[key]:
        setting = Setting(**{key: value})
        if value in allowed:
            check_class_conditional(setting, "ddpm")
        else:
            with pytest.raises(UsageError, match="own ddpm sampler"):
                check_class_conditional(setting, "ddpm")
